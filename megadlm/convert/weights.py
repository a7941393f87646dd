"""Full (unsharded) fp32 weights of a checkpoint, by GPTModel parameter name, from any layout.

The DeepSpeed universal form (`megadlm.train.universal`) already merges TP shards, ZeRO partitions
and pipeline stages into one fp32 master tensor per parameter; we read those.
"""
from __future__ import annotations

import os
import tempfile

import torch


def full_weights(checkpoint: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(name -> fp32 tensor, the checkpoint's manifest). The checkpoint may be a normal or a
    universal (resharded, pp=1) one."""
    from megadlm.train import checkpoint as ckpt
    from megadlm.train.universal import UNIVERSAL_MARK, reshard

    manifest, problem = ckpt.verify(checkpoint.rstrip("/"))
    if problem is not None:
        from megadlm.errors import CheckpointError

        raise CheckpointError(f"{checkpoint}: {problem}; export a complete checkpoint")
    layout = manifest["facts"]["layout"]
    if layout.get(UNIVERSAL_MARK) and layout["pp"] == 1:
        return _read_zero_dir(os.path.join(checkpoint, "zero")), manifest
    # next to the checkpoint: the universal copy is as large as the checkpoint itself
    with tempfile.TemporaryDirectory(prefix=".megadlm_export_",
                                     dir=os.path.dirname(os.path.abspath(checkpoint))) as tmp:
        out = os.path.join(tmp, "universal")
        reshard(checkpoint, out, target_pp=1)
        return _read_zero_dir(os.path.join(out, "zero")), manifest


def _read_zero_dir(zero_dir: str) -> dict[str, torch.Tensor]:
    weights = {}
    for name in sorted(os.listdir(zero_dir)):
        path = os.path.join(zero_dir, name, "fp32.pt")
        if os.path.isfile(path):
            weights[name] = (torch.load(path, map_location="cpu", weights_only=True)["param"]
                             .float().contiguous())
    return weights
