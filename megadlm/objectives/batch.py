"""The batch an objective hands to the model, and the one loss formula both objectives share.

loss = sum_i weight_i * CE_i / denominator

- AR: weights are 1, denominator = b * s  -> mean next-token cross-entropy.
- MDM: weights are 1/p on masked tokens (or L/k in count form) and 0 elsewhere, denominator = b * L
  -> the ELBO per token, divided by ALL tokens, not by the masked count.
Because every micro-batch has the same b * s, DeepSpeed's mean over gradient-accumulation steps and
data-parallel ranks reproduces the global-batch normalisation exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ObjectiveBatch:
    inputs: torch.Tensor  # [b, s] token ids fed to the model
    labels: torch.Tensor  # [b, s] clean targets
    weights: torch.Tensor  # [b, s] float weights of each token's CE in the loss
    masked: torch.Tensor  # [b, s] bool: tokens that were corrupted (MDM masks / AR token dropout)
    denominator: float

    def to(self, device) -> "ObjectiveBatch":
        return ObjectiveBatch(self.inputs.to(device), self.labels.to(device), self.weights.to(device),
                              self.masked.to(device), self.denominator)


@dataclass
class LossParts:
    loss: torch.Tensor  # scalar with grad
    weighted_sum: torch.Tensor  # sum of weight * CE (no grad)
    masked_ce_sum: torch.Tensor  # sum of CE over corrupted tokens (no grad)
    masked_count: torch.Tensor
    tokens: int


def weighted_loss(token_ce: torch.Tensor, batch: ObjectiveBatch) -> LossParts:
    token_ce = token_ce.float()
    weighted = (token_ce * batch.weights).sum()
    with torch.no_grad():
        masked = batch.masked.to(token_ce.dtype)
        masked_ce = (token_ce.detach() * masked).sum()
    return LossParts(loss=weighted / batch.denominator, weighted_sum=weighted.detach(),
                     masked_ce_sum=masked_ce, masked_count=masked.sum(), tokens=batch.inputs.numel())
