"""RoPE on the training device.

megatron-core 0.16's RotaryEmbedding.get_emb moves its frequencies to `torch.cuda.current_device()`
whenever they live on the CPU, which crashes CPU runs. `inv_freq` is a plain attribute (not a
buffer), so `module.to(device)` does not move it either: this subclass moves it to the device the
process trains on (megadlm.parallel.distributed.device()) and is otherwise the same math.
"""
from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding


class DeviceAgnosticRotaryEmbedding(RotaryEmbedding):
    def get_emb(self, max_seq_len: int, offset: int = 0) -> torch.Tensor:
        from megadlm.parallel.distributed import device

        target = device()
        if self.inv_freq.device != target:
            self.inv_freq = self.inv_freq.to(target)
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
