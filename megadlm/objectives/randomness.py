"""Counter-based randomness: every random draw of an objective is a pure function of
(run seed, global sample index, epoch, purpose).

Masks therefore do not depend on how many processes read the data, on which rank a sample lands,
or on what ran before a resume; TP ranks and pipeline stages of one replica derive identical masks.
"""
from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1

# Purposes keep independent draws apart (the MDM time t and the per-token noise must not coincide).
TIME, TOKENS, LENGTH, RATE = 1, 2, 3, 4
# Seeds the torch generator that hidden/MLP dropout draws from (per data-parallel replica and
# pipeline stage, shared by its TP ranks), and attention dropout's own stream (per TP rank too).
DROPOUT_STREAM = 5
ATTENTION_DROPOUT_STREAM = 6


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """Mix integers into a 63-bit seed (torch.Generator takes signed 64-bit)."""
    h = 0
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h >> 1


def dropout_seeds(seed: int, dp_rank: int, pp_rank: int, tp_rank: int) -> tuple[int, int]:
    """(hidden/MLP dropout seed, attention dropout seed) of one rank: the first is the same on every
    TP rank of a replica's pipeline stage, the second differs between them (parallel.dropout_streams)."""
    return (derive_seed(seed, DROPOUT_STREAM, dp_rank, pp_rank),
            derive_seed(seed, ATTENTION_DROPOUT_STREAM, dp_rank, pp_rank, tp_rank))


def generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def per_sample_uniform(seed: int, sample_ids: torch.Tensor, epoch: int, purpose: int,
                       length: int) -> torch.Tensor:
    """[b, length] uniforms on CPU, row i determined by (seed, sample_ids[i], epoch, purpose)."""
    rows = [torch.rand(length, generator=generator(seed, int(i), epoch, purpose))
            for i in sample_ids.tolist()]
    return torch.stack(rows)
