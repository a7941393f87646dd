"""Layout changes on resume through DeepSpeed's universal checkpoint.

`megadlm reshard CKPT --out DIR [--pp P]` turns a checkpoint of any TP x PP x DP layout (ZeRO 1/2)
into a universal one: every parameter's full fp32 master weight and Adam moments under
DIR/zero/<parameter name>/. `megadlm train --resume-from DIR` then loads it into whatever layout
the config and the process count ask for; DeepSpeed re-slices each tensor for the new TP rank and
ZeRO partition. What DeepSpeed needs from us (shared/notes/megatron-deepspeed-cpu.md, Q3):
1. `universal_checkpoint_info` in the client state, derived from megatron's TP attributes
   (replicated / row-parallel / column-parallel), plus the tied-embedding copy of pipeline stages.
2. No `None` entries in the module state dict (megatron linears add `_extra_state: None`, which
   the converter tries to `.float()`): dropped on save, put back on load.
3. Parameter names that match the target model: the GPTModel (PP=1) and the DeepSpeed pipeline
   (PP>1) name the same tensors differently, so the converted folders are renamed for `--pp`.
The vocabulary is padded to the same size for every TP that divides lcm(128, TP), so embeddings
are merged like any column-parallel weight (no vocabulary re-padding).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil

import torch

UNIVERSAL_MARK = "universal"


def universal_info(named_parameters, pipeline: bool, gated_mlp: bool) -> dict:
    """Collective when a process group exists: the converter reads one rank's copy, so it must
    describe the parameters of every pipeline stage, not just this rank's."""
    import torch.distributed as dist
    from deepspeed.checkpoint import constants as c

    replicated, row, two_halves = [], [], []
    for name, param in named_parameters:
        pattern = re.escape(name) + "$"
        if gated_mlp and name.endswith("linear_fc1.weight"):
            # SwiGLU fc1 is [gate; up]; each TP rank holds [gate_i; up_i], so the full weight is
            # [gate_0; gate_1; ...; up_0; up_1; ...], not the plain concatenation of the shards
            two_halves.append(pattern)
        elif not getattr(param, "tensor_model_parallel", False):
            replicated.append(pattern)  # norms, QK-norms, learned position embeddings
        elif getattr(param, "partition_dim", 0) == 1:
            row.append(pattern)  # RowParallelLinear: shards concatenate along dim 1
        # everything else (column-parallel, vocab-parallel embedding) concatenates along dim 0;
        # megatron's QKV and SwiGLU fc1 layouts are per-rank blocks, so dim-0 order is right
    if dist.is_initialized() and dist.get_world_size() > 1:
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, (replicated, row, two_halves))
        replicated, row, two_halves = ([p for p in sorted({p for lists in every for p in lists[i]})]
                                       for i in range(3))
    info = {c.UNIVERSAL_CHECKPOINT_VERSION_KEY: 0.2, c.TP_REPLICATED_PARAMETER_PATTERNS: replicated,
            c.PARAMETER_WITH_ROW_PARALLELISM_PATTERNS: row, c.PARAMETER_WITH_2_SUB_PARAMS_CAT_DIM_0: two_halves}
    if pipeline:  # the tied embedding's copy on the last stage must not overwrite the first's
        info[c.PIPELINE_REPLICATED_PARAMETER_PATTERNS] = [r"tied_modules\..*"]
    return info


def drop_none_extra_state(module: torch.nn.Module) -> None:
    """Keep `_extra_state: None` out of state dicts (the converter cannot handle it) while strict
    loading still finds the keys."""
    extra = [f"{n}._extra_state" if n else "_extra_state" for n, m in module.named_modules()
             if type(m).get_extra_state is not torch.nn.Module.get_extra_state]

    def drop(mod, state, prefix, local_metadata):
        for key in [k for k, v in state.items() if k.endswith("_extra_state") and v is None]:
            del state[key]
        return state

    def restore(mod, state, prefix, local_metadata, strict, missing, unexpected, errors):
        for key in extra:
            state.setdefault(prefix + key, None)

    module._register_state_dict_hook(drop)
    module.register_load_state_dict_pre_hook(restore)


