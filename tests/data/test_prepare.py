"""`prepare`: inputs → packed MDS shards + manifest, read back with streaming.LocalDataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from megadlm.data.manifest import FORMAT, load_manifest
from megadlm.data.prepare import SamplePacker, prepare, select_val_documents, token_dtype
from megadlm.data.tokenizer import ByteTokenizer, load_tokenizer, tokenizer_from_manifest

from .helpers import expected_samples, read_split, texts_of, token_stream

L = 64


def _check_split(out: Path, split: str, stream: np.ndarray, tmp_path: Path, seq_len: int = L) -> np.ndarray:
    """Assert the split's samples are exactly the packed `stream`, with idx = 0..n-1."""
    tokens, idx = read_split(out, split, tmp_path)
    want = expected_samples(stream, seq_len)
    assert tokens.shape == want.shape
    np.testing.assert_array_equal(tokens.astype(np.int64), want)
    np.testing.assert_array_equal(idx, np.arange(len(want)))
    return tokens


def test_txt_directory(pydoc_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    files = sorted(pydoc_dir.glob("*.txt"))
    manifest = prepare([str(pydoc_dir)], str(out), seq_len=L, progress=False)
    stream = token_stream(ByteTokenizer(), texts_of(files))
    tokens = _check_split(out, "train", stream, tmp_path)
    assert tokens.dtype == np.uint16

    assert load_manifest(out) == manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == FORMAT
    assert (manifest["seq_len"], manifest["sample_len"], manifest["dtype"]) == (L, L + 1, "uint16")
    assert manifest["tokenizer"] == {**ByteTokenizer().identity(), "file": None}
    assert (manifest["vocab_size"], manifest["eos_id"], manifest["mask_id"]) == (258, 256, 257)
    train = manifest["splits"]["train"]
    assert train["samples"] == len(tokens) == (len(stream) - 1) // L
    assert train["tokens"] == train["samples"] * L
    assert train["stream_tokens"] == len(stream)
    assert train["documents"] == len(files)
    assert train["bytes"] == sum(len(t.encode()) for t in texts_of(files))
    assert train["bytes_per_token"] == pytest.approx(train["bytes"] / len(stream), rel=1e-5)
    assert "val" not in manifest["splits"] and manifest["val_method"] == "none"
    assert not (out / "val").exists() and not (out / "tokenizer.json").exists()
    assert manifest["inputs"] == [str(f.absolute()) for f in files]
    assert manifest["megadlm_version"] and manifest["created"]
    assert (manifest["skip_bad_documents"], manifest["skipped_documents"], manifest["skipped_details"]) == \
        (False, 0, {})
    assert isinstance(tokenizer_from_manifest(out), ByteTokenizer)
    assert not list(tmp_path.glob("out.*"))  # no temp or old directories left beside it


def test_jsonl_json_and_md_inputs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    docs = [f"Document number {i}: " + "lorem ipsum dolor sit amet " * (i + 3) for i in range(6)]
    jsonl = [json.dumps({"text": d, "id": i}) for i, d in enumerate(docs[:3])]
    (src / "a.jsonl").write_text(jsonl[0] + "\n\n" + "\n".join(jsonl[1:]) + "\n")  # blank line skipped
    (src / "sub" / "b.json").write_text(json.dumps([{"text": docs[3]}, {"text": ""}, {"text": docs[4]}]))
    (src / "sub" / "c.md").write_text(docs[5])
    (src / "ignored.bin").write_bytes(b"\xff\xfe not text")  # unsupported suffix inside a directory
    (src / ".hidden.txt").write_text("never read")
    manifest = prepare([str(src)], str(tmp_path / "out"), seq_len=16, progress=False)
    _check_split(tmp_path / "out", "train", token_stream(ByteTokenizer(), docs), tmp_path, seq_len=16)
    assert manifest["splits"]["train"]["documents"] == 6


def test_parquet_input(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [f"parquet row {i} " * 20 for i in range(5)]
    table = pa.table({"id": list(range(6)), "text": [*docs[:2], None, *docs[2:]]})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=2)
    prepare([str(tmp_path / "d.parquet")], str(tmp_path / "out"), seq_len=32, progress=False)
    _check_split(tmp_path / "out", "train", token_stream(ByteTokenizer(), docs), tmp_path, seq_len=32)


def test_val_fraction_holds_out_whole_documents(pydoc_dir: Path, tmp_path: Path) -> None:
    files = sorted(pydoc_dir.glob("*.txt"))
    texts = texts_of(files)
    m = prepare([str(pydoc_dir)], str(tmp_path / "out"), seq_len=L, val_fraction=0.1, progress=False)
    val_ids = select_val_documents([len(t.encode()) for t in texts], 0.1)
    assert 1 <= len(val_ids) < len(files)
    tok = ByteTokenizer()
    _check_split(tmp_path / "out", "val", token_stream(tok, [texts[i] for i in sorted(val_ids)]), tmp_path)
    _check_split(tmp_path / "out", "train",
                 token_stream(tok, [t for i, t in enumerate(texts) if i not in val_ids]), tmp_path)
    train, val = m["splits"]["train"], m["splits"]["val"]
    assert train["documents"] + val["documents"] == len(files)
    assert 0.07 < val["bytes"] / (val["bytes"] + train["bytes"]) < 0.13
    assert m["val_method"] == "fraction"
    m2 = prepare([str(pydoc_dir)], str(tmp_path / "again"), seq_len=L, val_fraction=0.1, progress=False)
    assert m2["splits"] == m["splits"]  # deterministic


def test_val_fraction_single_document_splits_the_tail(tmp_path: Path) -> None:
    text = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(200))
    (tmp_path / "one.txt").write_text(text)
    m = prepare([str(tmp_path / "one.txt")], str(tmp_path / "out"), seq_len=L, val_fraction=0.25,
                progress=False)
    stream = token_stream(ByteTokenizer(), [text])
    n_val = round(0.25 * len(stream))
    _check_split(tmp_path / "out", "train", stream[:-n_val], tmp_path)
    _check_split(tmp_path / "out", "val", stream[-n_val:], tmp_path)
    assert m["val_method"] == "tail"
    assert m["splits"]["val"]["stream_tokens"] == n_val


