"""Inputs as corpora ship: compressed text/JSON/JSONL read streaming, a field other than `text`,
glob patterns over mixed files, and Hugging Face datasets saved to disk; each problem one DataError
naming the file."""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from megadlm.data.inputs import find_input_files, iter_documents, split_suffix
from megadlm.data.prepare import prepare
from megadlm.data.tokenizer import ByteTokenizer
from megadlm.errors import DataError

from .helpers import read_split, token_stream

DOCS = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (i + 2) for i in range(7)]
COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress,
            ".zst": lambda data: zstandard.ZstdCompressor().compress(data)}


def jsonl_bytes(docs, field="text") -> bytes:
    return "".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()


@pytest.mark.parametrize("compression", sorted(COMPRESS))
def test_compressed_jsonl_json_and_text_read_as_their_plain_files(tmp_path: Path, compression: str) -> None:
    pack = COMPRESS[compression]
    (tmp_path / f"a.jsonl{compression}").write_bytes(pack(jsonl_bytes(DOCS[:3])))
    records = json.dumps([{"text": d} for d in DOCS[3:5]]).encode()
    (tmp_path / f"b.json{compression}").write_bytes(pack(records))
    (tmp_path / f"c.txt{compression}").write_bytes(pack(DOCS[5].encode()))
    files = find_input_files([tmp_path])
    assert [f.name for f in files] == [f"{n}{compression}" for n in ("a.jsonl", "b.json", "c.txt")]
    assert [d.text for d in iter_documents(files)] == DOCS[:6]
    assert split_suffix(files[0]) == (".jsonl", compression)


def test_a_mixed_glob_prepares_the_same_samples_as_the_plain_files(tmp_path: Path) -> None:
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    plain.mkdir()
    (packed / "deep").mkdir(parents=True)
    (plain / "a.jsonl").write_bytes(jsonl_bytes(DOCS[:4]))
    (plain / "b.txt").write_text(DOCS[4])
    (packed / "a.jsonl.zst").write_bytes(COMPRESS[".zst"](jsonl_bytes(DOCS[:4])))
    (packed / "deep" / "b.txt.gz").write_bytes(gzip.compress(DOCS[4].encode()))
    (packed / "notes.md").write_text("not matched by the pattern")
    one = prepare([str(plain)], str(tmp_path / "one"), seq_len=16, progress=False)
    two = prepare([str(packed / "**" / "*.*.*")], str(tmp_path / "two"), seq_len=16, progress=False)
    assert one["splits"] == two["splits"] and two["splits"]["train"]["documents"] == 5
    tokens_one, _ = read_split(tmp_path / "one", "train", tmp_path / "s1")
    tokens_two, _ = read_split(tmp_path / "two", "train", tmp_path / "s2")
    assert (tokens_one == tokens_two).all()
    stream = token_stream(ByteTokenizer(), DOCS[:5])
    assert (tokens_two.reshape(-1)[:16] == stream[:16]).all()


def test_jsonl_parquet_and_saved_datasets_with_another_text_field(tmp_path: Path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_bytes(jsonl_bytes(DOCS[:2], field="content"))
    pq.write_table(pa.table({"content": DOCS[2:4], "text": ["wrong", "column"]}), tmp_path / "b.parquet")
    datasets.Dataset.from_dict({"content": DOCS[4:7]}).save_to_disk(str(tmp_path / "saved"))
    files = find_input_files([tmp_path / "a.jsonl", tmp_path / "b.parquet", tmp_path / "saved"])
    assert [d.text for d in iter_documents(files, text_field="content")] == DOCS
    found = find_input_files([tmp_path])  # a directory scan finds the saved dataset, not its .arrow files
    assert found == files
    assert [d.text for d in iter_documents(found, text_field="content")] == DOCS
    manifest = prepare([str(tmp_path / "saved")], str(tmp_path / "out"), seq_len=16, progress=False,
                       text_field="content")
    assert manifest["text_field"] == "content" and manifest["splits"]["train"]["documents"] == 3
    with pytest.raises(DataError, match='no "text" column.*--text-field'):
        list(iter_documents([tmp_path / "saved"]))
    with pytest.raises(DataError, match=r'a\.jsonl:1: no "text" field.*--text-field'):
        list(iter_documents([tmp_path / "a.jsonl"]))


def prepare_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "megadlm", "prepare", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("compression", [".gz", ".zst", ".xz"])
def test_a_truncated_compressed_file_is_one_error_naming_it_and_nothing_is_written(
        tmp_path: Path, compression: str) -> None:
    whole = COMPRESS[compression](jsonl_bytes(DOCS * 20))
    (tmp_path / f"cut.jsonl{compression}").write_bytes(whole[: len(whole) // 2])
    proc = prepare_cli("--input", f"cut.jsonl{compression}", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"cut.jsonl{compression}: cannot decompress it" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_refusals_name_the_input(tmp_path: Path) -> None:
    (tmp_path / "d.parquet.gz").write_bytes(gzip.compress(b"not really parquet"))
    with pytest.raises(DataError, match=r"d\.parquet\.gz: a compressed parquet file"):
        list(iter_documents(find_input_files([tmp_path / "d.parquet.gz"])))
    assert find_input_files([tmp_path]) == []  # and a directory scan does not pick it up
    with pytest.raises(DataError, match=r"pattern .*\*\.jsonl matches no file"):
        find_input_files([str(tmp_path / "*.jsonl")])
