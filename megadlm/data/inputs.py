"""Reading corpus inputs into documents, as `megadlm prepare` reads them.

Plain text/markdown files are one document each; JSONL (and .json) records and parquet rows give one
document per text field (`text` unless `--text-field` names another); directories are searched
recursively for those suffixes. Every problem is a DataError naming the file (and line, record or row).
A document whose text cannot be decoded (bytes that are not UTF-8, a lone surrogate `\\u` escape) is
such an error too, or, when asked (`--skip-bad-documents`), left out and counted: web corpora have them.
"""

from __future__ import annotations

import glob
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megadlm.errors import DataError

TEXT_SUFFIXES = (".txt", ".md")
SKIPPED_EXAMPLES_PER_FILE = 3  # locations of skipped documents recorded per file in the manifest
SUPPORTED_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".json", ".parquet")
# Text, JSON and JSONL inputs may be compressed: decompressed while read, never in full on disk.
COMPRESSIONS = (".gz", ".zst", ".bz2", ".xz")
HF_DATASET_FILES = ("dataset_info.json", "state.json")  # what `datasets.Dataset.save_to_disk` writes


def split_suffix(path: Path) -> tuple[str, str | None]:
    """(the format suffix, the compression suffix or None): data.jsonl.zst -> (".jsonl", ".zst")."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        return (suffixes[-2] if len(suffixes) > 1 else ""), suffixes[-1]
    return (suffixes[-1] if suffixes else ""), None


def is_hf_dataset_dir(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in HF_DATASET_FILES)


def _supported(path: Path) -> bool:
    fmt, compression = split_suffix(path)
    return fmt in SUPPORTED_SUFFIXES and not (compression and fmt == ".parquet")


@dataclass
class Document:
    text: str
    source: str  # "file", "file:line", "file[record]" or "file#row", for error messages


def find_input_files(paths: Sequence[str | Path], exclude: Sequence[Path] = ()) -> list[Path]:
    """Files named directly (any suffix: read as text, decompressed by their last suffix), supported
    files found under directories, the matches of glob patterns (`data/*.jsonl.gz`, `**` recursive,
    sorted) and Hugging Face datasets saved with `save_to_disk` (a directory, read as one input)."""
    files: list[Path] = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.exists() and glob.has_magic(str(path)):
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
            if not matches:
                raise DataError(f"input pattern {p} matches no file: check the --input / --val-input pattern")
            for match in matches:
                files.extend(_scan_dir(match, exclude) if match.is_dir() and not is_hf_dataset_dir(match)
                             else [match])
            continue
        if not path.exists():
            raise DataError(f"input {p} does not exist: check the --input / --val-input path")
        if path.is_dir() and not is_hf_dataset_dir(path):
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
    datasets = [d for d in sorted(root.rglob("*")) if is_hf_dataset_dir(d)]
    for d in datasets:
        hidden = any(part.startswith(".") for part in d.relative_to(root).parts)
        if not hidden and not any(d.resolve().is_relative_to(e) for e in excluded):
            found.append(d)
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).parts
        if any(part.startswith(".") for part in rel) or not f.is_file():
            continue  # hidden files/dirs (.git, editor swap files) are never corpus text
        if not _supported(f) or any(f.is_relative_to(d) for d in datasets):
            continue
        if any(f.resolve().is_relative_to(e) for e in excluded):
            continue  # our own output (manifest.json, index.json) when --out lies under an input dir
        found.append(f)
    return sorted(found)  # one order over files and saved datasets


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
                   on_skip: Callable[[BadDocument], None] | None = None,
                   text_field: str = "text") -> Iterator[Document]:
    """Non-empty documents of `files`, in order; records and rows hold their text in `text_field`.

    An undecodable document raises its DataError, or with `skip_bad` is left out and passed to `on_skip`
    (prepare reads the inputs several times but counts the skipped documents in one pass only).
    """
    for f in files:
        for doc in _read_file(f, text_field):
            if isinstance(doc, BadDocument):
                if not skip_bad:
                    raise doc.error()
                if on_skip is not None:
                    on_skip(doc)
            elif doc.text.strip():
                yield doc


def _read_file(path: Path, text_field: str) -> Iterator[Document | BadDocument]:
    if is_hf_dataset_dir(path):
        yield from _read_hf_dataset(path, text_field)
        return
    suffix, compression = split_suffix(path)
    if suffix == ".parquet" and not compression:
        yield from _read_parquet(path, text_field)
    elif suffix == ".parquet":
        raise DataError(f"{path}: a compressed parquet file; parquet compresses its own columns, so "
                        f"decompress it ({compression}) and pass the .parquet file")
    elif suffix == ".jsonl":
        yield from _read_jsonl(path, text_field)
    elif suffix == ".json":
        yield from _read_json(path, text_field)
    else:
        yield _read_text(path)


def _decompression_errors() -> tuple[type[BaseException], ...]:
    """What a truncated or corrupt compressed stream raises (gzip and bz2: OSError/EOFError)."""
    import lzma

    import zstandard

    return (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError)


def _open_binary(path: Path):
    """`path` opened for binary reading, decompressed on the fly by its compression suffix."""
    compression = split_suffix(path)[1]
    if compression == ".gz":
        import gzip

        return gzip.open(path, "rb")
    if compression == ".bz2":
        import bz2

        return bz2.open(path, "rb")
    if compression == ".xz":
        import lzma

        return lzma.open(path, "rb")
    if compression == ".zst":
        return io.BufferedReader(_ZstdReader(path))  # buffered: readline, iteration
    return open(path, "rb")


class _ZstdReader(io.RawIOBase):
    """A .zst file decompressed as it is read, frame after frame (pzstd and zstd -T write several).
    Unlike zstandard's stream_reader it raises at the end of a truncated file instead of ending early."""

    CHUNK = 1 << 16

    def __init__(self, path: Path):
        import zstandard

        self._zstd = zstandard
        self._file = open(path, "rb")
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._pending = b""
        self._in_frame = False  # bytes of the current frame have been read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = self._file.read(self.CHUNK)
            if not chunk:
                if self._in_frame and not self._frame.eof:
                    raise self._zstd.ZstdError("the file ends in the middle of a frame (truncated)")
                return 0
            self._pending = self._decompress(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            if self._frame.eof:  # the previous frame ended: the rest starts the next one
                self._frame = self._zstd.ZstdDecompressor().decompressobj()
            self._in_frame = True
            out.append(self._frame.decompress(data))
            data = self._frame.unused_data if self._frame.eof else b""
        return b"".join(out)

    def close(self) -> None:
        self._file.close()
        super().close()


def _decompression_error(path: Path, e: BaseException) -> DataError:
    return DataError(f"{path}: cannot decompress it ({type(e).__name__}: {e}): is it a complete "
                     f"{split_suffix(path)[1]} file? Re-download or recompress it")


def _read_bytes(path: Path) -> bytes:
    try:
        with _open_binary(path) as f:
            return f.read()
    except _decompression_errors() as e:
        if split_suffix(path)[1] is None:
            raise
        raise _decompression_error(path, e) from e


def _bytes_problem(e: UnicodeDecodeError, offset: int, unit: str) -> str:
    """`e` described for a user; `offset` is where the line (or other `unit`) starts in `e.object`."""
    byte = e.object[e.start]
    return f"cannot decode byte 0x{byte:02x} at byte {e.start - offset} of the {unit}: {e.reason}"


def _read_text(path: Path) -> Document | BadDocument:
    """The whole file is one document; a bad byte is reported with its line."""
    data = _read_bytes(path)
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
                     bytes_were_valid: bool, text_field: str = "text") -> Document | BadDocument:
    if not isinstance(obj, dict) or text_field not in obj:
        found = f"keys: {', '.join(map(str, obj))}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise DataError(f'{where}: no "{text_field}" field (found {found}): each record must be a JSON '
                        f'object with a "{text_field}" string (--text-field NAME picks the field)')
    text = obj[text_field]
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise DataError(f'{where}: "{text_field}" is a {type(text).__name__}, not a string')
    problem = _text_problem(text, bytes_were_valid)
    return BadDocument(path, location, problem) if problem else Document(text, where)


