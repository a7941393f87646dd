"""Undecodable documents (bytes that are not UTF-8, lone surrogate escapes) in every input format, through
the real `megadlm prepare` CLI: a one-line error naming the file and line/record/row, or, with
--skip-bad-documents, the rest prepared and the skipped ones counted."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import run_cli

GOOD = [f"Document {i}: the quick brown fox jumps over the lazy dog. " * 4 for i in range(8)]


def _jsonl(*records: bytes) -> bytes:
    return b"\n".join(records) + b"\n"


def _record(text: str) -> bytes:
    return json.dumps({"text": text}).encode()


def _write_parquet(path: Path, texts: list[bytes], as_string: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = pa.array(texts, type=pa.binary())
    # pa.array refuses bad bytes in a string column, but other writers do not check: viewing a binary
    # column as strings writes the same file such a writer would.
    pq.write_table(pa.table({"text": column.view(pa.string()) if as_string else column}), path)


def txt_with_bad_line(d: Path) -> tuple[Path, str, list[str]]:
    """A text file is one document; its bad byte is on line 3. (path, location, good documents)."""
    path = d / "latin1.txt"
    path.write_bytes(b"first line\nsecond line\nthird caf\xe9 line\n")
    return path, "line 3", []


def jsonl_with_bad_line(d: Path) -> tuple[Path, str, list[str]]:
    path = d / "web.jsonl"
    path.write_bytes(_jsonl(_record(GOOD[0]), b'{"text": "bad \xc3( bytes"}', _record(GOOD[1])))
    return path, "line 2", [GOOD[0], GOOD[1]]


def jsonl_with_lone_surrogate(d: Path) -> tuple[Path, str, list[str]]:
    """Valid bytes, but a `\\ud83d` escape without its pair: the text cannot be encoded as UTF-8."""
    path = d / "escaped.jsonl"
    path.write_bytes(_jsonl(_record(GOOD[2]), b'{"text": "half an emoji \\ud83d"}'))
    return path, "line 2", [GOOD[2]]


def json_with_bad_record(d: Path) -> tuple[Path, str, list[str]]:
    path = d / "records.json"
    path.write_bytes(b"[" + _record(GOOD[3]) + b', {"text": "caf\xe9"}]')
    return path, "record 1", [GOOD[3]]


def parquet_binary_with_bad_row(d: Path) -> tuple[Path, str, list[str]]:
    path = d / "binary.parquet"
    _write_parquet(path, [GOOD[4].encode(), GOOD[5].encode(), b"\xfe\xff bad"], as_string=False)
    return path, "row 2", [GOOD[4], GOOD[5]]


def parquet_string_with_bad_row(d: Path) -> tuple[Path, str, list[str]]:
    path = d / "strings.parquet"
    _write_parquet(path, [b"bad \x80", GOOD[6].encode()], as_string=True)
    return path, "row 0", [GOOD[6]]


MakeFile = Callable[[Path], tuple[Path, str, list[str]]]  # writes a file: (path, bad location, good texts)
CASES: list[MakeFile] = [
    txt_with_bad_line, jsonl_with_bad_line, jsonl_with_lone_surrogate, json_with_bad_record,
    parquet_binary_with_bad_row, parquet_string_with_bad_row]


def _prepare(*args: str) -> tuple[int, list[str], list[str]]:
    proc = run_cli("prepare", *args, "--seq-len", "16", "--no-progress", check=False, timeout=120)
    return proc.returncode, proc.stdout.strip().splitlines(), proc.stderr.strip().splitlines()


@pytest.mark.parametrize("make", CASES, ids=[c.__name__ for c in CASES])
def test_undecodable_document_is_a_one_line_error(tmp_path: Path, make: MakeFile) -> None:
    path, location, _ = make(tmp_path)
    out = tmp_path / "out"
    rc, _, err = _prepare("--input", str(path), "--out", str(out))
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("megadlm prepare: error: "), err
    assert f"{path} {location}: undecodable text" in err[0] and "--skip-bad-documents" in err[0], err
    assert not out.exists() and not list(tmp_path.glob("out.*"))  # nothing written, nothing left over


def test_skip_bad_documents_prepares_the_rest_and_counts_them(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    made = [make(corpus) for make in CASES]
    many = corpus / "many_bad.jsonl"  # more bad lines than the manifest keeps examples of
    many.write_bytes(_jsonl(*(b'{"text": "x\xff"}' for _ in range(5)), _record(GOOD[7])))
    val = tmp_path / "val.jsonl"
    val.write_bytes(_jsonl(_record(GOOD[0] + GOOD[1]), b'{"text": "\xffval"}'))
    out = tmp_path / "out"

    rc, lines, err = _prepare("--input", str(corpus), "--val-input", str(val), "--out", str(out),
                              "--skip-bad-documents")
    assert rc == 0, err
    assert lines[0].startswith(f"wrote {out}") and "skipped 12 undecodable documents" in lines[0], lines
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skip_bad_documents"] is True and manifest["skipped_documents"] == 12
    details = manifest["skipped_details"]
    for path, location, _ in made:
        assert details[str(path.absolute())]["documents"] == 1
        assert details[str(path.absolute())]["examples"][0].startswith(f"{location}: ")
    assert details[str(many.absolute())]["documents"] == 5
    assert details[str(many.absolute())]["examples"] == [
        f"line {i}: cannot decode byte 0xff at character 1 of the text" for i in (1, 2, 3)]
    assert details[str(val.absolute())] == {
        "documents": 1, "examples": ["line 2: cannot decode byte 0xff at character 0 of the text"]}

    # Byte tokenizer: a split holds exactly the bytes of the good documents, plus one EOS each.
    good_train = [t for *_, good in made for t in good] + [GOOD[7]]
    train, held_out = manifest["splits"]["train"], manifest["splits"]["val"]
    assert train["documents"] == len(good_train) == 8
    assert train["bytes"] == sum(len(t.encode()) for t in good_train)
    assert train["stream_tokens"] == train["bytes"] + len(good_train)
    assert (held_out["documents"], held_out["bytes"]) == (1, len((GOOD[0] + GOOD[1]).encode()))


def test_corpus_of_only_bad_documents_says_they_were_skipped(tmp_path: Path) -> None:
    path = tmp_path / "all_bad.jsonl"
    path.write_bytes(_jsonl(b'{"text": "\xff"}', b'{"text": "\xfe"}'))
    rc, _, err = _prepare("--input", str(path), "--out", str(tmp_path / "out"), "--skip-bad-documents")
    assert rc == 2 and len(err) == 1, err
    assert "empty corpus" in err[0] and "2 undecodable documents were skipped" in err[0], err
    assert not (tmp_path / "out").exists()
