"""Build the megatron-core GPT model a run trains, from its typed config.

The same builder serves AR (causal attention, next-token labels) and MDM (bidirectional attention,
labels = the clean tokens at the same positions). Initial weights depend only on (seed, parameter
name) (`megadlm.model.init`): every TP/PP layout starts from the same model as one process.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from megadlm.config.schema import Config
from megadlm.model.inventory import count_parameters


def _keep_uninitialised(weight: torch.Tensor) -> None:
    """megatron init_method that draws nothing (weights are set by name afterwards)."""


def compute_dtype(precision: str) -> torch.dtype:
    """fp32 on CPU, bf16 on GPU unless the config forces one. fp64 exists to prove layout parity:
    with rounding out of the way, any difference between layouts is a bug (tests/parallel)."""
    from megadlm.parallel.distributed import use_cuda

    forced = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}
    if precision in forced:
        return forced[precision]
    return torch.bfloat16 if use_cuda() else torch.float32


def transformer_config(cfg: Config):
    from megatron.core.transformer.transformer_config import TransformerConfig

    m, obj = cfg.model, cfg.objective
    dtype = compute_dtype(cfg.parallel.precision)
    swiglu = m.activation == "swiglu"
    return TransformerConfig(
        num_layers=m.num_layers, hidden_size=m.hidden_size, ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads, num_query_groups=m.num_query_groups,
        kv_channels=m.kv_channels, normalization=m.normalization, layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=swiglu, activation_func=F.silu if swiglu else F.gelu,
        add_bias_linear=m.add_bias_linear, qk_layernorm=m.qk_layernorm, init_method_std=m.init_std,
        hidden_dropout=obj.hidden_dropout, attention_dropout=obj.attention_dropout,
        tensor_model_parallel_size=cfg.parallel.tp, pipeline_model_parallel_size=cfg.parallel.pp,
        # CPU-safe settings: full master weights built on CPU (TP-invariant init), no fused kernels
        # that only exist as CUDA extensions. On GPU the unfused ops are still the same code path.
        # megatron's CPU init pass must run: it is what tags TP shards (tensor_model_parallel,
        # partition_dim, partition_stride), which DeepSpeed's clipping and our init need. Its random
        # draw is skipped (`_keep_uninitialised`); megadlm.model.init fills every weight by name.
        use_cpu_initialization=True, perform_initialization=True,
        init_method=_keep_uninitialised, output_layer_init_method=_keep_uninitialised,
        params_dtype=dtype, pipeline_dtype=dtype, bf16=dtype == torch.bfloat16,
        gradient_accumulation_fusion=False, bias_activation_fusion=False, masked_softmax_fusion=False,
        persist_layer_norm=False, bias_dropout_fusion=False, apply_rope_fusion=False)


def checkpoint_layer_activations(layers) -> None:
    """Recompute each of these transformer layers in backward instead of keeping its activations.

    megatron's own recompute ("full") goes through its CUDA RNG tracker and fails on CPU; torch's
    non-reentrant checkpoint restores the default RNG state itself and ours replays the attention
    dropout stream, so dropout masks are the same in the recomputation. Wrapping the instance's
    forward keeps parameter names unchanged. The pipeline's layer stages use the same wrapper.
    """
    from megadlm.parallel.dropout_streams import checkpoint

    for layer in layers:
        def forward(*args, _inner=layer.forward, **kwargs):
            if not torch.is_grad_enabled():
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, **kwargs)

        layer.forward = forward


def _gpt_model_class():
    from megatron.core.models.gpt.gpt_model import GPTModel

    from megadlm.parallel.output_head import logits_cross_entropy, scored_cross_entropy

    class ProjectGPTModel(GPTModel):
        """GPTModel whose per-token loss keeps fp64 in fp64 runs (megatron's casts to fp32) and, with
        model.output_head=scored, projects only the scored positions, chunked (parallel.output_head).
        Labels of positions without a loss weight are output_head.IGNORE; their CE is 0."""

        scored_head = True

        def _postprocess(self, hidden_states, input_ids, position_ids, labels, **kwargs):
            if labels is None or not self.scored_head or kwargs.get("mtp_in_postprocess"):
                return super()._postprocess(hidden_states=hidden_states, input_ids=input_ids,
                                            position_ids=position_ids, labels=labels, **kwargs)
            weight = (self.shared_embedding_or_output_weight() if self.share_embeddings_and_output_weights
                      else self.output_layer.weight)
            return scored_cross_entropy(hidden_states, weight, labels)

        def compute_language_model_loss(self, labels, logits):
            return logits_cross_entropy(logits, labels)  # [s, b, v/tp], [b, s] -> CE [b, s]

    return ProjectGPTModel


def match_parameter_dtype(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """megatron builds torch norms in the default dtype whatever params_dtype says: cast them too
    (DeepSpeed casts the whole module for bf16 anyway; fp64 parity runs need it here)."""
    return model.to(dtype)


def build_model(cfg: Config, vocab_size: int, seed: int | None = None):
    """The GPTModel for this rank (PP=1: the whole depth), initialised from (seed, names).
    `vocab_size` is already padded; `seed` defaults to run.seed."""
    from megatron.core import parallel_state as ps

    from megadlm.model.init import init_by_name
    from megadlm.model.layers import project_layer_spec
    from megadlm.model.rope import make_rope_device_agnostic
    from megadlm.parallel.distributed import device

    m = cfg.model
    model = _gpt_model_class()(
        config=transformer_config(cfg), transformer_layer_spec=project_layer_spec(cfg), vocab_size=vocab_size,
        max_sequence_length=cfg.data.seq_len, pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=m.tie_embeddings,
        position_embedding_type=m.position_embedding, rotary_base=m.rotary_base)
    model.scored_head = m.output_head == "scored"
    make_rope_device_agnostic(model)
    match_parameter_dtype(model, compute_dtype(cfg.parallel.precision))
    init_by_name(model.named_parameters(), cfg.run.seed if seed is None else seed, m.init_std, m.num_layers,
                 m.init_from)
    layers = list(model.decoder.layers)
    checkpoint_layer_activations(layers[:m.recomputed_layers(len(layers))])
    return model.to(device())


def flops_per_token(cfg: Config, vocab_size: int) -> float:
    """Training FLOPs per token, the convention used for every MFU number megadlm reports:

    6 * N (N = non-embedding parameters + the output projection, which is a real matmul even when
    tied) plus the attention term 12 * layers * hidden * seq_len counted in FULL for both AR and
    MDM (no causal halving), so AR and MDM numbers are comparable.
    """
    n = count_parameters(cfg, vocab_size)
    m = cfg.model
    matmul_params = n["non_embedding"] + vocab_size * m.hidden_size
    attn_width = m.num_attention_heads * (m.kv_channels or m.hidden_size // m.num_attention_heads)
    return 6.0 * matmul_params + 12.0 * m.num_layers * attn_width * cfg.data.seq_len
