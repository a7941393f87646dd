"""Validation on the held-out split, comparable across evaluations and runs.

AR: mean next-token NLL. MDM: the ELBO per token (CE/p over masked tokens, / all tokens) with masks
drawn from a FIXED seed (objective.val_mask_seed, epoch 0), so every evaluation of every checkpoint
scores the same corruptions. Both in nats/token and bits/byte (bytes per token from the manifest).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from megadlm.parallel import distributed as pdist



def validate(loop, batch_size: int) -> dict:
    cfg = loop.cfg
    batches = _equal_batches(loop, batch_size)
    sums = loop.runner.evaluate(batches)
    val_loss = sums.weighted / sums.tokens
    result = {"val_loss": val_loss, "val_tokens": int(sums.tokens)}
    if loop.val.bytes_per_token:
        result["val_bits_per_byte"] = val_loss / math.log(2) / loop.val.bytes_per_token
    if cfg.objective.type == "mdm":
        result["val_masked_ce"] = sums.masked_ce_sum / sums.masked_count if sums.masked_count else None
    return result


def _equal_batches(loop, batch_size: int) -> list:
    """This rank's validation micro-batches, all full-size and equally many on every rank.

    Data-parallel ranks can hold one sequence more or less than each other, but ZeRO-3 gathers
    parameters and the pipeline schedule communicates on every forward, so every rank must run the
    same number of same-shape forwards: short batches get padding rows, short ranks padding batches.
    """
    seed, seq = loop.cfg.objective.val_mask_seed, loop.cfg.data.seq_len
    batches = []
    for tokens, ids in loop.val.batches(batch_size):
        real = tokens.size(0)
        if real < batch_size:
            tokens = torch.cat([tokens, tokens.new_zeros(batch_size - real, tokens.size(1))])
            ids = torch.cat([ids, ids.new_zeros(batch_size - real)])
        batches.append(loop.objective_batch(tokens, ids, 0, False, seed).with_padding_rows(real))
    count = torch.tensor([float(len(batches))], device=pdist.device())
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
    empty_tokens = torch.zeros(batch_size, seq + 1, dtype=torch.int64)
    while len(batches) < int(count.item()):
        empty = loop.objective_batch(empty_tokens, torch.zeros(batch_size, dtype=torch.int64), 0, False, seed)
        batches.append(empty.with_padding_rows(0))
    return batches
