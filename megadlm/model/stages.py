"""The GPT split into pipeline stages, built from the same megatron-core pieces as the GPTModel.

Each stage names its parameters with the GPTModel's global names (`global_name`), so the
name-based initialisation gives a pipelined model exactly the weights of the single-process one.
Activations between stages are [s, b, h] tensors.
"""
from __future__ import annotations

import torch
from megatron.core import tensor_parallel
from megatron.core.models.common.embeddings.language_model_embedding import LanguageModelEmbedding
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import build_module

from megadlm.model.rope import DeviceAgnosticRotaryEmbedding


class EmbeddingStage(MegatronModule):
    """Token (and learned position) embeddings: ids [b, s] -> hidden [s, b, h]."""

    def __init__(self, config, vocab_size: int, seq_len: int, position_embedding: str):
        super().__init__(config=config)
        self.embedding = LanguageModelEmbedding(
            config, vocab_size=vocab_size, max_sequence_length=seq_len,
            position_embedding_type=("learned_absolute" if position_embedding == "learned_absolute"
                                     else "rope"))

    def global_name(self, local: str) -> str:
        return local  # "embedding.word_embeddings.weight" etc., as in GPTModel

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.size(1), device=ids.device).unsqueeze(0).expand_as(ids)
        return self.embedding(ids, positions)


class TransformerLayerStage(MegatronModule):
    """One megatron-core TransformerLayer from the project spec, with its own RoPE table."""

    def __init__(self, config, spec, layer_number: int, position_embedding: str, rotary_base: int):
        super().__init__(config=config)
        self.layer_index = layer_number - 1
        self.layer = build_module(spec, config=config, layer_number=layer_number)
        self.rope = None
        if position_embedding == "rope":
            self.rope = DeviceAgnosticRotaryEmbedding(
                kv_channels=config.kv_channels, rotary_percent=1.0, rotary_base=rotary_base,
                use_cpu_initialization=True)

    def global_name(self, local: str) -> str:
        return f"decoder.layers.{self.layer_index}." + local[len("layer."):]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rotary = self.rope(hidden.size(0)) if self.rope is not None else None
        out, _ = self.layer(hidden, attention_mask=None, rotary_pos_emb=rotary)
        return out


class FinalNormStage(MegatronModule):
    def __init__(self, config, spec):
        super().__init__(config=config)
        self.final_layernorm = build_module(spec.submodules.input_layernorm, config=config,
                                            hidden_size=config.hidden_size, eps=config.layernorm_epsilon)

    def global_name(self, local: str) -> str:
        return "decoder." + local

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.final_layernorm(hidden)


class OutputStage(MegatronModule):
    """Untied output projection: hidden [s, b, h] -> vocab-parallel logits [s, b, v/tp]."""

    def __init__(self, config, vocab_size: int):
        super().__init__(config=config)
        self.output_layer = tensor_parallel.ColumnParallelLinear(
            config.hidden_size, vocab_size, config=config, init_method=config.init_method, bias=False,
            gather_output=False)

    def global_name(self, local: str) -> str:
        return local

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits, _ = self.output_layer(hidden)
        return logits


def tied_output_logits(embedding_stage: EmbeddingStage, hidden: torch.Tensor) -> torch.Tensor:
    """The output projection with the (vocab-parallel) word-embedding weight, as GPTModel does when
    tied: identity forward / all-reduce backward over TP, then a local matmul."""
    hidden = tensor_parallel.copy_to_tensor_model_parallel_region(hidden)
    return torch.nn.functional.linear(hidden, embedding_stage.embedding.word_embeddings.weight)
