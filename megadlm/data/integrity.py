"""Check prepared shards against the xxh64 checksums their MDS index recorded, before training.

mosaicml-streaming can validate a shard when it copies it into the local cache, but it reports a
failure from a background thread as "Background thread failed", and a corrupt shard that is not
validated surfaces as "Relative sample index ... is not present". Checking up front names the
file and the fix. Local data only: remote shards are validated by streaming as they arrive.

Hashing is remembered: after a check, `$MEGADLM_CACHE/verified/` records each shard's size,
modification time and checksum, and a later check of the same directory (a requeue, the next sweep,
another run) re-hashes only shards whose size, time or expected checksum changed. So terabytes are
hashed once, not once per job. Sizes are always compared. A shard changed in place with its
modification time restored by hand would not be re-hashed: delete `$MEGADLM_CACHE/verified/` to hash
everything again.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from megadlm.atomic_files import write_atomically
from megadlm.data.corpus import cache_root
from megadlm.errors import DataError

# A shard modified within this long before its check started may have changed again in the same
# clock tick that was recorded (file times are coarse): it is not remembered, so it is hashed again
# next time (git's "racily clean" rule).
RACY_WINDOW_NS = 2_000_000_000


@dataclass(frozen=True)
class ShardCheck:
    checked: int  # shards whose presence, size and checksum were confirmed
    hashed: int  # of them, how many were read and hashed (the rest were unchanged since a check)


def _xxh64(path: str) -> str:
    import xxhash

    with open(path, "rb") as f:
        return hashlib.file_digest(f, xxhash.xxh64).hexdigest()


def _record_path(data_dir: str) -> Path:
    key = hashlib.sha256(os.path.abspath(data_dir).encode()).hexdigest()[:16]
    return cache_root() / "verified" / f"{key}.json"


def _load_record(data_dir: str) -> dict[str, dict]:
    """The shards remembered as verified for `data_dir` ({} if none or unreadable)."""
    try:
        record = json.loads(_record_path(data_dir).read_text())
        if record.get("data_dir") != os.path.abspath(data_dir):
            return {}
        return dict(record["shards"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _save_record(data_dir: str, shards: dict[str, dict]) -> None:
    """Write the record atomically; a cache that cannot be written only means hashing again later."""
    path = _record_path(data_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps({"data_dir": os.path.abspath(data_dir), "shards": shards}))
    except OSError:
        pass


def verify_shards(data_dir: str, splits: tuple[str, ...] = ("train", "val")) -> ShardCheck:
    """Raise DataError naming the first shard that is missing, truncated or fails its checksum."""
    started_ns = time.time_ns()
    remembered = _load_record(data_dir)
    verified: dict[str, dict] = {}
    checked = hashed = 0
    for split in splits:
        index_path = os.path.join(data_dir, split, "index.json")
        if not os.path.exists(index_path):
            if split == "train":
                raise DataError(f"{index_path} is missing: the train shards are gone; "
                                f"re-run `megadlm prepare`")
            continue
        try:
            with open(index_path) as f:
                shards = json.load(f)["shards"]
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{index_path} is unreadable ({e}): re-run `megadlm prepare`") from e
        for shard in shards:
            info = shard.get("zip_data") or shard["raw_data"]
            path = os.path.join(data_dir, split, info["basename"])
            if not os.path.isfile(path):
                raise DataError(f"shard {path} is missing: re-run `megadlm prepare` (or restore the file)")
            stat = os.stat(path)
            if stat.st_size != info["bytes"]:
                raise DataError(f"shard {path} has {stat.st_size} bytes, "
                                f"its index says {info['bytes']}: "
                                "it is truncated or was rewritten; re-run `megadlm prepare`")
            expected = info.get("hashes", {}).get("xxh64")
            facts = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "xxh64": expected}
            key = f"{split}/{info['basename']}"
            if expected and remembered.get(key) != facts:
                hashed += 1
                if _xxh64(path) != expected:
                    raise DataError(f"shard {path} fails its xxh64 checksum (corrupted): "
                                    "re-run `megadlm prepare` (or restore the file)")
            if expected and stat.st_mtime_ns < started_ns - RACY_WINDOW_NS:
                verified[key] = facts
            checked += 1
    _save_record(data_dir, verified)
    return ShardCheck(checked, hashed)
