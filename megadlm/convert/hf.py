"""megadlm (megatron-core GPT) <-> Hugging Face transformers weights and configs.

AR models become `Qwen3ForCausalLM` (QK-norm) or `LlamaForCausalLM` (no QK-norm): standard
architectures that load without remote code. MDM models get the same weights and config plus
`modeling_megadlm_mdm.py` (bidirectional attention, mask token id), loaded with
`trust_remote_code=True`.

Layout differences handled here:
- megatron's fused QKV is grouped per KV group: [q heads of group g; k_g; v_g] for each g.
- SwiGLU fc1 is [gate; up]; HF has gate_proj and up_proj.
- Norm names: input_layernorm / pre_mlp_layernorm / final_layernorm -> input_layernorm /
  post_attention_layernorm / model.norm; QK-norm -> q_norm / k_norm.
- The padded vocabulary is kept (HF vocab_size = padded size); tied embeddings stay tied.
RoPE (non-interleaved, base rotary_base) and RMSNorm (weight * x / rms) have the same convention.
"""
from __future__ import annotations

import torch

from megadlm.errors import UserError

MDM_MODEL_TYPE = "megadlm_mdm"
MDM_MODELING_FILE = "modeling_megadlm_mdm.py"


class ConversionError(UserError):
    """A model that has no Hugging Face counterpart, or an HF model megadlm cannot import."""


def head_dim(m: dict) -> int:
    return m.get("kv_channels") or m["hidden_size"] // m["num_attention_heads"]


def _check_convertible(m: dict) -> None:
    unsupported = []
    if m.get("position_embedding", "rope") != "rope":
        unsupported.append("position_embedding must be rope")
    if m.get("normalization", "RMSNorm") != "RMSNorm":
        unsupported.append("normalization must be RMSNorm")
    if m.get("activation", "swiglu") != "swiglu":
        unsupported.append("activation must be swiglu")
    if m.get("add_bias_linear"):
        unsupported.append("add_bias_linear must be false")
    if unsupported:
        raise ConversionError("this model has no Qwen3/Llama counterpart: " + "; ".join(unsupported))


def hf_config(m: dict, objective: str, seq_len: int, eos_id: int, mask_id: int) -> dict:
    """config.json content for model facts `m` (megadlm.train.trainer.run_facts)."""
    _check_convertible(m)
    groups = m.get("num_query_groups") or m["num_attention_heads"]
    arch = "Qwen3ForCausalLM" if m["qk_layernorm"] else "LlamaForCausalLM"
    config = {
        "architectures": [arch], "model_type": "qwen3" if m["qk_layernorm"] else "llama",
        "vocab_size": m["padded_vocab_size"], "hidden_size": m["hidden_size"],
        "intermediate_size": m["ffn_hidden_size"], "num_hidden_layers": m["num_layers"],
        "num_attention_heads": m["num_attention_heads"], "num_key_value_heads": groups,
        "head_dim": head_dim(m), "hidden_act": "silu", "max_position_embeddings": seq_len,
        "rms_norm_eps": m["norm_epsilon"], "rope_theta": float(m["rotary_base"]), "attention_bias": False,
        "mlp_bias": False, "tie_word_embeddings": bool(m["tie_embeddings"]), "torch_dtype": "float32",
        "eos_token_id": eos_id, "bos_token_id": eos_id, "use_cache": objective == "ar",
    }
    if objective == "mdm":
        if not m["qk_layernorm"]:
            raise ConversionError("MDM export builds on Qwen3 blocks, which have QK-norm: this model has "
                                  "model.qk_layernorm=false")
        config.update({
            "architectures": ["MegadlmMDMForMaskedDiffusion"], "model_type": MDM_MODEL_TYPE,
            "mask_token_id": mask_id, "use_cache": False,
            "auto_map": {"AutoConfig": "modeling_megadlm_mdm.MegadlmMDMConfig",
                         "AutoModel": "modeling_megadlm_mdm.MegadlmMDMForMaskedDiffusion",
                         "AutoModelForMaskedLM": "modeling_megadlm_mdm.MegadlmMDMForMaskedDiffusion"}})
    return config


