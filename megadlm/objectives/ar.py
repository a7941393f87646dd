"""Autoregressive next-token prediction, with the paper's input-masking knob (token dropout).

Token dropout replaces INPUT tokens with [MASK] at rate r (fixed, or r ~ U(0,1) per sequence with
"uniform"); the targets stay the clean next tokens at every position. The other AR regularisers
(MLP-only dropout, attention dropout, hidden dropout, weight decay) live in the model and optimizer.
"""
from __future__ import annotations

import torch

from megadlm.config.schema import ObjectiveConfig
from megadlm.objectives import randomness as rnd
from megadlm.objectives.batch import ObjectiveBatch


def token_dropout_rates(cfg: ObjectiveConfig, seed: int, sample_ids: torch.Tensor,
                        epoch: int) -> torch.Tensor:
    if cfg.token_dropout == "uniform":
        return rnd.per_sample_uniform(seed, sample_ids, epoch, rnd.RATE, 1)[:, 0]
    return torch.full((sample_ids.numel(),), float(cfg.token_dropout))


def ar_batch(tokens: torch.Tensor, sample_ids: torch.Tensor, epoch: int, seed: int,
             cfg: ObjectiveConfig, mask_id: int, seq_len: int, train: bool = True) -> ObjectiveBatch:
    """tokens: [b, seq_len + 1]; inputs are tokens[:, :-1], labels tokens[:, 1:]."""
    inputs = tokens[:, :seq_len]
    labels = tokens[:, 1:seq_len + 1]
    masked = torch.zeros_like(inputs, dtype=torch.bool)
    if train and (cfg.token_dropout == "uniform" or float(cfg.token_dropout) > 0.0):
        rate = token_dropout_rates(cfg, seed, sample_ids, epoch)
        noise = rnd.per_sample_uniform(seed, sample_ids, epoch, rnd.TOKENS, seq_len)
        masked = noise < rate[:, None]
        inputs = torch.where(masked, torch.full_like(inputs, mask_id), inputs)
    return ObjectiveBatch(inputs=inputs.contiguous(), labels=labels.contiguous(),
                          weights=torch.ones(labels.shape, dtype=torch.float32), masked=masked,
                          denominator=float(labels.numel()))
