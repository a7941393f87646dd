"""The project's transformer layer spec: megatron-core local modules + SDPA attention.

Two changes to megatron-core's local GPT spec:
- core attention is `SDPACoreAttention`, causal (AR) or unmasked (MDM);
- the MLP residual branch gets its own dropout (`mlp_dropout`) through its bias-dropout-add, so it
  regularises the MLP branch only. megatron's `hidden_dropout` acts on both residual branches, which
  is a different knob and still applies on top.
"""
from __future__ import annotations

import copy

import torch.nn.functional as F
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec

from megadlm.model.attention import SDPACoreAttention


def mlp_branch_bias_dropout_add(mlp_dropout: float):
    """A bias-dropout-add builder for the MLP branch that first applies `mlp_dropout` to it.

    The MLP output after the row-parallel fc2 is replicated across TP ranks, and every TP rank of a
    replica draws from the same torch RNG stream, so the dropout mask is identical across TP ranks.
    (A closure, not a partial: megatron's build_module passes plain functions through unchanged.)
    """

    def builder(training: bool, fused: bool):
        bias_dropout_add = get_bias_dropout_add(training, fused)

        def apply(x_with_bias, residual, prob):
            x, bias = x_with_bias
            if training and mlp_dropout > 0.0:
                if bias is not None:
                    x, bias = x + bias, None
                x = F.dropout(x, p=mlp_dropout, training=True)
            return bias_dropout_add((x, bias), residual, prob)

        return apply

    return builder


def layer_spec(*, bidirectional: bool, qk_layernorm: bool, normalization: str,
               mlp_dropout: float = 0.0) -> ModuleSpec:
    spec = copy.deepcopy(get_gpt_layer_local_spec(qk_layernorm=qk_layernorm, normalization=normalization))
    attention = spec.submodules.self_attention
    attention.submodules.core_attention = SDPACoreAttention
    attention.params = {"attn_mask_type": AttnMaskType.no_mask if bidirectional else AttnMaskType.causal}
    if mlp_dropout > 0.0:
        spec.submodules.mlp_bda = mlp_branch_bias_dropout_add(mlp_dropout)
    return spec


def project_layer_spec(cfg) -> ModuleSpec:
    """The layer spec a run's config asks for (attention direction from the objective)."""
    m = cfg.model
    return layer_spec(bidirectional=cfg.objective.type == "mdm", qk_layernorm=m.qk_layernorm,
                      normalization=m.normalization, mlp_dropout=cfg.objective.mlp_dropout)
