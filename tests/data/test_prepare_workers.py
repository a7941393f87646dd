"""`megadlm prepare --workers N`: the output is the same for any N, `--max-tokens` stays exact."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from megadlm.data.encode_pool import EncodePool, _batches, encode_documents
from megadlm.data.prepare import prepare
from megadlm.data.tokenizer import ByteTokenizer
from megadlm.errors import DataError
from tests.conftest import run_cli

TIMING_FIELDS = ("created", "prepare_seconds")


def written(out: Path) -> dict[str, bytes]:
    """Every shard and index of a prepared directory, by relative path, plus its manifest without the
    fields that record when and how fast it was written."""
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
             if p.is_file() and p.name != "manifest.json"}
    manifest = json.loads((out / "manifest.json").read_text())
    files["manifest.json"] = json.dumps({k: v for k, v in manifest.items() if k not in TIMING_FIELDS},
                                        sort_keys=True).encode()
    return files


def test_any_number_of_workers_writes_byte_identical_shards(small_pydoc_dir: Path, tmp_path: Path):
    # A trained BPE (the tokenizer file travels to the workers) with documents held out for val.
    outputs = {}
    for n in (1, 2, 3):
        prepare([str(small_pydoc_dir)], str(tmp_path / f"w{n}"), train_bpe=300, seq_len=16, val_fraction=0.2,
                progress=False, workers=n)
        outputs[n] = written(tmp_path / f"w{n}")
    assert any(name.startswith("val/") for name in outputs[1])
    assert len([name for name in outputs[1] if name.endswith(".mds.zstd")]) >= 2
    assert outputs[2] == outputs[1] and outputs[3] == outputs[1]


def test_max_tokens_is_exact_with_several_workers(pydoc_dir: Path, tmp_path: Path):
    cap = 20_011  # not a multiple of anything the packing or batching uses
    one = prepare([str(pydoc_dir)], str(tmp_path / "one"), seq_len=16, max_tokens=cap, progress=False)
    two = prepare([str(pydoc_dir)], str(tmp_path / "two"), seq_len=16, max_tokens=cap, progress=False,
                  workers=2)
    assert one["splits"]["train"]["stream_tokens"] == two["splits"]["train"]["stream_tokens"] == cap
    assert written(tmp_path / "two") == written(tmp_path / "one")


def test_workers_must_be_positive(small_pydoc_dir: Path, tmp_path: Path):
    with pytest.raises(DataError, match="--workers must be at least 1, got 0"):
        prepare([str(small_pydoc_dir)], str(tmp_path / "out"), workers=0)
    assert not (tmp_path / "out").exists()


def test_the_command_line_spawns_its_workers(small_pydoc_dir: Path, tmp_path: Path):
    """Spawned workers import `python -m megadlm`'s main module again: it must not rerun the command."""
    proc = run_cli("prepare", "--input", str(small_pydoc_dir), "--out", str(tmp_path / "cli"), "--seq-len",
                   "16", "--workers", "2", "--no-progress", timeout=300)
    assert proc.stdout.count(f"wrote {tmp_path / 'cli'}") == 1, proc.stdout
    prepare([str(small_pydoc_dir)], str(tmp_path / "api"), seq_len=16, progress=False)
    assert written(tmp_path / "cli") == written(tmp_path / "api")
    bad = run_cli("prepare", "--input", str(small_pydoc_dir), "--out", str(tmp_path / "bad"), "--workers",
                  "0", check=False)
    assert bad.returncode == 2 and "--workers must be at least 1" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_the_pool_encodes_in_other_processes_and_returns_documents_in_order():
    tok = ByteTokenizer()
    # Later documents are shorter, so later tasks finish first; the long ones fill a task each.
    texts = [f"document {i} " * (40_000 - 2_000 * i) for i in range(20)] + ["x"] * 150
    with EncodePool(tok, "bytes", "uint16", workers=2) as pool:
        got = list(pool.encode_in_order(texts, text_of=lambda text: text))
        pids = set(pool._executor._processes)  # type: ignore[union-attr]
    assert [text for text, _ in got] == texts
    expected = encode_documents(tok, texts, "uint16")
    assert all(np.array_equal(tokens, want) for (_, tokens), want in zip(got, expected))
    assert got[0][1].dtype == np.uint16 and got[0][1][-1] == tok.eos_id
    assert len(pids) == 2 and os.getpid() not in pids


def test_tasks_end_at_a_document_count_or_an_amount_of_text():
    texts = ["a" * 100] * 10 + ["b" * 1000] + ["c"] * 5
    assert [len(b) for b in _batches(texts, str, max_docs=4, max_chars=None)] == [4, 4, 4, 4]
    assert [len(b) for b in _batches(texts, str, max_docs=64, max_chars=350)] == [4, 4, 3, 5]
