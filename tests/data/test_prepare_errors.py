"""Every user-facing problem in `prepare` is a DataError whose message names the problem and the fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from megadlm.data.manifest import load_manifest
from megadlm.data.prepare import prepare
from megadlm.data.tokenizer import tokenizer_from_manifest
from megadlm.errors import DataError

TEXT = "All the world's a stage, and all the men and women merely players. " * 10


@pytest.fixture()
def doc(tmp_path: Path) -> Path:
    path = tmp_path / "doc.txt"
    path.write_text(TEXT)
    return path


def _no_leftovers(out: Path) -> None:
    """Nothing half-written next to `out` after a failure."""
    assert not list(out.parent.glob(out.name + ".tmp-*")) and not list(out.parent.glob(out.name + ".old-*"))


def test_missing_input(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match=rf"input {re.escape(str(missing))} does not exist"):
        prepare([str(missing)], str(tmp_path / "out"), progress=False)


def test_empty_corpus(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("")
    (src / "b.txt").write_text("  \n\n ")
    (src / "c.jsonl").write_text(json.dumps({"text": ""}) + "\n")
    out = tmp_path / "out"
    with pytest.raises(DataError,
                       match=r"empty corpus: no non-empty documents in .*supported in directories"):
        prepare([str(src)], str(out), progress=False)
    assert not out.exists()
    _no_leftovers(out)


def test_jsonl_line_without_text(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "x", "id": 1}) + "\n")
    with pytest.raises(DataError,
                       match=rf'{re.escape(str(path))}:2: no "text" field \(found keys: body, id\)'):
        prepare([str(path)], str(tmp_path / "out"), progress=False)


def test_jsonl_line_not_json(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n{oops\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:2: not valid JSON"):
        prepare([str(path)], str(tmp_path / "out"), progress=False)


def test_parquet_without_text_column(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"content": ["a", "b"], "id": [1, 2]}), path)
    with pytest.raises(DataError, match=r'd.parquet has no "text" column \(columns: content, id\)'):
        prepare([str(path)], str(tmp_path / "out"), progress=False)


def test_corpus_too_small_for_seq_len(doc: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    n = len(TEXT.encode()) + 1  # + EOS
    with pytest.raises(DataError, match=rf"corpus too small for --seq-len 4096: found {n} train tokens, "
                                        rf"need at least 4097; use a smaller --seq-len"):
        prepare([str(doc)], str(out), seq_len=4096, progress=False)
    assert not out.exists()
    _no_leftovers(out)


def test_val_split_too_small(doc: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"val split too small for --seq-len 128: found \d+ val tokens"):
        prepare([str(doc)], str(tmp_path / "out"), seq_len=128, val_fraction=0.05, progress=False)


def test_existing_out_is_not_overwritten(doc: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match=r"already exists; pass --overwrite or choose another --out"):
        prepare([str(doc)], str(out), seq_len=16, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"
    # --overwrite still refuses a directory that prepare did not write.
    with pytest.raises(DataError, match=r"has no manifest.json.*refusing to delete it"):
        prepare([str(doc)], str(out), seq_len=16, progress=False, overwrite=True)
    assert (out / "keep.txt").read_text() == "precious"
    _no_leftovers(out)


def test_overwrite_replaces_previous_output(doc: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare([str(doc)], str(out), seq_len=16, progress=False)
    with pytest.raises(DataError, match=r"corpus too small"):  # a failed re-run keeps the old output
        prepare([str(doc)], str(out), seq_len=4096, progress=False, overwrite=True)
    assert load_manifest(out)["seq_len"] == 16
    m = prepare([str(doc)], str(out), seq_len=32, progress=False, overwrite=True)
    assert load_manifest(out) == m and m["seq_len"] == 32
    _no_leftovers(out)


def test_empty_existing_out_is_fine(doc: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    assert prepare([str(doc)], str(tmp_path / "out"), seq_len=16,
                   progress=False)["splits"]["train"]["samples"]


def test_tokenizer_path_missing(doc: Path, tmp_path: Path) -> None:
    missing = tmp_path / "tok" / "tokenizer.json"
    with pytest.raises(DataError, match=rf"tokenizer file {re.escape(str(missing))} does not exist"):
        prepare([str(doc)], str(tmp_path / "out"), tokenizer=str(missing), progress=False)
    assert not (tmp_path / "out").exists()


def test_manifest_tokenizer_sha_mismatch(doc: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare([str(doc)], str(out), train_bpe=300, seq_len=16, progress=False)
    tok_file = out / "tokenizer.json"
    tok_file.write_text(tok_file.read_text() + "\n")  # any change to the file, even whitespace
    with pytest.raises(DataError,
                       match=rf"tokenizer.json in {re.escape(str(out))} does not match the manifest "
                             rf"\(sha [0-9a-f]+ != [0-9a-f]+\): re-run prepare"):
        tokenizer_from_manifest(out)
    tok_file.unlink()
    with pytest.raises(DataError, match=r"has no tokenizer.json .*re-run prepare"):
        tokenizer_from_manifest(out)


@pytest.mark.parametrize("kwargs, message", [
    ({"seq_len": 0}, r"--seq-len must be at least 1"),
    ({"val_fraction": 1.0}, r"--val-fraction must be in \[0, 1\)"),
    ({"val_fraction": 0.1, "val_inputs": ["x"]}, r"either --val-fraction or --val-input"),
    ({"max_tokens": 0}, r"--max-tokens must be positive"),
    ({"tokenizer": "t.json", "train_bpe": 512}, r"either --tokenizer PATH or --train-bpe VOCAB"),
    ({"train_bpe": 10}, r"--train-bpe 10 is too small"),
])
def test_bad_arguments(doc: Path, tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        prepare([str(doc)], str(tmp_path / "out"), progress=False, **kwargs)
    assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path / "out")


def test_out_under_input_directory_is_not_read_back(tmp_path: Path) -> None:
    (tmp_path / "doc.txt").write_text(TEXT)
    first = prepare([str(tmp_path)], str(tmp_path / "mds"), seq_len=16, progress=False)
    again = prepare([str(tmp_path)], str(tmp_path / "mds"), seq_len=16, progress=False, overwrite=True)
    assert again["splits"] == first["splits"]  # manifest.json / index.json were not taken as input
