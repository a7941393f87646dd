"""Tokenizing documents for `megadlm prepare`, in this process or in `--workers N` processes.

Only encoding moves to the workers. Reading, the train/val routing, packing and writing stay in the
main process, in input order, and results come back in the order they were submitted. So the output
is the same for any number of workers by construction: the same function encodes the same documents,
and they are packed in the same order.

Each worker loads the tokenizer once and uses one thread (`TOKENIZERS_PARALLELISM=false`), so N
workers use about N cores. With one worker (the default) encoding stays in this process, where the
tokenizers library may use several threads of its own. Workers are spawned, not forked: forking a
process whose Rust thread pool has already run can deadlock it.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

import numpy as np

from megadlm.data.tokenizer import Tokenizer, load_tokenizer

T = TypeVar("T")
ENCODE_BATCH_DOCS = 64  # documents per encode_batch call: enough for the Rust side to parallelise
TASK_CHARS = 1 << 18  # a worker's task also ends after this much text (256 Ki characters)
TASKS_IN_FLIGHT_PER_WORKER = 2  # keeps every worker busy while bounding memory held in results

_worker_tokenizer: Tokenizer | None = None
_worker_dtype: str = "int64"


def encode_documents(tok: Tokenizer, texts: Sequence[str], dtype: str) -> list[np.ndarray]:
    """Each text's ids followed by EOS, as a `dtype` array: what packing consumes."""
    return [np.asarray([*ids, tok.eos_id], dtype=dtype) for ids in tok.encode_batch(list(texts))]


def _batches(items: Iterable[T], text_of: Callable[[T], str], max_docs: int,
             max_chars: int | None) -> Iterator[list[T]]:
    batch: list[T] = []
    chars = 0
    for item in items:
        batch.append(item)
        chars += len(text_of(item))
        if len(batch) == max_docs or (max_chars is not None and chars >= max_chars):
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _start_worker(tokenizer_spec: str, dtype: str) -> None:
    global _worker_tokenizer, _worker_dtype
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: N workers, N cores
    _worker_tokenizer = load_tokenizer(tokenizer_spec)
    _worker_dtype = dtype


def _encode_in_worker(texts: list[str]) -> list[np.ndarray]:
    assert _worker_tokenizer is not None, "worker started without a tokenizer"
    return encode_documents(_worker_tokenizer, texts, _worker_dtype)


class EncodePool:
    """Encodes items (each with a text) in the order given, here or in worker processes."""

    def __init__(self, tok: Tokenizer, tokenizer_spec: str, dtype: str, workers: int = 1) -> None:
        self.tok, self.dtype, self.workers = tok, dtype, workers
        self._executor: ProcessPoolExecutor | None = None
        if workers > 1:
            self._executor = ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker, initargs=(tokenizer_spec, dtype))

    def encode_in_order(self, items: Iterable[T],
                        text_of: Callable[[T], str]) -> Iterator[tuple[T, np.ndarray]]:
        """(item, its ids followed by EOS) for each item, in the order given."""
        # Here, whole batches go to the tokenizers library, which parallelises within one. For workers,
        # a task also ends at TASK_CHARS, so that a few long documents still spread over all of them.
        task_chars = None if self._executor is None else TASK_CHARS
        batches = _batches(items, text_of, ENCODE_BATCH_DOCS, task_chars)
        if self._executor is None:
            for batch in batches:
                yield from zip(batch, encode_documents(self.tok, [text_of(i) for i in batch], self.dtype))
            return
        pending: deque[tuple[list[T], Future[list[np.ndarray]]]] = deque()
        window = self.workers * TASKS_IN_FLIGHT_PER_WORKER
        for batch in batches:
            pending.append((batch, self._executor.submit(_encode_in_worker, [text_of(i) for i in batch])))
            if len(pending) >= window:
                done, future = pending.popleft()
                yield from zip(done, future.result())
        while pending:
            done, future = pending.popleft()
            yield from zip(done, future.result())

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> EncodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
