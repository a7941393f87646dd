"""megadlm's own forward pass on full weights, in this process: the reference exports are compared
with (and what `megadlm generate`/eval use on checkpoints)."""
from __future__ import annotations

import torch


def load_reference_model(weights: dict[str, torch.Tensor], config_dict: dict, padded_vocab: int):
    """A one-rank GPTModel (fp32, CPU) holding `weights`; needs megatron groups of size 1."""
    from megadlm.config.loader import config_from_dict
    from megadlm.model.build import build_model

    cfg = config_from_dict({**config_dict, "parallel": {**config_dict["parallel"], "tp": 1, "pp": 1,
                                                        "precision": "fp32"}})
    model = build_model(cfg, padded_vocab)
    with torch.no_grad():
        params = dict(model.named_parameters())
        missing = sorted(set(params) - set(weights))
        if missing:
            raise KeyError(f"weights lack {missing[:3]}")
        for name, param in params.items():
            param.copy_(weights[name])
    return model.eval()


@torch.no_grad()
def reference_logits(model, ids: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(ids.size(1)).unsqueeze(0).expand_as(ids)
    return model(ids, positions, None).float()  # [b, s, padded vocab]
