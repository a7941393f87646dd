"""Validation on the held-out split, comparable across evaluations and runs.

AR: mean next-token NLL. MDM: the ELBO per token (CE/p over masked tokens, / all tokens) with masks
drawn from a FIXED seed (objective.val_mask_seed, epoch 0), so every evaluation of every checkpoint
scores the same corruptions. Both in nats/token and bits/byte (bytes per token from the manifest).
"""
from __future__ import annotations

import math



def validate(loop, batch_size: int) -> dict:
    cfg = loop.cfg
    seed = cfg.objective.val_mask_seed
    batches = [loop.objective_batch(tokens, ids, 0, False, seed) for tokens, ids in loop.val.batches(batch_size)]
    sums = loop.runner.evaluate(batches)
    val_loss = sums.weighted / sums.tokens
    result = {"val_loss": val_loss, "val_tokens": int(sums.tokens)}
    if loop.val.bytes_per_token:
        result["val_bits_per_byte"] = val_loss / math.log(2) / loop.val.bytes_per_token
    if cfg.objective.type == "mdm":
        result["val_masked_ce"] = sums.masked_ce_sum / sums.masked_count if sums.masked_count else None
    return result
