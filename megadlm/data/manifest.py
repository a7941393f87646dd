"""The manifest.json of a `megadlm prepare` output directory: its name, format tag, contents and loading.

The manifest records how the shards were written (format, seq_len, dtype, the tokenizer's identity,
per-split counts, the inputs, documents skipped as undecodable) so that training and evaluation can check
they read the data they expect.

This module imports nothing from megadlm.data (and neither torch nor numpy): the tokenizer, prepare,
the trainer and `megadlm plan` all read manifests, and a dependency-free module keeps their imports
cheap and free of import circles.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from megadlm import __version__
from megadlm.errors import DataError

MANIFEST = "manifest.json"
FORMAT = "megadlm-mds-v1"


class TokenizerIdentity(Protocol):
    """What the manifest needs of a tokenizer (megadlm.data.tokenizer.Tokenizer has it)."""

    vocab_size: int
    eos_id: int
    mask_id: int

    def identity(self) -> dict[str, Any]: ...


def tokenizer_entry(tok: TokenizerIdentity, file: str | None) -> dict[str, Any]:
    """The manifest's "tokenizer" record: the identity plus the file name stored next to the shards."""
    return {**tok.identity(), "file": file}


def build_manifest(*, tok: TokenizerIdentity, tok_file: str | None, seq_len: int, dtype: str,
                   splits: Mapping[str, Any], train_files: Sequence[Path], val_files: Sequence[Path],
                   val_method: str, val_fraction: float, max_tokens: int | None, skip_bad_documents: bool,
                   skipped_documents: int, skipped_details: Mapping[str, Any],
                   text_field: str = "text") -> dict[str, Any]:
    """The manifest dict that `megadlm prepare` writes as manifest.json."""
    return {
        "format": FORMAT,
        "seq_len": seq_len,
        "sample_len": seq_len + 1,
        "dtype": dtype,
        "tokenizer": tokenizer_entry(tok, tok_file),
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "mask_id": tok.mask_id,
        "splits": dict(splits),
        "val_method": val_method,  # none | fraction | tail (end of the single document) | val_inputs
        "val_fraction": val_fraction,
        "max_tokens": max_tokens,
        "inputs": [str(f.absolute()) for f in train_files],
        "val_inputs": [str(f.absolute()) for f in val_files],
        "text_field": text_field,  # the JSON field / column the documents were read from
        "skip_bad_documents": skip_bad_documents,
        # Undecodable documents left out (only ever non-zero with skip_bad_documents), over all inputs;
        # the details give, per file, its count and the locations of its first few.
        "skipped_documents": skipped_documents,
        "skipped_details": dict(skipped_details),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "megadlm_version": __version__,
    }


def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The manifest of a `megadlm prepare` output directory, checked for format."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"no {MANIFEST} in {data_dir}: is this a directory written by `megadlm prepare`?")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is unreadable ({e}): re-run `megadlm prepare`") from e
    if not isinstance(manifest, dict):
        raise DataError(f"{path} holds a JSON {type(manifest).__name__}, not an object: "
                        f"re-run `megadlm prepare`")
    fmt = manifest.get("format")
    if fmt != FORMAT:
        raise DataError(f"{path} has format {fmt!r}, expected {FORMAT!r}: re-run `megadlm prepare`")
    return manifest
