"""Validation on the held-out split, comparable across evaluations and runs.

AR: mean next-token NLL. MDM: the ELBO per token (CE/p over masked tokens, / all tokens) with masks
drawn from a FIXED seed (objective.val_mask_seed, epoch 0), so every evaluation of every checkpoint
scores the same corruptions. Both in nats/token and bits/byte (bytes per token from the manifest).
"""
from __future__ import annotations

import math

import torch

from megadlm.parallel import distributed as pdist


@torch.no_grad()
def validate(loop, batch_size: int) -> dict:
    engine, cfg = loop.engine, loop.cfg
    engine.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # weighted CE, tokens, masked CE, masked count
    try:
        for tokens, ids in loop.val.batches(batch_size):
            parts = loop.forward(tokens, ids, 0, False, cfg.objective.val_mask_seed)
            sums += torch.tensor([parts.weighted_sum.item(), float(parts.tokens),
                                  parts.masked_ce_sum.item(), parts.masked_count.item()], dtype=torch.float64)
    finally:
        engine.train()
    weighted, tokens, masked_ce, masked = pdist.all_reduce_sum(sums.tolist(), loop.dp_group)
    val_loss = weighted / tokens
    result = {"val_loss": val_loss, "val_tokens": int(tokens)}
    if loop.val.bytes_per_token:
        result["val_bits_per_byte"] = val_loss / math.log(2) / loop.val.bytes_per_token
    if cfg.objective.type == "mdm":
        result["val_masked_ce"] = masked_ce / masked if masked else None
    return result
