"""Initial weights as a function of (seed, global parameter name) only.

Every layout (one process, TP shards, pipeline stages built in any order) and both model forms
(the GPTModel and the pipeline stages) therefore start from the same full model: each matrix is
drawn whole from a generator seeded by its global name, then this rank's TP slice is kept.
1-D parameters get megatron's constants: biases 0, norm weights 1. (megatron's own init_method is
a no-op, so nothing is drawn twice.)
"""
from __future__ import annotations

import math
import zlib
from typing import Iterable

import torch

from megadlm.objectives.randomness import generator


def init_std(name: str, base_std: float, num_layers: int) -> float:
    # megatron's scaled init for the projections that write into the residual stream
    if name.endswith(("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")):
        return base_std / math.sqrt(2.0 * num_layers)
    return base_std


def tp_shard(full: torch.Tensor, param: torch.nn.Parameter, tp: int, tp_rank: int) -> torch.Tensor:
    """This rank's slice of a full tensor, megatron's way: with `partition_stride` s (2 for the
    SwiGLU fc1, whose shards hold [gate_r; up_r]) the dimension is cut into s*tp pieces and rank r
    takes pieces r, r+tp, ..."""
    dim, stride = param.partition_dim, getattr(param, "partition_stride", 1)
    pieces = full.split(param.shape[dim] // stride, dim=dim)
    return torch.cat(pieces[tp_rank::tp], dim=dim)


@torch.no_grad()
def init_by_name(named_params: Iterable[tuple[str, torch.nn.Parameter]], seed: int, base_std: float,
                 num_layers: int, init_from: str | None = None) -> None:
    """Fill every parameter from (seed, name), or from the full tensors of an imported weights file
    (`model.init_from`, written by `megadlm import`), sliced for this rank the same way."""
    from megatron.core import parallel_state as ps

    tp, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    if init_from is not None:
        _copy_from_file(named_params, init_from, tp, tp_rank)
        return
    for name, param in named_params:
        if param.dim() < 2:
            param.fill_(0.0 if name.endswith(".bias") else 1.0)
            continue
        shape = list(param.shape)
        sharded = tp > 1 and getattr(param, "tensor_model_parallel", False)
        if sharded:
            shape[param.partition_dim] *= tp
        g = generator(seed, zlib.crc32(name.encode()))
        full = torch.randn(shape, generator=g, dtype=torch.float32) * init_std(name, base_std, num_layers)
        if sharded:
            full = tp_shard(full, param, tp, tp_rank)
        param.copy_(full.to(dtype=param.dtype, device=param.device))


def _copy_from_file(named_params, path: str, tp: int, tp_rank: int) -> None:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:  # reads only the tensors asked for
        available = set(f.keys())
        for name, param in named_params:
            if name not in available:
                from megadlm.errors import ConfigError

                raise ConfigError(f"model.init_from={path} has no weight {name}: it was imported for "
                                  f"another model shape")
            full = f.get_tensor(name)
            if tp > 1 and getattr(param, "tensor_model_parallel", False):
                full = tp_shard(full, param, tp, tp_rank)
            param.copy_(full.to(dtype=param.dtype, device=param.device))
