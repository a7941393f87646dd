"""Masked diffusion language model exported by megadlm (loaded with trust_remote_code=True).

The weights and blocks are Qwen3's; the difference is bidirectional
attention: every position sees every non-padding position. `mask_token_id` is the [MASK] id the
model was trained to fill in; logits at position i predict the clean token at position i (no
shift). This file is copied next to the weights by `megadlm export` and needs only transformers.
"""
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM


class MegadlmMDMConfig(Qwen3Config):
    model_type = "megadlm_mdm"

    def __init__(self, mask_token_id=None, **kwargs):
        self.mask_token_id = mask_token_id
        super().__init__(**kwargs)


def _bidirectional_mask(input_ids, attention_mask, dtype):
    """Additive [b, 1, s, s] mask: 0 where a key is a real token, the dtype's minimum at padding."""
    b, s = input_ids.shape
    keep = torch.ones(b, s, dtype=torch.bool, device=input_ids.device) if attention_mask is None \
        else attention_mask.to(torch.bool)
    mask = torch.zeros(b, 1, s, s, dtype=dtype, device=input_ids.device)
    return mask.masked_fill(~keep[:, None, None, :], torch.finfo(dtype).min)


class MegadlmMDMForMaskedDiffusion(Qwen3ForCausalLM):
    config_class = MegadlmMDMConfig

    def __init__(self, config):
        super().__init__(config)
        for layer in self.model.layers:
            layer.self_attn.is_causal = False

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        kwargs.pop("past_key_values", None)
        kwargs["use_cache"] = False
        dtype = self.model.embed_tokens.weight.dtype
        mask = _bidirectional_mask(input_ids, attention_mask, dtype)
        return super().forward(input_ids=input_ids, attention_mask={"full_attention": mask}, **kwargs)