def _lines(path: Path) -> Iterator[bytes]:
    """The (decompressed) lines of `path`, streamed; a corrupt compressed file is a DataError."""
    compressed = split_suffix(path)[1] is not None
    with _open_binary(path) as f:
        while True:
            try:
                raw = f.readline()
            except _decompression_errors() as e:
                if not compressed:
                    raise
                raise _decompression_error(path, e) from e
            if not raw:
                return
            yield raw


def _read_jsonl(path: Path, text_field: str = "text") -> Iterator[Document | BadDocument]:
    # Binary lines, decoded one at a time: a bad byte then belongs to a known line (a text-mode file
    # decodes blocks of lines at once), and memory stays bounded by the longest line.
    for lineno, raw in enumerate(_lines(path), 1):
        line, valid = _decode_keeping_bad_bytes(raw)
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}): each line of a JSONL file must "
                            f'be one JSON object with a "{text_field}" field') from e
        yield _doc_from_record(obj, f"{path}:{lineno}", path, f"line {lineno}", valid, text_field)


def _read_json(path: Path, text_field: str = "text") -> Iterator[Document | BadDocument]:
    """A .json file holds a list of records, a single record, or (commonly) JSON lines."""
    text, valid = _decode_keeping_bad_bytes(_read_bytes(path))
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        del text  # not needed by the JSONL reader, which streams the file again
        yield from _read_jsonl(path, text_field)
        return
    del text
    if isinstance(obj, list):
        for i, rec in enumerate(obj):
            yield _doc_from_record(rec, f"{path}[{i}]", path, f"record {i}", valid, text_field)
    else:
        yield _doc_from_record(obj, str(path), path, "", valid, text_field)


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


