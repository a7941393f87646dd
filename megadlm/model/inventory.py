"""Every parameter tensor of the full model, from the config alone (no torch import).

Names and shapes are the GPTModel's; `tp_dim` is the dimension megatron shards over TP (None for
replicated tensors); `layer` is the transformer layer index, or None for the embedding, final norm
and output layer. Parameter counts, `megadlm plan` and its memory estimates all derive from this
list, and tests check it against the built model tensor by tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Optional

from megadlm.config.schema import Config


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    tp_dim: Optional[int]
    layer: Optional[int] = None

    @property
    def numel(self) -> int:
        return prod(self.shape)


def _layer_params(cfg: Config, i: int) -> list[ParamSpec]:
    m = cfg.model
    h, f = m.hidden_size, m.ffn_hidden_size
    heads = m.num_attention_heads
    groups = m.num_query_groups or heads
    head_dim = m.kv_channels or h // heads
    layer_norm = m.normalization == "LayerNorm"
    fc1_out = 2 * f if m.activation == "swiglu" else f
    p = f"decoder.layers.{i}."
    specs = [ParamSpec(p + "input_layernorm.weight", (h,), None, i)]
    if layer_norm:
        specs.append(ParamSpec(p + "input_layernorm.bias", (h,), None, i))
    qkv = head_dim * (heads + 2 * groups)
    specs.append(ParamSpec(p + "self_attention.linear_qkv.weight", (qkv, h), 0, i))
    if m.add_bias_linear:
        specs.append(ParamSpec(p + "self_attention.linear_qkv.bias", (qkv,), 0, i))
    if m.qk_layernorm:
        for which in ("q_layernorm", "k_layernorm"):
            specs.append(ParamSpec(p + f"self_attention.{which}.weight", (head_dim,), None, i))
            if layer_norm:
                specs.append(ParamSpec(p + f"self_attention.{which}.bias", (head_dim,), None, i))
    specs.append(ParamSpec(p + "self_attention.linear_proj.weight", (h, heads * head_dim), 1, i))
    if m.add_bias_linear:
        specs.append(ParamSpec(p + "self_attention.linear_proj.bias", (h,), None, i))
    specs.append(ParamSpec(p + "pre_mlp_layernorm.weight", (h,), None, i))
    if layer_norm:
        specs.append(ParamSpec(p + "pre_mlp_layernorm.bias", (h,), None, i))
    specs.append(ParamSpec(p + "mlp.linear_fc1.weight", (fc1_out, h), 0, i))
    if m.add_bias_linear:
        specs.append(ParamSpec(p + "mlp.linear_fc1.bias", (fc1_out,), 0, i))
    specs.append(ParamSpec(p + "mlp.linear_fc2.weight", (h, f), 1, i))
    if m.add_bias_linear:
        specs.append(ParamSpec(p + "mlp.linear_fc2.bias", (h,), None, i))
    return specs


def parameter_inventory(cfg: Config, vocab_size: int) -> list[ParamSpec]:
    """All parameters of the unsharded model; `vocab_size` is the padded vocabulary."""
    m = cfg.model
    h = m.hidden_size
    specs = [ParamSpec("embedding.word_embeddings.weight", (vocab_size, h), 0)]
    if m.position_embedding == "learned_absolute":
        specs.append(ParamSpec("embedding.position_embeddings.weight", (cfg.data.seq_len, h), None))
    for i in range(m.num_layers):
        specs += _layer_params(cfg, i)
    specs.append(ParamSpec("decoder.final_layernorm.weight", (h,), None))
    if m.normalization == "LayerNorm":
        specs.append(ParamSpec("decoder.final_layernorm.bias", (h,), None))
    if not m.tie_embeddings:
        specs.append(ParamSpec("output_layer.weight", (vocab_size, h), 0))
    return specs


def count_parameters(cfg: Config, vocab_size: int) -> dict[str, int]:
    """Exact parameter counts of the full (unsharded) model."""
    inventory = parameter_inventory(cfg, vocab_size)
    embedding = sum(p.numel for p in inventory if p.name.startswith("embedding."))
    output = sum(p.numel for p in inventory if p.name.startswith("output_layer."))
    total = sum(p.numel for p in inventory)
    return {"non_embedding": total - embedding - output, "embedding": embedding, "output": output,
            "total": total}
