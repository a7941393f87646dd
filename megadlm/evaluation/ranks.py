"""Evaluation over several processes through lm-eval's own distributed contract.

lm-eval shards requests itself: each rank builds every `world_size`-th document of a task
(`Task.build_all_requests(rank=, world_size=)`), pads the ranks to equal request counts, and gathers
the per-document metrics on rank 0, which alone returns results. What it asks of the LM is its
`rank` / `world_size` and three collectives (`all_gather`, `gather_object`, `barrier`); this module
gives them, over torchrun's process group (gloo on CPU, NCCL on GPU). There is no sharder of our own.

Scores are seeded by request content (harness.py), so a request gets the same score on any rank of
any world size.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from megadlm.parallel.distributed import backend, env_world_size


def join_ranks() -> tuple[int, int]:
    """(rank, world size): joins torchrun's process group when launched with more than one process."""
    if env_world_size() <= 1:
        return 0, 1
    if not dist.is_initialized():
        if backend() == "nccl":  # NCCL's object collectives use the current device
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend(), init_method="env://")
    return dist.get_rank(), dist.get_world_size()


def leave_ranks() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: str) -> str:
    """A bare `cuda` means this rank's own GPU under torchrun."""
    if device == "cuda" and env_world_size() > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


class RankCollectives:
    """lm-eval's collectives for an LM subclass (before lm-eval's LM in the bases)."""

    _world_size: int

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._world_size == 1:
            return tensor
        parts = [torch.zeros_like(tensor) for _ in range(self._world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj, dst: int = 0):
        if self._world_size == 1:
            return [obj]
        gathered = [None] * self._world_size if dist.get_rank() == dst else None
        dist.gather_object(obj, gathered, dst=dst)
        return gathered

    def barrier(self) -> None:
        if self._world_size > 1:
            dist.barrier()