def _read_parquet(path: Path, text_field: str = "text") -> Iterator[Document | BadDocument]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"cannot read parquet file {path}: {e}") from e
    yield from _read_columns(path, pf.schema_arrow.names, text_field,
                             (b.column(0) for b in pf.iter_batches(columns=[text_field], batch_size=1024)))


def _read_hf_dataset(path: Path, text_field: str) -> Iterator[Document | BadDocument]:
    """A `datasets.Dataset.save_to_disk` directory: its Arrow files, memory-mapped, in row order."""
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises several types for damaged directories
        raise DataError(f"cannot read the Hugging Face dataset saved in {path}: {e}") from e
    if isinstance(dataset, datasets.DatasetDict):
        raise DataError(f"{path} holds a DatasetDict (splits {', '.join(dataset)}): pass one split's "
                        f"directory, e.g. {path / next(iter(dataset))}")
    table = dataset.with_format("arrow")
    batches = (table.iter(batch_size=1024) if text_field in dataset.column_names else iter(()))
    yield from _read_columns(path, dataset.column_names, text_field,
                             (batch.column(text_field).combine_chunks() for batch in batches))


def _read_columns(path: Path, names: list[str], text_field: str,
                  columns: Iterator[Any]) -> Iterator[Document | BadDocument]:
    """One document per value of the text column (pyarrow arrays, in row order)."""
    if text_field not in names:
        raise DataError(f'{path} has no "{text_field}" column (columns: {", ".join(names)}): pass '
                        f'--text-field NAME with the column that holds the documents')
    row = 0
    for column in columns:
        for value in _as_python(column):
            if isinstance(value, bytes):  # a binary column, or bad bytes in a string column
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield BadDocument(path, f"row {row}", _bytes_problem(e, 0, "text"))
                    row += 1
                    continue
            if value is not None and not isinstance(value, str):
                raise DataError(f'{path}#{row}: the "{text_field}" column holds {type(value).__name__}, '
                                f'not strings')
            yield Document(value or "", f"{path}#{row}")
            row += 1
