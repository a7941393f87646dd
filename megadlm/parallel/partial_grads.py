"""Gradients that each tensor-parallel rank only holds a part of, summed over the TP group.

QK-norm weights are replicated on every TP rank but applied only to that rank's attention heads, so
each rank's gradient is the sum over its own heads: the true gradient is the sum over the TP group.
megatron-core does this in `finalize_model_grads`, which DeepSpeed never calls; without it the
copies drift apart and TP runs diverge from one process (measured: 2.5e-5 in loss after 3 steps,
in float64 too). A hook on each such parameter sums its gradient as backward produces it, before
DeepSpeed accumulates or reduces it over data-parallel ranks, for every engine and ZeRO stage.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist

PARTIAL_OVER_TP = ("q_layernorm", "k_layernorm")


def _sum_over(group):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, group=group)
        return grad

    return hook


def sum_partial_grads_over_tp(named_parameters: Iterable[tuple[str, torch.nn.Parameter]]) -> list[str]:
    """Register the TP-sum hook on every partial-gradient parameter; returns their names."""
    from megatron.core import parallel_state as ps

    if ps.get_tensor_model_parallel_world_size() == 1:
        return []
    group = ps.get_tensor_model_parallel_group()
    hooked = []
    for name, param in named_parameters:
        if param.requires_grad and any(part in name for part in PARTIAL_OVER_TP):
            param.register_hook(_sum_over(group))
            hooked.append(name)
    return hooked
