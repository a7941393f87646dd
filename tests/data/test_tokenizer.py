"""Tokenizers: byte tokenizer, HF tokenizer.json loading (EOS/MASK discovery), BPE training."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from megadlm.data.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer, train_bpe
from megadlm.errors import DataError

UNICODE = "Héllo wörld — naïve café, 日本語テキスト, emoji 🙂🚀, math ∑∫√, tabs\tand\nnewlines"


def _train_raw(texts: list[str], specials: list[str], path: Path, vocab: int = 300) -> Path:
    """A byte-level BPE tokenizer.json with exactly `specials`, built directly with `tokenizers`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory, small_pydoc_dir: Path) -> HFTokenizer:
    texts = [f.read_text() for f in sorted(small_pydoc_dir.glob("*.txt"))]
    return train_bpe(iter(texts), 600, tmp_path_factory.mktemp("bpe") / "tok" / "tokenizer.json")


# --- ByteTokenizer ------------------------------------------------------------------------------


def test_byte_tokenizer_ids_and_round_trip() -> None:
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.eos_id, tok.mask_id) == (258, 256, 257)
    ids = tok.encode(UNICODE)
    assert ids == list(UNICODE.encode("utf-8"))
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == UNICODE
    assert tok.encode("") == []
    assert tok.encode_batch(["a", "é"]) == [[97], [0xC3, 0xA9]]
    assert tok.encode_array("ab").tolist() == [97, 98]


def test_byte_tokenizer_decodes_specials_and_bad_bytes() -> None:
    tok = ByteTokenizer()
    assert tok.decode([104, 105, 256, 257, 33]) == "hi<|endoftext|><|mask|>!"
    # A multi-byte character cut in half decodes with the replacement character instead of raising.
    assert tok.decode(list("é".encode())[:1]) == "\ufffd"


def test_byte_tokenizer_identity_is_stable() -> None:
    ident = ByteTokenizer().identity()
    assert ident == {
        "kind": "bytes", "name": "bytes",
        "sha256": hashlib.sha256(ByteTokenizer.DEFINITION.encode()).hexdigest(),
        "vocab_size": 258, "eos_id": 256, "mask_id": 257,
    }
    assert ByteTokenizer().identity() == ident


# --- train_bpe / HFTokenizer ----------------------------------------------------------------------


def test_train_bpe_writes_loadable_tokenizer(bpe: HFTokenizer) -> None:
    assert bpe.path.is_file()
    assert bpe.eos_id == 0 and bpe.mask_id == 1  # the two special tokens come first
    assert 258 < bpe.vocab_size <= 600
    assert not bpe.mask_reserved
    reloaded = load_tokenizer(bpe.path)
    assert reloaded.identity()["sha256"] == hashlib.sha256(bpe.path.read_bytes()).hexdigest()
    assert reloaded.vocab_size == bpe.vocab_size
    text = "The for statement iterates over a sequence. " + UNICODE
    ids = bpe.encode(text)
    assert len(ids) < len(text.encode())  # merges were learned
    assert bpe.decode(ids) == text
    assert bpe.encode_batch([text, "x"]) == [ids, bpe.encode("x")]
    assert bpe.decode([*bpe.encode("ab"), bpe.eos_id]) == "ab<|endoftext|>"


def test_load_tokenizer_accepts_directory(bpe: HFTokenizer) -> None:
    tok = load_tokenizer(str(bpe.path.parent))
    assert isinstance(tok, HFTokenizer) and tok.sha256 == bpe.sha256
    assert isinstance(load_tokenizer("bytes"), ByteTokenizer)


def test_train_bpe_rejects_tiny_vocab(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"--train-bpe 100 is too small.*at least 258"):
        train_bpe(["hello"], 100, tmp_path / "tokenizer.json")


def test_mask_id_reserved_when_tokenizer_has_none(tmp_path: Path) -> None:
    path = _train_raw(["hello world, hello tokenizer"] * 20, ["</s>"], tmp_path / "tokenizer.json")
    tok = HFTokenizer(path)
    size = tok._tok.get_vocab_size(with_added_tokens=True)
    assert tok.eos_id == tok._tok.token_to_id("</s>")
    assert tok.mask_reserved
    assert tok.mask_id == size and tok.vocab_size == size + 1
    ids = tok.encode("hello world")
    assert tok.decode([*ids, tok.mask_id, *ids]) == "hello world<|mask|>hello world"


def test_eos_and_mask_discovery_order(tmp_path: Path) -> None:
    path = _train_raw(["some text"] * 5, ["[SEP]", "<|endoftext|>", "[MASK]"], tmp_path / "t.json")
    tok = HFTokenizer(path)
    assert tok.eos_id == tok._tok.token_to_id("<|endoftext|>")  # preferred over [SEP]
    assert tok.mask_id == tok._tok.token_to_id("[MASK]") and not tok.mask_reserved


def test_tokenizer_without_eos_is_rejected(tmp_path: Path) -> None:
    path = _train_raw(["some text"] * 5, ["<pad>"], tmp_path / "tokenizer.json")
    with pytest.raises(DataError, match=r"has no end-of-text token.*add one of them"):
        HFTokenizer(path)


def test_missing_tokenizer_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(DataError, match=rf"tokenizer file {missing} does not exist"):
        load_tokenizer(str(missing))
    with pytest.raises(DataError, match=rf"directory {tmp_path} has no tokenizer.json"):
        load_tokenizer(str(tmp_path))


def test_corrupt_tokenizer_file(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"cannot load tokenizer .*tokenizer.json"):
        load_tokenizer(str(bad))
