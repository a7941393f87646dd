"""Dropout random streams on a TP x PP x DP layout.

Hidden and MLP dropout act on tensors that every tensor-parallel rank of a replica holds whole, so
those ranks must draw the same masks: they share the default generator, seeded per (replica, stage).
Attention dropout acts on each TP rank's own heads. Drawn from that shared stream, head j, j + H/tp,
j + 2H/tp, ... would get identical masks (at TP 4 the 8B attention-dropout arms would drop the same
positions in four heads at once). It draws from a stream of its own per TP rank instead, swapped into
the default generator around the attention kernel, the way megatron-core's CUDA RNG tracker does it
(scaled_dot_product_attention takes no generator argument).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def _default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None
                                             else torch.cuda.current_device()]
    return torch.random.default_generator


class ForkedStream:
    """A random stream kept apart from the default generator and swapped in by `fork()`.

    Unseeded (evaluation, conversion, a model used outside `megadlm train`), `fork()` leaves the
    default generator in place."""

    def __init__(self) -> None:
        self.device: torch.device | None = None
        self._state: torch.Tensor | None = None

    def seed(self, seed: int, device: torch.device) -> None:
        generator = torch.Generator(device=device).manual_seed(seed)
        self.device, self._state = device, generator.get_state()

    @property
    def seeded(self) -> bool:
        return self._state is not None

    def get_state(self) -> torch.Tensor | None:
        return None if self._state is None else self._state.clone()

    def set_state(self, state: torch.Tensor) -> None:
        self._state = state.clone()

    @contextlib.contextmanager
    def fork(self) -> Iterator[None]:
        if self._state is None:
            yield
            return
        generator = _default_generator(self.device)
        outer = generator.get_state()
        generator.set_state(self._state)
        try:
            yield
        finally:
            self._state = generator.get_state()
            generator.set_state(outer)

    @contextlib.contextmanager
    def replay_from(self, state: torch.Tensor | None) -> Iterator[None]:
        """Run with the stream at `state` (a recomputation redraws the masks of the original
        forward), then continue from where the stream was."""
        if state is None:
            yield
            return
        current = self._state
        self._state = state
        try:
            yield
        finally:
            self._state = current


attention_dropout_stream = ForkedStream()


def seed_dropout_streams(shared_seed: int, attention_seed: int, device: torch.device) -> None:
    """Seed the shared stream (the default generator: the same seed on every TP rank of a replica's
    stage) and this rank's attention stream (a seed of its own per TP rank)."""
    torch.manual_seed(shared_seed)
    attention_dropout_stream.seed(attention_seed, device)


def recompute_contexts():
    """`context_fn` for torch.utils.checkpoint: the recomputation of a layer replays the attention
    stream from where the layer's forward found it (torch restores only the default generators)."""
    state = attention_dropout_stream.get_state()
    return contextlib.nullcontext(), attention_dropout_stream.replay_from(state)


def checkpoint(function, *args, **kwargs):
    """Non-reentrant activation checkpointing that keeps every dropout mask in the recomputation."""
    from torch.utils.checkpoint import checkpoint as torch_checkpoint

    return torch_checkpoint(function, *args, use_reentrant=False, context_fn=recompute_contexts, **kwargs)
