"""Process groups and devices: the one place that knows about CPU/gloo versus GPU/NCCL.

Everything else asks this module for the device; nothing in the training path hard-codes one.
megatron-core owns the TP/PP/DP groups; DeepSpeed reads them through `MegatronMPU`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def use_cuda() -> bool:
    # MEGADLM_FORCE_CPU lets a GPU machine run the CPU/gloo path (tests, parity checks).
    return torch.cuda.is_available() and os.environ.get("MEGADLM_FORCE_CPU", "0") != "1"


def device() -> torch.device:
    if use_cuda():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def backend() -> str:
    return "nccl" if use_cuda() else "gloo"


@dataclass(frozen=True)
class Layout:
    """Where this process sits in the TP x PP x DP grid (data-parallel is the slowest axis)."""

    world_size: int
    rank: int
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _ensure_single_process_env() -> bool:
    """A plain `megadlm train` (no torchrun) is a world of one; give torch, DeepSpeed and streaming
    the rank variables they read. True when this process is such a world."""
    if "WORLD_SIZE" in os.environ:
        return False
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    return True


def init_distributed(tp: int, pp: int) -> Layout:
    """Start torch.distributed through DeepSpeed and megatron-core's model-parallel groups."""
    import deepspeed
    from megatron.core import parallel_state as ps

    alone = _ensure_single_process_env()
    if use_cuda():
        torch.cuda.set_device(device())
    if not dist.is_initialized():
        if alone:
            # A world of one needs no rendezvous: an in-memory store. A TCP store would need a free
            # port, and picking one before binding it races every other run starting on the host
            # (EADDRINUSE, seen with `megadlm sweep --local --parallel 2`). DeepSpeed adopts the group.
            dist.init_process_group(backend(), store=dist.HashStore(), rank=0, world_size=1)
        else:
            from megadlm.console import library_prints_to_log

            with library_prints_to_log("deepspeed"):  # its CPU shared-memory op's "built successfully"
                deepspeed.init_distributed(dist_backend=backend(), verbose=False)
    if not ps.model_parallel_is_initialized():
        # "tp-cp-ep-pp-dp": data-parallel is the slowest axis, matching the streaming replication
        # layout and DeepSpeed's pipeline topology (see docs/architecture.md). No extra gloo copies
        # of the groups: nothing here uses them (on CPU the groups are gloo already), and on NCCL
        # runs gloo groups bind to one interface and hang multi-NIC nodes.
        ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                     order="tp-cp-ep-pp-dp", create_gloo_process_groups=False)
    return current_layout()


def current_layout() -> Layout:
    from megatron.core import parallel_state as ps

    return Layout(world_size=dist.get_world_size(), rank=dist.get_rank(),
                  tp=ps.get_tensor_model_parallel_world_size(),
                  pp=ps.get_pipeline_model_parallel_world_size(),
                  dp=ps.get_data_parallel_world_size(),
                  tp_rank=ps.get_tensor_model_parallel_rank(),
                  pp_rank=ps.get_pipeline_model_parallel_rank(),
                  dp_rank=ps.get_data_parallel_rank())


def shutdown() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


class MegatronMPU:
    """The `mpu` object DeepSpeed expects, backed by megatron-core's parallel_state.

    parallel_state lacks get_model_parallel_rank/world_size and get_data_parallel_group_ranks, which
    ZeRO and DeepSpeed's checkpoint naming call; "model parallel" for DeepSpeed means all non-DP axes.
    The forwarded names are listed explicitly: DeepSpeed probes optional ones with hasattr, and
    exposing e.g. sequence-parallel helpers would change how ZeRO picks its groups.
    """

    _FORWARDED = (
        "get_data_parallel_group", "get_data_parallel_rank", "get_data_parallel_world_size",
        "get_tensor_model_parallel_group", "get_tensor_model_parallel_rank",
        "get_tensor_model_parallel_world_size", "get_tensor_model_parallel_src_rank",
        "get_pipeline_model_parallel_group", "get_pipeline_model_parallel_rank",
        "get_pipeline_model_parallel_world_size", "get_model_parallel_group",
    )

    def __init__(self):
        from megatron.core import parallel_state as ps

        self._ps = ps
        for name in self._FORWARDED:
            setattr(self, name, getattr(ps, name))

    def get_model_parallel_world_size(self) -> int:
        return dist.get_world_size(group=self._ps.get_model_parallel_group())

    def get_model_parallel_rank(self) -> int:
        return dist.get_rank(group=self._ps.get_model_parallel_group())

    def get_data_parallel_group_ranks(self) -> list[int]:
        return dist.get_process_group_ranks(self._ps.get_data_parallel_group())


def all_reduce_sum(values, group=None) -> list[float]:
    """Sum a few numbers (Python floats or a float64 tensor on the device) over `group`, in float64
    so exact comparisons stay meaningful; one host sync for the result."""
    t = (values.to(device=device(), dtype=torch.float64, copy=True) if torch.is_tensor(values)
         else torch.tensor(values, dtype=torch.float64, device=device()))
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(t, group=group)
    return t.tolist()


def data_parallel_group():
    from megatron.core import parallel_state as ps

    return ps.get_data_parallel_group()
