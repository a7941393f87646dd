"""Per-token cross-entropy over vocabulary shards split across the tensor-parallel group.

megatron-core's `vocab_parallel_cross_entropy` always computes in float32. That is what bf16 and
fp32 training want, but it would silently round a float64 verification run (`parallel.precision:
fp64`, used to prove layout parity to 1e-6) back to fp32. This version computes in
`promote(logits dtype, float32)`: fp32 for bf16/fp32 models, fp64 for fp64 ones. Like megatron's,
it is one autograd node that keeps only the softmax for backward (not the logits and their exp).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def tp_group():
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_group(), ps.get_tensor_model_parallel_rank(), \
        ps.get_tensor_model_parallel_world_size()


def targets_in_shard(targets: torch.Tensor, rank: int, shard: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of each target within this rank's vocabulary shard (0 where outside), outside)."""
    local = targets - rank * shard
    outside = (local < 0) | (local >= shard)
    return local.masked_fill(outside, 0), outside


class _ShardedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        group, rank, world = tp_group()
        work_dtype = torch.promote_types(logits.dtype, torch.float32)
        shifted = logits.to(work_dtype, copy=True)  # becomes exp, then the softmax, in place
        shard = shifted.size(-1)
        row_max = shifted.max(dim=-1).values
        if world > 1:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        shifted -= row_max.unsqueeze(-1)

        local, outside = targets_in_shard(targets, rank, shard)
        target_logit = shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)

        torch.exp(shifted, out=shifted)
        sum_exp = shifted.sum(dim=-1)
        if world > 1:
            # one collective for both: [sum exp | target logit] (only the owning shard's is non-zero)
            both = torch.stack([sum_exp, target_logit])
            dist.all_reduce(both, group=group)
            sum_exp, target_logit = both[0], both[1]
        shifted /= sum_exp.unsqueeze(-1)
        ctx.save_for_backward(shifted, local, outside)
        ctx.input_dtype = logits.dtype
        return sum_exp.log() - target_logit

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        softmax, local, outside = ctx.saved_tensors
        grad = softmax  # d CE / d logit = softmax - onehot(target); softmax is not needed again
        grad.scatter_add_(-1, local.unsqueeze(-1), -(~outside).to(grad.dtype).unsqueeze(-1))
        grad *= grad_loss.unsqueeze(-1).to(grad.dtype)
        return grad.to(ctx.input_dtype), None


def sharded_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CE of each position: logits [..., vocab / tp] (this rank's vocabulary shard), targets [...]
    (global token ids) -> [...] in float32, or float64 for float64 logits."""
    return _ShardedCrossEntropy.apply(logits, targets)
