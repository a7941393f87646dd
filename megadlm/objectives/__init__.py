"""Training objectives: masked diffusion (MDM) and autoregressive (AR) with the paper's regularisers."""
from __future__ import annotations

import torch

from megadlm.config.schema import ObjectiveConfig
from megadlm.objectives.batch import LossParts, ObjectiveBatch, weighted_loss


def make_batch(cfg: ObjectiveConfig, tokens: torch.Tensor, sample_ids: torch.Tensor, epoch: int,
               seed: int, mask_id: int, seq_len: int, train: bool = True,
               length_multiple: int = 1, batch_ids: torch.Tensor | None = None) -> ObjectiveBatch:
    """Turn clean samples [b, seq_len + 1] into model inputs, labels and loss weights.

    For validation (`train=False`) AR applies no token dropout and MDM uses the caller's fixed seed
    and no random-length truncation, so evaluations are comparable over time.
    """
    if cfg.type == "mdm":
        from megadlm.objectives.mdm import mdm_batch

        return mdm_batch(tokens, sample_ids, epoch, seed, cfg, mask_id, seq_len,
                         length_multiple=length_multiple, allow_truncation=train, batch_ids=batch_ids)
    from megadlm.objectives.ar import ar_batch

    return ar_batch(tokens, sample_ids, epoch, seed, cfg, mask_id, seq_len, train=train)


__all__ = ["LossParts", "ObjectiveBatch", "make_batch", "weighted_loss"]