def test_val_inputs_are_excluded_from_train(small_pydoc_dir: Path, tmp_path: Path) -> None:
    files = sorted(small_pydoc_dir.glob("*.txt"))
    held = files[3]
    m = prepare([str(small_pydoc_dir)], str(tmp_path / "out"), seq_len=L, val_inputs=[str(held)],
                progress=False)
    tok = ByteTokenizer()
    _check_split(tmp_path / "out", "val", token_stream(tok, texts_of([held])), tmp_path)
    _check_split(tmp_path / "out", "train", token_stream(tok, texts_of([f for f in files if f != held])),
                 tmp_path)
    assert m["splits"]["val"]["documents"] == 1 and m["val_method"] == "val_inputs"
    assert m["val_inputs"] == [str(held.absolute())]


def test_max_tokens_caps_train_stream(pydoc_dir: Path, tmp_path: Path) -> None:
    m = prepare([str(pydoc_dir)], str(tmp_path / "out"), seq_len=L, max_tokens=1000, progress=False)
    full = token_stream(ByteTokenizer(), texts_of(sorted(pydoc_dir.glob("*.txt"))))
    _check_split(tmp_path / "out", "train", full[:1000], tmp_path)
    assert m["splits"]["train"]["stream_tokens"] == 1000
    assert m["splits"]["train"]["samples"] == 999 // L


