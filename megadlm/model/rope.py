"""RoPE that stays on the model's device.

megatron-core 0.16's RotaryEmbedding.get_emb moves its frequencies to `torch.cuda.current_device()`
whenever they live on the CPU, which crashes CPU runs. This subclass computes on whatever device the
module was moved to (cuda in production, cpu in tests) and is otherwise the same math.
"""
from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding


class DeviceAgnosticRotaryEmbedding(RotaryEmbedding):
    def get_emb(self, max_seq_len: int, offset: int = 0) -> torch.Tensor:
        freqs = self.get_freqs_non_repeated(max_seq_len, offset)
        if not self.rotary_interleaved:
            emb = torch.cat((freqs, freqs), dim=-1)
        else:
            emb = torch.stack((freqs.view(-1, 1), freqs.view(-1, 1)), dim=-1).view(freqs.shape[0], -1)
        return emb[:, None, None, :]


def make_rope_device_agnostic(model: torch.nn.Module) -> None:
    rope = getattr(model, "rotary_pos_emb", None)
    if isinstance(rope, RotaryEmbedding) and not isinstance(rope, DeviceAgnosticRotaryEmbedding):
        rope.__class__ = DeviceAgnosticRotaryEmbedding
        rope.forward.cache_clear() if hasattr(rope.forward, "cache_clear") else None
