"""Masked diffusion (MDM) corruption: mask tokens with probability p = (1 - eps) t + eps, t ~ U(0,1).

Labels are the clean tokens at the SAME positions (no shift); attention is bidirectional.
"""
from __future__ import annotations

import torch

from megadlm.config.schema import ObjectiveConfig
from megadlm.objectives import randomness as rnd
from megadlm.objectives.batch import ObjectiveBatch


def sequence_times(cfg: ObjectiveConfig, seed: int, sample_ids: torch.Tensor, epoch: int,
                   batch_ids: torch.Tensor | None = None) -> torch.Tensor:
    """t per sequence. Antithetic: stratified over the optimizer step's whole global batch (all its
    micro-batches on all data-parallel ranks; at micro-batch 1 a micro-batch has nothing to stratify),
    t = (u + j/B) mod 1 where j is the sample's place among the B ids of `batch_ids` in sorted order
    and u is drawn from the smallest id. Both are functions of the data, so every layout draws the
    same t for a sample. Without `batch_ids` (validation) the micro-batch is the group."""
    if cfg.antithetic_t:
        ordered = torch.sort((sample_ids if batch_ids is None else batch_ids).flatten()).values
        size = ordered.numel()
        u = torch.rand(1, generator=rnd.generator(seed, int(ordered[0]), epoch, rnd.TIME, size))
        slots = torch.searchsorted(ordered, sample_ids).to(torch.float32)
        return (u + slots / size) % 1.0
    return rnd.per_sample_uniform(seed, sample_ids, epoch, rnd.TIME, 1)[:, 0]


def truncated_length(cfg: ObjectiveConfig, seed: int, sample_ids: torch.Tensor, epoch: int,
                     length: int, multiple: int) -> int:
    """With probability random_length_prob the whole micro-batch is cut to a random length
    (a multiple of `multiple`, which TP needs), as LLaDA/SMDM do for 1% of batches."""
    if cfg.random_length_prob <= 0.0:
        return length
    g = rnd.generator(seed, int(sample_ids[0]), epoch, rnd.LENGTH)
    if torch.rand(1, generator=g).item() >= cfg.random_length_prob:
        return length
    new = int(torch.randint(1, length + 1, (1,), generator=g).item())
    return max(multiple, (new // multiple) * multiple)


def mdm_batch(tokens: torch.Tensor, sample_ids: torch.Tensor, epoch: int, seed: int,
              cfg: ObjectiveConfig, mask_id: int, seq_len: int, length_multiple: int = 1,
              allow_truncation: bool = True, batch_ids: torch.Tensor | None = None) -> ObjectiveBatch:
    """tokens: [b, >= seq_len] clean samples; uses the first seq_len tokens of each. `batch_ids`: the
    sample ids of the whole global batch (antithetic t is stratified over it)."""
    x0 = tokens[:, :seq_len]
    b = x0.size(0)
    noise = rnd.per_sample_uniform(seed, sample_ids, epoch, rnd.TOKENS, seq_len)
    if cfg.count_form:
        # k ~ U{1..L} masked tokens per sequence (the lowest-noise positions); weight L/k makes the
        # sequence's term its mean masked CE.
        k = (rnd.per_sample_uniform(seed, sample_ids, epoch, rnd.TIME, 1)[:, 0] * seq_len).long() + 1
        ranks = noise.argsort(dim=1).argsort(dim=1)
        masked = ranks < k[:, None]
        weights = masked.float() * (seq_len / k.float())[:, None]
    else:
        t = sequence_times(cfg, seed, sample_ids, epoch, batch_ids)
        p = (1.0 - cfg.eps) * t + cfg.eps
        masked = noise < p[:, None]
        weights = masked.float() / p[:, None]
    length = truncated_length(cfg, seed, sample_ids, epoch, seq_len, length_multiple) \
        if allow_truncation else seq_len
    inputs = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return ObjectiveBatch(inputs=inputs[:, :length].contiguous(), labels=x0[:, :length].contiguous(),
                          weights=weights[:, :length].contiguous(),
                          masked=masked[:, :length].contiguous(), denominator=float(b * length))
