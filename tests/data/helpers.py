"""Shared helpers for the data tests: read MDS shards back and rebuild the expected token stream."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from megadlm.data.tokenizer import Tokenizer


def read_split(data_dir: Path, split: str, scratch: Path) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [n, sample_len], idx [n]) of a split, read with streaming.LocalDataset.

    LocalDataset reads raw `.mds` shards only, while prepare writes zstd ones: decompress a copy into
    `scratch` first (the prepared directory itself must stay untouched).
    """
    from streaming import LocalDataset
    from streaming.base.compression import decompress

    local = scratch / f"{split}-raw"
    shutil.copytree(data_dir / split, local)
    for shard in json.loads((local / "index.json").read_text())["shards"]:
        zipped = local / shard["zip_data"]["basename"]
        raw = decompress(shard["compression"], zipped.read_bytes())
        (local / shard["raw_data"]["basename"]).write_bytes(raw)
    ds = LocalDataset(local=str(local))
    rows = [ds[i] for i in range(len(ds))]
    if not rows:
        return np.zeros((0, 0), dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.stack([r["tokens"] for r in rows]), np.array([int(r["idx"]) for r in rows])


def token_stream(tok: Tokenizer, docs: Iterable[str]) -> np.ndarray:
    """Each document's tokens followed by EOS, concatenated: what prepare must have packed."""
    ids: list[int] = []
    for d in docs:
        ids.extend(tok.encode(d))
        ids.append(tok.eos_id)
    return np.array(ids, dtype=np.int64)


def expected_samples(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Sample i = stream[i*L : i*L + L + 1]; the incomplete tail is dropped."""
    n = (len(stream) - 1) // seq_len if len(stream) > seq_len else 0
    return np.stack([stream[i * seq_len:i * seq_len + seq_len + 1] for i in range(n)])


def texts_of(files: Iterable[Path]) -> list[str]:
    return [f.read_text(encoding="utf-8") for f in files]