# ---------------------------------------------------------------- names: GPTModel <-> pipeline

def to_canonical(name: str, num_layers: int) -> str:
    """GPTModel name of a parameter named by either model."""
    if name.startswith("tied_modules.embed."):
        return name[len("tied_modules.embed."):]
    head, _, rest = name.partition(".")
    if not head.isdigit():
        return name  # already a GPTModel name
    index = int(head)
    if index == 0:
        return rest  # untied embedding stage
    if index <= num_layers:
        return f"decoder.layers.{index - 1}." + rest[len("layer."):]
    if index == num_layers + 1:
        return "decoder." + rest  # final_layernorm
    return rest  # untied output layer


def to_pipeline(canonical: str, num_layers: int, tied: bool) -> str:
    """The DeepSpeed PipelineModule name of a GPTModel parameter (layer specs are numbered
    embedding, layers 1..L, final norm, output)."""
    if canonical.startswith("embedding."):
        return ("tied_modules.embed." if tied else "0.") + canonical
    m = re.match(r"decoder\.layers\.(\d+)\.(.*)", canonical)
    if m:
        return f"{int(m.group(1)) + 1}.layer.{m.group(2)}"
    if canonical.startswith("decoder.final_layernorm"):
        return f"{num_layers + 1}." + canonical[len("decoder."):]
    if canonical.startswith("output_layer."):
        return f"{num_layers + 2}." + canonical
    raise ValueError(f"no pipeline name for {canonical}")


def rename_for(zero_dir: str, num_layers: int, tied: bool, target_pp: int) -> None:
    for name in os.listdir(zero_dir):
        if not os.path.isdir(os.path.join(zero_dir, name)):
            continue  # optimizer_state.pt: common to all parameters
        canonical = to_canonical(name, num_layers)
        wanted = to_pipeline(canonical, num_layers, tied) if target_pp > 1 else canonical
        if wanted != name:
            os.rename(os.path.join(zero_dir, name), os.path.join(zero_dir, wanted))


def convert(source: str, out: str, workers: int = 1) -> None:
    """Run DeepSpeed's converter (its own progress output goes to stdout)."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    args = argparse.Namespace(input_folder=source, output_folder=out, num_extract_workers=workers,
                              num_merge_workers=workers, keep_temp_folder=False, strict=True,
                              inject_missing_state=False)
    ds_to_universal(args)
    shutil.rmtree(os.path.join(out, "tmp"), ignore_errors=True)


def reshard(source: str, out: str, target_pp: int, workers: int = 1) -> dict:
    """Write the universal form of checkpoint `source` to `out` (which must not exist) for a
    target with `target_pp` pipeline stages. Returns the new manifest's facts."""
    from megadlm.errors import CheckpointError
    from megadlm.train import checkpoint as ckpt

    source = source.rstrip("/")
    manifest, problem = ckpt.verify(source)
    if problem is not None:
        raise CheckpointError(f"{source}: {problem}; reshard a complete checkpoint")
    facts = manifest["facts"]
    if facts["layout"].get(UNIVERSAL_MARK):
        raise CheckpointError(f"{source} is already universal: resume from it directly (reshard its source "
                              f"again for another --pp)")
    if facts["layout"]["zero_stage"] == 0:
        raise CheckpointError(f"{source} was saved with parallel.zero_stage=0, which DeepSpeed's universal "
                              f"converter cannot read: resume it with its own layout and save with ZeRO 1 or 2")
    if os.path.exists(out):
        raise CheckpointError(f"{out} already exists: choose a new --out (nothing was overwritten)")
    work = out.rstrip("/") + ".incomplete"
    shutil.rmtree(work, ignore_errors=True)
    convert(source, work, workers)
    model = facts["model"]
    rename_for(os.path.join(work, "zero"), model["num_layers"], model["tie_embeddings"], target_pp)
    facts = {**facts, "layout": {UNIVERSAL_MARK: True, "pp": target_pp, "source": facts["layout"]}}
    ckpt.write_manifest(work, os.path.basename(out.rstrip("/")), manifest["train_state"], facts,
                        manifest["config"], ckpt.hash_directory(work))
    os.rename(work, out)
    return facts