def test_train_bpe_and_tokenizer_from_manifest(small_pydoc_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    m = prepare([str(small_pydoc_dir)], str(out), train_bpe=512, seq_len=L, progress=False)
    tok = tokenizer_from_manifest(out)
    assert m["tokenizer"]["file"] == "tokenizer.json" and m["tokenizer"]["sha256"] == tok.sha256
    assert m["vocab_size"] == tok.vocab_size and m["mask_id"] == tok.mask_id
    stream = token_stream(tok, texts_of(sorted(small_pydoc_dir.glob("*.txt"))))
    _check_split(out, "train", stream, tmp_path)
    assert m["splits"]["train"]["bytes_per_token"] > 1.5  # BPE merges more than one byte per token


def test_hf_tokenizer_file_is_copied(small_pydoc_dir: Path, tmp_path: Path) -> None:
    first = prepare([str(small_pydoc_dir)], str(tmp_path / "a"), train_bpe=300, seq_len=L, progress=False)
    src = tmp_path / "mytok.json"
    src.write_bytes((tmp_path / "a" / "tokenizer.json").read_bytes())
    m = prepare([str(small_pydoc_dir)], str(tmp_path / "b"), tokenizer=str(src), seq_len=L, progress=False)
    assert (tmp_path / "b" / "tokenizer.json").read_bytes() == src.read_bytes()
    assert m["tokenizer"]["sha256"] == first["tokenizer"]["sha256"]
    assert m["splits"]["train"] == first["splits"]["train"]


def test_uint32_for_large_vocab(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(70_000)}
    vocab["<|endoftext|>"] = 70_000
    wl = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    wl.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    wl.save(str(tmp_path / "tokenizer.json"))
    words = [f"w{(i * 7919) % 70_000}" for i in range(300)]
    (tmp_path / "doc.txt").write_text(" ".join(words))
    m = prepare([str(tmp_path / "doc.txt")], str(tmp_path / "out"), tokenizer=str(tmp_path), seq_len=32,
                progress=False)
    assert m["dtype"] == "uint32" and m["mask_id"] == 70_001 and m["vocab_size"] == 70_002
    tok = load_tokenizer(str(tmp_path / "tokenizer.json"))
    tokens = _check_split(tmp_path / "out", "train", token_stream(tok, [" ".join(words)]), tmp_path, 32)
    assert tokens.dtype == np.uint32 and tokens.max() > 65_535


def test_token_dtype_boundary() -> None:
    assert token_dtype(258) == "uint16"
    assert token_dtype(65_536) == "uint16"  # ids 0..65535 fit
    assert token_dtype(65_537) == "uint32"


def test_sample_packer_overlaps_by_one_token() -> None:
    got: list[tuple[list[int], int]] = []
    packer = SamplePacker(4, "uint16", lambda t, i: got.append((t.tolist(), i)))
    for piece in ([0, 1], [2, 3, 4, 5, 6], [7], [8, 9, 10]):
        packer.add(np.array(piece))
    assert got == [([0, 1, 2, 3, 4], 0), ([4, 5, 6, 7, 8], 1)]
    assert packer.stream_tokens == 11 and packer.buf.tolist() == [8, 9, 10]


def test_select_val_documents() -> None:
    assert select_val_documents([10, 10, 10], 0.0) == set()
    assert select_val_documents([100], 0.5) == set()
    assert len(select_val_documents([1, 1], 0.9)) == 1  # one document always stays in train
    sizes = [100] * 100
    chosen = select_val_documents(sizes, 0.2)
    assert len(chosen) == 20 and chosen == select_val_documents(sizes, 0.2)
    assert select_val_documents([5, 1000, 5, 5], 0.01)  # at least one document even if it overshoots


def test_max_tokens_does_not_cap_val(pydoc_dir: Path, tmp_path: Path) -> None:
    capped = prepare(str(pydoc_dir), str(tmp_path / "a"), seq_len=L, max_tokens=2000, val_fraction=0.1,
                     progress=False)  # a single path (not a list) is accepted too
    full = prepare([str(pydoc_dir)], str(tmp_path / "b"), seq_len=L, val_fraction=0.1, progress=False)
    assert capped["splits"]["train"]["stream_tokens"] == 2000
    assert capped["splits"]["val"] == full["splits"]["val"]


def test_max_tokens_with_single_document_tail(tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text("abcdefghij" * 100)
    m = prepare([str(tmp_path / "one.txt")], str(tmp_path / "out"), seq_len=8, val_fraction=0.5,
                max_tokens=100, progress=False)
    assert m["splits"]["train"]["stream_tokens"] == 100 and m["splits"]["val"]["stream_tokens"] == 500
