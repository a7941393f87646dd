"""Prepared data on an object store (s3://, gs://, ... anything mosaicml-streaming downloads).

`data.remote` names the remote copy of a `megadlm prepare` directory. Shards are streamed into a
per-node cache by streaming itself (hash-checked on arrival); this module only fetches the small
metadata files (manifest.json, tokenizer.json) that config validation and export read locally.
Credentials come from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / S3_ENDPOINT_URL
for S3-compatible stores) and are never written to configs, metrics or logs.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from megadlm.data.corpus import cache_root
from megadlm.data.streaming_import import defer_streaming_package_init
from megadlm.errors import DataError

MANIFEST = "manifest.json"


def _download(remote: str, local: Path) -> None:
    defer_streaming_package_init()
    from streaming.base.storage.download import CloudDownloader

    local.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", dir=local.parent)
    os.close(fd)
    os.remove(tmp)  # the downloader refuses to overwrite
    try:
        CloudDownloader.direct_download(remote, tmp)
        os.replace(tmp, local)  # atomic: ranks downloading at once never see half a file
    except Exception as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot download {remote}: {reason}. Check data.remote and the store's credentials "
                        f"in the environment (for S3-compatible stores also S3_ENDPOINT_URL)") from None


def metadata_dir(remote: str) -> Path:
    """Where a remote dataset's metadata is kept locally: $MEGADLM_CACHE/remote/<hash of the URL>."""
    return cache_root() / "remote" / hashlib.sha256(remote.rstrip("/").encode()).hexdigest()[:16]


def fetch_metadata(remote: str, dest: Path | None = None) -> Path:
    """Download REMOTE/manifest.json (and the tokenizer file it names) into `dest`; return `dest`."""
    dest = Path(dest or metadata_dir(remote))
    base = remote.rstrip("/")
    _download(f"{base}/{MANIFEST}", dest / MANIFEST)
    try:
        manifest = json.loads((dest / MANIFEST).read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{base}/{MANIFEST} is not JSON ({e}): "
                        f"is data.remote a `megadlm prepare` directory?") from None
    tokenizer_file = (manifest.get("tokenizer") or {}).get("file")
    if tokenizer_file:
        _download(f"{base}/{tokenizer_file}", dest / tokenizer_file)
    return dest
