"""`megadlm prepare`: text files → tokenized, packed MDS shards plus a manifest.

Layout of the output directory:
    manifest.json      format, seq_len, dtype, tokenizer identity, per-split counts
    tokenizer.json     only for HF / trained tokenizers (the byte tokenizer needs no file)
    train/, val/       mosaicml-streaming MDS shards: {"tokens": ndarray[dtype, seq_len+1], "idx": int64}

Each document is tokenized, followed by EOS, and the documents of a split are concatenated into one
stream. Sample i is stream[i*L : i*L + L + 1] (L = seq_len): consecutive samples overlap by one token, so
the AR objective (inputs x[:-1], targets x[1:]) and the MDM objective (x[:-1] or x[1:]) each see every
token of the stream exactly once. The incomplete tail is dropped.

Inputs are read in three streaming passes (sizes → optional BPE training → tokenize+write), so memory
stays bounded by the largest document rather than the corpus. Output is written to a temporary sibling
directory and renamed into place at the end: a failure never leaves a half-written `out`. With
`workers` > 1 only the encoding runs in other processes (encode_pool.py); everything that decides the
output stays here, in input order, so it is identical for any number of workers.

An undecodable document (bytes that are not UTF-8) stops prepare in the first pass, before anything is
written, with the file and line/record/row; with `skip_bad_documents` it is left out of every pass and
counted in the manifest ("skipped_documents", "skipped_details"). The manifest format is in manifest.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from megadlm.data.encode_pool import EncodePool
from megadlm.data.inputs import (
    COMPRESSIONS,
    SUPPORTED_SUFFIXES,
    Document,
    SkippedDocuments,
    find_input_files,
    iter_documents,
)

# FORMAT and load_manifest are re-exported: the trainer, preflight, the CLI and the demo import them here.
from megadlm.data.manifest import FORMAT, MANIFEST, build_manifest, load_manifest  # noqa: F401
from megadlm.data.streaming_import import defer_streaming_package_init
from megadlm.data.tokenizer import TOKENIZER_FILENAME, Tokenizer, load_tokenizer
from megadlm.data.tokenizer import train_bpe as _train_bpe
from megadlm.errors import DataError

ReadDocuments = Callable[[Sequence[Path]], Iterator[Document]]
MDS_KWARGS: dict[str, Any] = {"compression": "zstd", "hashes": ["sha1", "xxh64"], "size_limit": "8mb"}


# ----------------------------------------------------------------------------------------------------
# Splitting and packing


def token_dtype(vocab_size: int) -> str:
    """The smallest unsigned dtype that holds every id (including the mask id)."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def select_val_documents(sizes: Sequence[int], fraction: float) -> set[int]:
    """Whole documents totalling ≈ `fraction` of the bytes (hence of the tokens), chosen deterministically.

    Documents are visited in the order of a stable hash of their index (not Python's salted hash), so the
    same corpus always gives the same split. At least one document goes to val and at least one stays in
    train.
    """
    n = len(sizes)
    if fraction <= 0 or n < 2:
        return set()
    order = sorted(range(n), key=lambda i: hashlib.sha1(str(i).encode()).digest())
    target = fraction * sum(sizes)
    chosen: set[int] = set()
    acc = 0
    for i in order:
        if acc >= target or len(chosen) == n - 1:
            break
        # Take a document only if it brings the total closer to the target (skip ones that overshoot).
        if not chosen or abs(acc + sizes[i] - target) < abs(acc - target):
            chosen.add(i)
            acc += sizes[i]
    return chosen


class SamplePacker:
    """Packs a token stream into (seq_len + 1)-token samples with stride seq_len; `emit(tokens, idx)`."""

    def __init__(self, seq_len: int, dtype: str, emit: Callable[[np.ndarray, int], None]) -> None:
        self.seq_len = seq_len
        self.dtype = np.dtype(dtype)
        self.emit = emit
        self.buf = np.zeros(0, dtype=self.dtype)
        self.samples = 0
        self.stream_tokens = 0

    def add(self, tokens: np.ndarray) -> None:
        L = self.seq_len
        self.stream_tokens += len(tokens)
        buf = np.concatenate([self.buf, np.asarray(tokens).astype(self.dtype, copy=False)])
        n = (len(buf) - 1) // L if len(buf) > L else 0
        for k in range(n):
            self.emit(buf[k * L:k * L + L + 1], self.samples)
            self.samples += 1
        # Keep the last token of the final sample: it starts the next one (one-token overlap).
        self.buf = buf[n * L:].copy()