def to_hf(weights: dict[str, torch.Tensor], m: dict) -> dict[str, torch.Tensor]:
    """GPTModel full weights -> HF state dict (lm_head omitted when tied)."""
    _check_convertible(m)
    d, heads = head_dim(m), m["num_attention_heads"]
    groups = m.get("num_query_groups") or heads
    per_group = heads // groups
    out = {"model.embed_tokens.weight": weights["embedding.word_embeddings.weight"],
           "model.norm.weight": weights["decoder.final_layernorm.weight"]}
    if not m["tie_embeddings"]:
        out["lm_head.weight"] = weights["output_layer.weight"]
    for i in range(m["num_layers"]):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        qkv = weights[src + "self_attention.linear_qkv.weight"].view(groups, (per_group + 2) * d, -1)
        q, k, v = qkv.split([per_group * d, d, d], dim=1)
        out[dst + "self_attn.q_proj.weight"] = q.reshape(heads * d, -1)
        out[dst + "self_attn.k_proj.weight"] = k.reshape(groups * d, -1)
        out[dst + "self_attn.v_proj.weight"] = v.reshape(groups * d, -1)
        out[dst + "self_attn.o_proj.weight"] = weights[src + "self_attention.linear_proj.weight"]
        gate, up = weights[src + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        out[dst + "mlp.gate_proj.weight"], out[dst + "mlp.up_proj.weight"] = gate, up
        out[dst + "mlp.down_proj.weight"] = weights[src + "mlp.linear_fc2.weight"]
        out[dst + "input_layernorm.weight"] = weights[src + "input_layernorm.weight"]
        out[dst + "post_attention_layernorm.weight"] = weights[src + "pre_mlp_layernorm.weight"]
        if m["qk_layernorm"]:
            out[dst + "self_attn.q_norm.weight"] = weights[src + "self_attention.q_layernorm.weight"]
            out[dst + "self_attn.k_norm.weight"] = weights[src + "self_attention.k_layernorm.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def from_hf(state: dict[str, torch.Tensor], m: dict) -> dict[str, torch.Tensor]:
    """HF state dict -> GPTModel full weights (the inverse of `to_hf`)."""
    d, heads = head_dim(m), m["num_attention_heads"]
    groups = m.get("num_query_groups") or heads
    per_group = heads // groups
    out = {"embedding.word_embeddings.weight": state["model.embed_tokens.weight"],
           "decoder.final_layernorm.weight": state["model.norm.weight"]}
    if not m["tie_embeddings"]:
        out["output_layer.weight"] = state["lm_head.weight"]
    for i in range(m["num_layers"]):
        src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
        hidden = state[src + "self_attn.q_proj.weight"].size(1)
        q = state[src + "self_attn.q_proj.weight"].view(groups, per_group * d, hidden)
        k = state[src + "self_attn.k_proj.weight"].view(groups, d, hidden)
        v = state[src + "self_attn.v_proj.weight"].view(groups, d, hidden)
        out[dst + "self_attention.linear_qkv.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, hidden)
        out[dst + "self_attention.linear_proj.weight"] = state[src + "self_attn.o_proj.weight"]
        out[dst + "mlp.linear_fc1.weight"] = torch.cat([state[src + "mlp.gate_proj.weight"],
                                                        state[src + "mlp.up_proj.weight"]], dim=0)
        out[dst + "mlp.linear_fc2.weight"] = state[src + "mlp.down_proj.weight"]
        out[dst + "input_layernorm.weight"] = state[src + "input_layernorm.weight"]
        out[dst + "pre_mlp_layernorm.weight"] = state[src + "post_attention_layernorm.weight"]
        if m["qk_layernorm"]:
            out[dst + "self_attention.q_layernorm.weight"] = state[src + "self_attn.q_norm.weight"]
            out[dst + "self_attention.k_layernorm.weight"] = state[src + "self_attn.k_norm.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def model_facts_from_hf(config: dict) -> dict:
    """megadlm model facts (shape) of an HF Qwen3/Llama/megadlm-MDM config.json."""
    model_type = "qwen3" if config.get("model_type") == MDM_MODEL_TYPE else config.get("model_type")
    if model_type not in ("qwen3", "llama"):
        raise ConversionError(f"cannot import model_type {config.get('model_type')!r}: megadlm imports Qwen3 "
                              f"and Llama-style models (and its own MDM exports)")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ConversionError("cannot import a model with attention/MLP biases (megadlm models have none)")
    heads = config["num_attention_heads"]
    return {"num_layers": config["num_hidden_layers"], "hidden_size": config["hidden_size"],
            "ffn_hidden_size": config["intermediate_size"], "num_attention_heads": heads,
            "num_query_groups": config.get("num_key_value_heads", heads),
            "kv_channels": config.get("head_dim") or config["hidden_size"] // heads,
            "position_embedding": "rope", "rotary_base": int(config.get("rope_theta", 10000)),
            "normalization": "RMSNorm", "norm_epsilon": config.get("rms_norm_eps", 1e-6),
            "activation": "swiglu",
            "qk_layernorm": model_type == "qwen3", "add_bias_linear": False,
            "tie_embeddings": bool(config.get("tie_word_embeddings", False)),
            "padded_vocab_size": config["vocab_size"]}
