"""`megadlm prepare --out s3://bucket/prefix`: the prepared directory written to an object store.

The data is prepared locally as for a directory `--out` (same code, same bytes), in a staging
directory, then uploaded with mosaicml-streaming's uploaders (s3://, gs://, oci://, ... with the
credentials the environment gives them; S3_ENDPOINT_URL for S3-compatible stores). The staging copy is
removed once uploaded.

Readers find a dataset by its manifest.json (`data.remote` fetches it first), so the manifest is
uploaded last: a prefix either has no manifest, or has every file the manifest describes. A prefix
that already holds objects is refused before anything is tokenized: datasets on a store are never
overwritten in place (a reader mid-epoch would mix two datasets' shards); publish a new prefix instead.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

from megadlm.data.corpus import cache_root
from megadlm.data.manifest import MANIFEST
from megadlm.data.streaming_import import defer_streaming_package_init
from megadlm.errors import DataError


def is_remote(out: str | os.PathLike) -> bool:
    """Whether `out` names an object-store prefix (scheme://...) rather than a local directory."""
    return bool(urllib.parse.urlparse(os.fspath(out)).scheme) and "://" in os.fspath(out)


def _reason(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


class RemoteOut:
    """An empty object-store prefix to publish a prepared directory to (checked on construction)."""

    def __init__(self, remote: str, staging: Path):
        self.remote = remote.rstrip("/")
        self.staging = staging
        defer_streaming_package_init()
        from streaming.base.storage.upload import CloudUploader

        try:
            # keep_local=False: each staged file is deleted once it is uploaded
            self.uploader = CloudUploader.get(out=(str(staging), self.remote), keep_local=False,
                                              exist_ok=True)
            existing = self.uploader.list_objects()
        except ImportError as e:  # each store's client library is optional (boto3 for s3://)
            shutil.rmtree(staging, ignore_errors=True)
            raise DataError(f"--out {self.remote} needs the {e.name} package: pip install {e.name}") from None
        except Exception as e:  # the store's own exceptions: missing bucket, credentials, bad scheme
            shutil.rmtree(staging, ignore_errors=True)
            raise DataError(f"cannot write to {self.remote}: {_reason(e)}. Check --out and the store's "
                            f"credentials in the environment (for S3-compatible stores also "
                            f"S3_ENDPOINT_URL)") from None
        if existing:
            shutil.rmtree(staging, ignore_errors=True)
            raise DataError(f"--out {self.remote} already holds {len(existing)} object(s) "
                            f"(e.g. {existing[0]}): a dataset on an object store is never overwritten in "
                            f"place; choose a new prefix")

    def upload(self, progress: bool) -> None:
        """Upload every staged file, the manifest last, then remove the staging directory."""
        files = sorted(str(p.relative_to(self.staging)) for p in self.staging.rglob("*") if p.is_file())
        files.sort(key=lambda name: name == MANIFEST)  # stable: everything else keeps its order
        total = sum((self.staging / name).stat().st_size for name in files)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="upload")
        try:
            for name in files:
                size = (self.staging / name).stat().st_size
                try:
                    self.uploader.upload_file(name)
                except Exception as e:
                    raise DataError(f"uploading {name} to {self.remote} failed: {_reason(e)}; nothing "
                                    f"names the files already uploaded (no {MANIFEST} yet): rerun with a "
                                    f"new prefix") from None
                if bar is not None:
                    bar.update(size)
        finally:
            if bar is not None:
                bar.close()
            shutil.rmtree(self.staging, ignore_errors=True)


def staging_dir(remote: str) -> Path:
    """Where a prefix is prepared before upload: $MEGADLM_CACHE/upload/<hash of the URL>-<pid>."""
    digest = hashlib.sha256(remote.rstrip("/").encode()).hexdigest()[:16]
    return cache_root() / "upload" / f"{digest}-{os.getpid()}"


def prepare_to_store(remote: str, progress: bool = True, overwrite: bool = False,
                     **prepare_args: Any) -> dict[str, Any]:
    """`prepare(**prepare_args)` into a staging directory, then upload it to `remote`; returns the
    manifest. The prefix is checked (reachable, empty) before anything is tokenized."""
    from megadlm.data.prepare import prepare

    if overwrite:
        raise DataError(f"--overwrite replaces a local directory; --out {remote} is an object-store prefix, "
                        f"which is never overwritten in place: choose a new prefix")
    staging = staging_dir(remote)
    shutil.rmtree(staging, ignore_errors=True)  # a previous attempt of this process id's
    target = RemoteOut(remote, staging)
    try:
        manifest = prepare(out=str(staging), progress=progress, **prepare_args)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    target.upload(progress)
    return manifest
