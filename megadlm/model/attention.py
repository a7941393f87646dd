"""Core attention through torch's scaled_dot_product_attention.

megatron-core's stock DotProductAttention allocates CUDA buffers and builds its causal mask on
"cuda"; this module runs the same math on CPU and GPU (flash / memory-efficient kernels on GPU).
Causal for AR, no mask (bidirectional) for MDM.
"""
from __future__ import annotations

import contextlib

import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule

from megadlm.parallel.dropout_streams import attention_dropout_stream


class SDPACoreAttention(MegatronModule):
    """Drop-in for megatron-core's core attention: [s, b, heads, d] q/k/v in, [s, b, heads*d] out."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type=None,
                 attention_dropout=None, softmax_scale=None, cp_comm_type=None, pg_collection=None,
                 **_unused):
        super().__init__(config=config)
        self.attn_mask_type = attn_mask_type
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None, **_unused):
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # -> [b, heads, s, d]
        mask_type = attn_mask_type or self.attn_mask_type
        causal = mask_type == AttnMaskType.causal
        # megatron's padding masks are True where attention is NOT allowed; SDPA wants the opposite.
        mask = None if causal or attention_mask is None else ~attention_mask
        dropout_p = self.dropout_p if self.training else 0.0
        # this TP rank's heads draw their masks from its own stream (parallel.dropout_streams)
        with attention_dropout_stream.fork() if dropout_p > 0 else contextlib.nullcontext():
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal, scale=self.softmax_scale,
                enable_gqa=k.size(1) != q.size(1))
        b, heads, s, d = out.shape
        return out.permute(2, 0, 1, 3).reshape(s, b, heads * d)
