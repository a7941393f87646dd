"""Files that readers see whole or not at all: the one way megadlm writes its records.

Results, manifests, `latest`, the verified-shards record, sweep scripts and exit codes are read by
other processes while they may be rewritten (a rank, a Slurm job, `megadlm status` on a login node),
so each is written to a temporary file in the same directory and renamed over the target: a POSIX
rename within one filesystem is atomic. The temporary name is unique to the writing process and thread,
so two writers of one file never share a half-written temporary; the last rename wins. The file is
created by open(), so its permissions follow the umask like any other file the user writes.

Torch-free, imports nothing of megadlm: every layer may use it.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import IO


def _temporary_name(path: str) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, durable: bool = False) -> Iterator[IO[str]]:
    """A text file to write that replaces `path` when the block ends without an exception (and is
    removed if it does not). `durable`: fsync before the rename, for files that must survive a
    power loss once written (a checkpoint's manifest and `latest`)."""
    path = os.fspath(path)
    tmp = _temporary_name(path)
    try:
        with open(tmp, "w") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_atomically(path: str | os.PathLike, text: str, durable: bool = False) -> None:
    """Replace `path` by a file holding `text`, atomically (see atomic_writer)."""
    with atomic_writer(path, durable=durable) as f:
        f.write(text)
