"""Tokenizers for megadlm: a built-in byte tokenizer and HF `tokenizer.json` files.

Every tokenizer exposes the same small interface (`Tokenizer`): `encode` (no special tokens added),
`decode`, `vocab_size` (which always counts the [MASK] id the diffusion objective needs), `eos_id`,
`mask_id` and `identity()`, a dict recorded in the data manifest so that training and evaluation can
check they use exactly the tokenizer the shards were written with.

Only numpy and (for HF files) the `tokenizers` library are imported; never torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from megadlm.data.manifest import load_manifest
from megadlm.errors import DataError

EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "[SEP]", "<|end_of_text|>")
MASK_CANDIDATES = ("<|mask|>", "[MASK]", "<mask>")
TOKENIZER_FILENAME = "tokenizer.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    return sha256_bytes(Path(path).read_bytes())


class Tokenizer:
    """Base class: subclasses set the attributes below and implement `encode`/`decode`."""

    kind: str = "base"
    name: str = ""
    sha256: str = ""
    vocab_size: int = 0  # includes mask_id, i.e. the model's embedding size
    eos_id: int = -1
    mask_id: int = -1

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_array(self, text: str, dtype: Any = np.int64) -> np.ndarray:
        """`encode` as a numpy array (subclasses may have a faster path)."""
        return np.asarray(self.encode(text), dtype=dtype)

    def identity(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "sha256": self.sha256,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "mask_id": self.mask_id,
        }

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, "
                f"eos_id={self.eos_id}, mask_id={self.mask_id})")


class ByteTokenizer(Tokenizer):
    """ids 0..255 are UTF-8 bytes, 256 is `<|endoftext|>` (EOS), 257 is `<|mask|>`; needs no files."""

    EOS_TOKEN = "<|endoftext|>"
    MASK_TOKEN = "<|mask|>"
    # The sha256 identifies this id assignment; change the string (and the version) if it ever changes.
    DEFINITION = ("megadlm-bytes-v1: ids 0-255 = UTF-8 bytes; 256 = <|endoftext|> (eos); "
                  "257 = <|mask|> (mask); vocab_size 258")

    def __init__(self) -> None:
        self.kind = "bytes"
        self.name = "bytes"
        self.sha256 = sha256_bytes(self.DEFINITION.encode())
        self.eos_id = 256
        self.mask_id = 257
        self.vocab_size = 258

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str, dtype: Any = np.int64) -> np.ndarray:
        # frombuffer is ~100x faster than iterating over the bytes in Python.
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(dtype)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        specials = {self.eos_id: self.EOS_TOKEN, self.mask_id: self.MASK_TOKEN}
        parts: list[str] = []
        run = bytearray()
        for i in np.asarray(ids, dtype=np.int64).tolist():
            if 0 <= i < 256:
                run.append(i)
                continue
            # Flush the byte run first so multi-byte characters split by a special id still decode.
            parts.append(run.decode("utf-8", errors="replace"))
            run.clear()
            parts.append(specials.get(i, "\ufffd"))
        parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)


def _first_present(tok: Any, candidates: Sequence[str]) -> int | None:
    for name in candidates:
        tid = tok.token_to_id(name)
        if tid is not None:
            return int(tid)
    return None


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json` (any model type) loaded with the `tokenizers` library."""

    def __init__(self, path: str | Path, name: str | None = None) -> None:
        from tokenizers import Tokenizer as _HFTok

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"tokenizer file {self.path} does not exist: pass --tokenizer bytes, "
                            f"a path to a tokenizer.json (or a directory containing one), "
                            f"or --train-bpe VOCAB")
        raw = self.path.read_bytes()
        try:
            self._tok = _HFTok.from_str(raw.decode("utf-8"))
        except Exception as e:  # the Rust error type is not importable; any failure means a bad file
            raise DataError(f"cannot load tokenizer {self.path}: {e}. "
                            f"Is it a Hugging Face tokenizer.json?") from e
        self.kind = "hf"
        self.name = name or str(self.path)
        self.sha256 = sha256_bytes(raw)

        eos = _first_present(self._tok, EOS_CANDIDATES)
        if eos is None:
            raise DataError(f"tokenizer {self.path} has no end-of-text token (looked for "
                            f"{', '.join(EOS_CANDIDATES)}): add one of them as a special token")
        self.eos_id = eos
        # Ids may have gaps (e.g. cl100k), so the embedding must cover the largest id, not just the count.
        vocab = self._tok.get_vocab(with_added_tokens=True)
        size = max(self._tok.get_vocab_size(with_added_tokens=True), max(vocab.values(), default=-1) + 1)
        mask = _first_present(self._tok, MASK_CANDIDATES)
        # Without a mask token the model reserves one extra id right after the tokenizer's vocabulary.
        self.mask_reserved = mask is None
        self.mask_id = size if mask is None else mask
        self.vocab_size = size + 1 if mask is None else size

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # encode_batch runs in parallel inside the Rust library.
        return [list(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        ids = np.asarray(ids, dtype=np.int64).tolist()
        if not self.mask_reserved:
            return self._tok.decode(ids, skip_special_tokens=False)
        # The reserved mask id is unknown to the HF tokenizer: decode around it and show a placeholder.
        chunks: list[list[int]] = [[]]
        for i in ids:
            if i == self.mask_id:
                chunks.append([])
            else:
                chunks[-1].append(i)
        return MASK_CANDIDATES[0].join(self._tok.decode(c, skip_special_tokens=False) for c in chunks)


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """`"bytes"` or the path of a tokenizer.json (or of a directory that contains one)."""
    if str(spec) == "bytes":
        return ByteTokenizer()
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / TOKENIZER_FILENAME).is_file():
            raise DataError(f"directory {path} has no {TOKENIZER_FILENAME}: pass the tokenizer.json file "
                            f"itself, --tokenizer bytes, or --train-bpe VOCAB")
        path = path / TOKENIZER_FILENAME
    return HFTokenizer(path)


def train_bpe(texts: Iterable[str], vocab_size: int, out_path: str | Path) -> HFTokenizer:
    """Train a byte-level BPE (GPT-2 style) on `texts` and save it as a tokenizer.json at `out_path`."""
    from tokenizers import Tokenizer as _HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    specials = [EOS_CANDIDATES[0], MASK_CANDIDATES[0]]
    min_size = 256 + len(specials)
    if vocab_size < min_size:
        raise DataError(f"--train-bpe {vocab_size} is too small: a byte-level BPE needs at least {min_size} "
                        f"ids (256 bytes + {len(specials)} special tokens); try 4096 or 8192")
    tok = _HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_path))
    return HFTokenizer(out_path, name=f"bpe-{vocab_size}")


def tokenizer_from_manifest(data_dir: str | Path) -> Tokenizer:
    """The tokenizer a `megadlm prepare` directory was written with, verified against its manifest."""
    data_dir = Path(data_dir)
    info = load_manifest(data_dir).get("tokenizer") or {}
    if info.get("kind") == "bytes":
        tok: Tokenizer = ByteTokenizer()
    else:
        fname = info.get("file")
        path = data_dir / (fname or TOKENIZER_FILENAME)
        if not fname or not path.is_file():
            raise DataError(f"{data_dir} has no {TOKENIZER_FILENAME} although its manifest names an HF "
                            f"tokenizer ({info.get('name')}): re-run prepare")
        tok = HFTokenizer(path, name=info.get("name"))
    if tok.sha256 != info.get("sha256"):
        what = TOKENIZER_FILENAME if tok.kind != "bytes" else "the built-in byte tokenizer"
        raise DataError(f"{what} in {data_dir} does not match the manifest "
                        f"(sha {tok.sha256[:12]} != {str(info.get('sha256'))[:12]}): re-run prepare")
    return tok
