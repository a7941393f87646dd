"""The batch an objective hands to the model, and the one loss formula both objectives share.

loss = sum_i weight_i * CE_i / denominator

- AR: weights are 1, denominator = b * s  -> mean next-token cross-entropy.
- MDM: weights are 1/p on masked tokens (or L/k in count form) and 0 elsewhere, denominator = b * L
  -> the ELBO per token, divided by ALL tokens, not by the masked count.
Because every micro-batch has the same b * s, DeepSpeed's mean over gradient-accumulation steps and
data-parallel ranks reproduces the global-batch normalisation exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch


@dataclass
class ObjectiveBatch:
    inputs: torch.Tensor  # [b, s] token ids fed to the model
    labels: torch.Tensor  # [b, s] clean targets
    weights: torch.Tensor  # [b, s] float weights of each token's CE in the loss
    masked: torch.Tensor  # [b, s] bool: tokens that were corrupted (MDM masks / AR token dropout)
    denominator: float
    # [b] bool, None = all rows real. Padding rows (validation only) have zero weight and count no tokens.
    row_valid: Optional[torch.Tensor] = None

    @property
    def scored_tokens(self) -> int:
        rows = self.inputs.size(0) if self.row_valid is None else int(self.row_valid.sum())
        return rows * self.inputs.size(1)

    def to(self, device) -> "ObjectiveBatch":
        device = torch.device(device)
        if device.type == "cuda":
            # from page-locked memory the copies run asynchronously, overlapping the kernels already
            # queued; a pageable copy would block the host until it is done
            def move(t):
                return t.pin_memory().to(device, non_blocking=True)
        else:
            def move(t):
                return t.to(device)
        return replace(self, inputs=move(self.inputs), labels=move(self.labels), weights=move(self.weights),
                       masked=move(self.masked))

    def with_padding_rows(self, real_rows: int) -> "ObjectiveBatch":
        """Mark rows from `real_rows` on as padding: no weight, no masked tokens, no token count."""
        valid = torch.arange(self.inputs.size(0)) < real_rows
        return replace(self, weights=self.weights * valid[:, None], masked=self.masked & valid[:, None],
                       row_valid=valid)


@dataclass
class LossParts:
    loss: torch.Tensor  # scalar with grad
    weighted_sum: torch.Tensor  # sum of weight * CE (no grad)
    masked_ce_sum: torch.Tensor  # sum of CE over corrupted tokens (no grad)
    masked_count: torch.Tensor
    tokens: int


def weighted_loss(token_ce: torch.Tensor, batch: ObjectiveBatch) -> LossParts:
    token_ce = token_ce.to(torch.promote_types(token_ce.dtype, torch.float32))  # fp64 runs stay fp64
    weighted = (token_ce * batch.weights).sum()
    with torch.no_grad():
        masked = batch.masked.to(token_ce.dtype)
        masked_ce = (token_ce.detach() * masked).sum()
    return LossParts(loss=weighted / batch.denominator, weighted_sum=weighted.detach(),
                     masked_ce_sum=masked_ce, masked_count=masked.sum(), tokens=batch.scored_tokens)
