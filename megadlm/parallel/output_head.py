"""The output projection fused with the vocabulary-parallel cross-entropy, over scored rows only,
in chunks of rows.

At a 151k vocabulary the [tokens x vocab/tp] logits are a step's largest activation, and the loss
wants them in fp32 (plus their softmax for backward). Here no full logits tensor exists: forward
computes one chunk of rows' logits at a time, reduces it to its log-sum-exp and target logit, and
drops it; backward recomputes the chunk's logits, turns them into d CE / d logits = softmax - onehot
and multiplies that into the hidden-state and weight gradients. The extra memory is one chunk.

Only rows that carry a loss weight are projected at all: an MDM step scores its masked positions
(on average half of them) and nothing else, so the rest of the rows would be work thrown away.
Targets of unscored rows are IGNORE; their CE is 0.

Tensor parallel: `hidden` is replicated over the TP group, the weight is this rank's vocabulary
shard. The row max, sum of exponentials and target logit are all-reduced over the group per chunk;
the hidden-state gradient is summed over the group by megatron's copy-to-TP-region around this
function, as its ColumnParallelLinear does. Every rank of the group selects the same rows (the
masks are a function of the data, see objectives/randomness.py).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from megadlm.parallel.cross_entropy import sharded_cross_entropy, targets_in_shard, tp_group

IGNORE = -1  # target of a position that carries no loss weight
# logits per chunk: 16 Mi elements, 64 MiB in fp32 (110 rows at a 151k vocabulary: TP > 1 then
# all-reduces two [rows] vectors per chunk, microseconds each against the chunk's matmul)
CHUNK_ELEMENTS = 1 << 24


class _FusedHeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk_rows: int) -> torch.Tensor:
        group, rank, world = tp_group()
        work = torch.promote_types(hidden.dtype, torch.float32)
        local, outside = targets_in_shard(targets, rank, weight.size(0))
        n = hidden.size(0)
        ce = torch.empty(n, dtype=work, device=hidden.device)
        lse = torch.empty(n, dtype=work, device=hidden.device)
        for start in range(0, n, chunk_rows):
            rows = slice(start, min(n, start + chunk_rows))
            logits = (hidden[rows] @ weight.t()).to(work)
            row_max = logits.max(dim=-1).values
            if world > 1:
                dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
            logits -= row_max.unsqueeze(-1)
            target_logit = logits.gather(-1, local[rows].unsqueeze(-1)).squeeze(-1)
            target_logit = target_logit.masked_fill(outside[rows], 0.0)
            sum_exp = logits.exp_().sum(dim=-1)
            if world > 1:  # one collective for both; only the owning shard's target logit is non-zero
                both = torch.stack([sum_exp, target_logit])
                dist.all_reduce(both, group=group)
                sum_exp, target_logit = both[0], both[1]
            log_sum_exp = sum_exp.log()
            ce[rows] = log_sum_exp - target_logit
            lse[rows] = log_sum_exp + row_max
            del logits  # before the next chunk's matmul: one chunk alive at a time
        ctx.save_for_backward(hidden, weight, lse, local, outside)
        ctx.chunk_rows = chunk_rows
        return ce

    @staticmethod
    def backward(ctx, grad_ce: torch.Tensor):
        hidden, weight, lse, local, outside = ctx.saved_tensors
        work = lse.dtype
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=work, device=weight.device)
        for start in range(0, hidden.size(0), ctx.chunk_rows):
            rows = slice(start, min(hidden.size(0), start + ctx.chunk_rows))
            grad_logits = (hidden[rows] @ weight.t()).to(work).sub_(lse[rows].unsqueeze(-1)).exp_()  # softmax
            grad_logits.scatter_add_(-1, local[rows].unsqueeze(-1), -(~outside[rows]).to(work).unsqueeze(-1))
            grad_logits *= grad_ce[rows].to(work).unsqueeze(-1)
            grad_logits = grad_logits.to(hidden.dtype)
            grad_hidden[rows] = grad_logits @ weight
            if grad_logits.dtype == work:  # accumulate in place: no weight-sized temporary per chunk
                grad_weight.addmm_(grad_logits.t(), hidden[rows])
            else:
                grad_weight += (grad_logits.t() @ hidden[rows]).to(work)
            del grad_logits
        return grad_hidden, grad_weight.to(weight.dtype), None, None


def logits_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The full head's CE [b, s]: logits [s, b, v/tp] of every position, targets [b, s] global ids
    or IGNORE (CE 0)."""
    ce = sharded_cross_entropy(logits, targets.clamp(min=0).t().contiguous()).t().contiguous()
    return ce * (targets != IGNORE)


def chunk_rows_for(vocab_shard: int, chunk_elements: int = CHUNK_ELEMENTS) -> int:
    return max(1, chunk_elements // vocab_shard)


def scored_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Per-position CE [b, s] of the output projection: hidden [s, b, h] (the final norm's output),
    weight [vocab / tp, h] (this rank's shard), targets [b, s] global token ids or IGNORE (CE 0).
    fp32 for bf16/fp32 models, fp64 for fp64 ones."""
    from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region

    rows = hidden.transpose(0, 1)  # [b, s, h], as the targets
    scored = targets != IGNORE
    every = bool(scored.all())
    picked = rows.reshape(-1, rows.size(-1)) if every else rows[scored]
    picked = copy_to_tensor_model_parallel_region(picked)
    ce = _FusedHeadCrossEntropy.apply(picked, weight, targets[scored] if not every else targets.reshape(-1),
                                      chunk_rows_for(weight.size(0), chunk_elements))
    if every:
        return ce.view(targets.shape)
    out = torch.zeros(targets.shape, dtype=ce.dtype, device=ce.device)
    return out.masked_scatter(scored, ce)