@dataclass
class SplitStats:
    documents: int = 0
    bytes: int = 0
    encoded_tokens: int = 0  # tokens (with EOS) of the documents used, before any max_tokens cut

    def record(self, samples: int, seq_len: int, stream_tokens: int) -> dict[str, Any]:
        return {
            "samples": samples,
            "tokens": samples * seq_len,
            "stream_tokens": stream_tokens,
            "documents": self.documents,
            "bytes": self.bytes,
            "bytes_per_token": round(self.bytes / self.encoded_tokens, 6) if self.encoded_tokens else None,
        }


# ----------------------------------------------------------------------------------------------------
# Output directory safety


def _check_out(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"--out {out} exists and is not a directory: choose another --out")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise DataError(f"--out {out} already exists; pass --overwrite or choose another --out")
    if not (out / MANIFEST).is_file():
        # --overwrite deletes the directory: only ever do that to a previous prepare output.
        raise DataError(f"--out {out} is not empty and has no {MANIFEST}, so it was not written by "
                        f"`megadlm prepare`; refusing to delete it: choose another --out")


def _install(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished `tmp` to `out`; an old `out` is removed only after the new one is in place."""
    _check_out(out, overwrite)  # again: something may have appeared there while we were working
    if out.exists() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        tmp.rename(out)
        return
    old = Path(f"{out}.old-{os.getpid()}")
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------
# The pipeline


def _check_args(inputs: Sequence[str], seq_len: int, val_fraction: float, val_inputs: Sequence[str],
                max_tokens: int | None, tokenizer: str, train_bpe: int | None, workers: int) -> None:
    if not inputs:
        raise DataError("no --input given: pass at least one text/JSONL/parquet file or directory")
    if seq_len < 1:
        raise DataError(f"--seq-len must be at least 1, got {seq_len}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if val_fraction > 0 and val_inputs:
        raise DataError("pass either --val-fraction or --val-input, not both")
    if max_tokens is not None and max_tokens < 1:
        raise DataError(f"--max-tokens must be positive, got {max_tokens}")
    if train_bpe is not None and tokenizer != "bytes":
        raise DataError("pass either --tokenizer PATH or --train-bpe VOCAB, not both")
    if workers < 1:
        raise DataError(f"--workers must be at least 1, got {workers}")


def _make_tokenizer(spec: str, bpe_vocab: int | None, tmp: Path,
                    texts: Callable[[], Iterator[str]]) -> tuple[Tokenizer, str | None]:
    """The tokenizer and the name of its file inside the output directory (None for bytes)."""
    if bpe_vocab is not None:
        return _train_bpe(texts(), bpe_vocab, tmp / TOKENIZER_FILENAME), TOKENIZER_FILENAME
    tok = load_tokenizer(spec)
    if tok.kind == "bytes":
        return tok, None
    shutil.copyfile(tok.path, tmp / TOKENIZER_FILENAME)  # type: ignore[attr-defined]
    return tok, TOKENIZER_FILENAME


class PrepareProgress:
    """The bar of the tokenize-and-write pass: input bytes (its total is known from pass 1) with their
    rate, and tokens written with theirs. Drawn only on a terminal unless given a `file`."""

    POSTFIX_EVERY_S = 0.5  # tqdm redraws a postfix on every call; a few times a second is enough

    def __init__(self, total_bytes: int, enabled: bool, file: TextIO | None = None) -> None:
        from tqdm import tqdm

        shown = enabled and (file is not None or sys.stderr.isatty())
        self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="prepare",
                        disable=not shown, file=file, dynamic_ncols=True)
        self.tokens = 0
        self.started = time.perf_counter()
        self._postfix_at = self.started

    def update(self, nbytes: int, ntokens: int) -> None:
        self.tokens += ntokens
        self.bar.update(nbytes)
        now = time.perf_counter()
        if now - self._postfix_at >= self.POSTFIX_EVERY_S:
            self._postfix_at = now
            self.bar.set_postfix_str(f"{self.tokens:,} tokens, {self.tokens_per_s():,.0f} tokens/s")

    def tokens_per_s(self) -> float:
        return self.tokens / max(time.perf_counter() - self.started, 1e-9)

    def __enter__(self) -> PrepareProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.set_postfix_str(f"{self.tokens:,} tokens, {self.tokens_per_s():,.0f} tokens/s",
                                 refresh=False)
        self.bar.close()


def _write_splits(tok: Tokenizer, tmp: Path, seq_len: int, dtype: str, read: ReadDocuments,
                  train_files: list[Path], val_files: list[Path], val_ids: set[int], tail_fraction: float,
                  want_val: bool, max_tokens: int | None, total_bytes: int,
                  progress: bool, workers: int) -> dict[str, dict[str, Any]]:
    defer_streaming_package_init()
    from streaming.base.format import MDSWriter

    columns = {"tokens": f"ndarray:{dtype}:{seq_len + 1}", "idx": "int64"}
    splits = ["train", "val"] if want_val else ["train"]
    stats = {s: SplitStats() for s in splits}
    with ExitStack() as stack:
        writers = {s: stack.enter_context(MDSWriter(out=str(tmp / s), columns=columns, **MDS_KWARGS))
                   for s in splits}
        packers = {s: SamplePacker(seq_len, dtype,
                                   lambda t, i, w=writers[s]: w.write({"tokens": t, "idx": i}))
                   for s in splits}
        last_val = max(val_ids, default=-1)

        def capped() -> bool:
            return max_tokens is not None and packers["train"].stream_tokens >= max_tokens

        def routed() -> Iterator[tuple[str, Document]]:
            for i, doc in enumerate(read(train_files)):
                if i in val_ids:
                    yield "val", doc
                elif not capped():  # stop tokenizing train documents once the cap is reached
                    yield "train", doc
                elif i > last_val:
                    break  # capped, and no held-out document left among the train inputs
            for doc in read(val_files):
                yield "val", doc

        bar = stack.enter_context(PrepareProgress(total_bytes, progress))
        spec = "bytes" if tok.kind == "bytes" else str(tok.path)  # type: ignore[attr-defined]
        pool = stack.enter_context(EncodePool(tok, spec, dtype, workers))
        for (split, doc), tokens in pool.encode_in_order(routed(), text_of=lambda item: item[1].text):
            nbytes = len(doc.text.encode("utf-8"))  # tokens end with EOS
            if tail_fraction > 0:  # single document: its last tokens become val
                _add_tail_split(tokens, nbytes, tail_fraction, packers, stats, max_tokens)
            else:
                _add_doc(split, tokens, nbytes, packers[split], stats[split], max_tokens)
            bar.update(nbytes, len(tokens))
    return {s: stats[s].record(packers[s].samples, seq_len, packers[s].stream_tokens) for s in splits}


def _add_doc(split: str, tokens: np.ndarray, nbytes: int, packer: SamplePacker, st: SplitStats,
             max_tokens: int | None) -> None:
    full = len(tokens)
    if split == "train" and max_tokens is not None:
        tokens = tokens[:max(0, max_tokens - packer.stream_tokens)]
        if len(tokens) == 0:
            return
    st.documents += 1
    st.bytes += nbytes
    # The full token count (not the capped one) pairs with the full byte count for bytes_per_token.
    st.encoded_tokens += full
    packer.add(tokens)


def _add_tail_split(tokens: np.ndarray, nbytes: int, fraction: float, packers: dict[str, SamplePacker],
                    stats: dict[str, SplitStats], max_tokens: int | None) -> None:
    n_val = min(len(tokens) - 1, max(1, round(fraction * len(tokens))))
    cut = len(tokens) - n_val
    for split, part in (("train", tokens[:cut]), ("val", tokens[cut:])):
        st = stats[split]
        st.documents += 1
        # Bytes are apportioned by token share: exact for bytes, close for BPE.
        st.bytes += round(nbytes * len(part) / len(tokens))
        st.encoded_tokens += len(part)
        packers[split].add(part[:max_tokens] if split == "train" else part)


def _check_counts(splits: dict[str, dict[str, Any]], seq_len: int, max_tokens: int | None) -> None:
    need = seq_len + 1
    train = splits["train"]
    if train["samples"] == 0:
        hint = f" (capped by --max-tokens {max_tokens})" if max_tokens is not None else ""
        raise DataError(f"corpus too small for --seq-len {seq_len}: found {train['stream_tokens']} train "
                        f"tokens{hint}, need at least {need}; use a smaller --seq-len or more input")
    val = splits.get("val")
    if val is not None and val["samples"] == 0:
        raise DataError(f"val split too small for --seq-len {seq_len}: "
                        f"found {val['stream_tokens']} val tokens, "
                        f"need at least {need}; raise --val-fraction, add --val-input text, or use a smaller "
                        f"--seq-len")


def _skip_note(skipped: SkippedDocuments) -> str:
    """For an empty-corpus error: say that documents were skipped, if they were."""
    if not skipped.total:
        return ""
    return f"; {skipped.total} undecodable documents were skipped (--skip-bad-documents)"


def prepare(inputs: Sequence[str], out: str, tokenizer: str = "bytes", seq_len: int = 128,
            val_fraction: float = 0.0, val_inputs: Sequence[str] = (), max_tokens: int | None = None,
            train_bpe: int | None = None, progress: bool = True, overwrite: bool = False,
            skip_bad_documents: bool = False, text_field: str = "text", workers: int = 1) -> dict[str, Any]:
    """Tokenize and pack `inputs` into MDS shards under `out`; returns the manifest (see module doc).

    `skip_bad_documents`: leave out (and count) undecodable documents instead of stopping at the first.
    `text_field`: the JSON field / parquet or dataset column that holds each document's text.
    `workers`: tokenizing processes (encode_pool.py); the output is the same for any number.
    """
    started = time.perf_counter()
    # A lone path would otherwise be iterated character by character.
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    val_inputs = [val_inputs] if isinstance(val_inputs, (str, Path)) else list(val_inputs)
    _check_args(inputs, seq_len, val_fraction, val_inputs, max_tokens, tokenizer, train_bpe, workers)
    out_path = Path(out).expanduser().absolute()
    _check_out(out_path, overwrite)
    tmp = Path(f"{out_path}.tmp-{os.getpid()}")
    val_files = find_input_files(val_inputs, exclude=[out_path, tmp])
    # `--input dir --val-input dir/held_out.txt` is natural: a val file is never also a train file.
    held_out = {f.resolve() for f in val_files}
    train_files = [f for f in find_input_files(inputs, exclude=[out_path, tmp])
                   if f.resolve() not in held_out]

    # Pass 1: document sizes decide the split before tokenizing, which also keeps held-out documents
    # out of BPE training. Undecodable documents are found (and counted, when skipped) here, so an
    # error comes before anything is written; the later passes skip the same documents uncounted.
    skipped = SkippedDocuments()
    sizes = [len(d.text.encode("utf-8"))
             for d in iter_documents(train_files, skip_bad_documents, skipped.add, text_field)]
    if not sizes:
        raise DataError(f"empty corpus: no non-empty documents in {', '.join(map(str, inputs))} "
                        f"(supported in directories: {', '.join(SUPPORTED_SUFFIXES)}, text and JSON also "
                        f"compressed as {', '.join(COMPRESSIONS)}){_skip_note(skipped)}")
    val_sizes = [len(d.text.encode("utf-8"))
                 for d in iter_documents(val_files, skip_bad_documents, skipped.add, text_field)]
    if val_files and not val_sizes:
        raise DataError(f"no non-empty documents in --val-input {', '.join(map(str, val_inputs))}"
                        f"{_skip_note(skipped)}")
    read: ReadDocuments = partial(iter_documents, skip_bad=skip_bad_documents, text_field=text_field)
    val_ids = select_val_documents(sizes, val_fraction)
    tail_fraction = val_fraction if (val_fraction > 0 and len(sizes) == 1) else 0.0
    want_val = bool(val_files) or val_fraction > 0
    val_method = "val_inputs" if val_files else "tail" if tail_fraction else "fraction" if val_ids else "none"

    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        train_texts = lambda: (d.text for i, d in enumerate(read(train_files))  # noqa: E731
                               if i not in val_ids)
        tok, tok_file = _make_tokenizer(tokenizer, train_bpe, tmp, train_texts)
        dtype = token_dtype(tok.vocab_size)
        splits = _write_splits(tok, tmp, seq_len, dtype, read, train_files, val_files, val_ids,
                               tail_fraction, want_val, max_tokens, sum(sizes) + sum(val_sizes), progress,
                               workers)
        _check_counts(splits, seq_len, max_tokens)
        manifest = build_manifest(
            tok=tok, tok_file=tok_file, seq_len=seq_len, dtype=dtype, splits=splits, train_files=train_files,
            val_files=val_files, val_method=val_method, val_fraction=val_fraction, max_tokens=max_tokens,
            skip_bad_documents=skip_bad_documents, skipped_documents=skipped.total, text_field=text_field,
            skipped_details=skipped.details())
        manifest["prepare_seconds"] = round(time.perf_counter() - started, 3)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _install(tmp, out_path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
