"""Check prepared shards against the xxh64 checksums their MDS index recorded, before training.

mosaicml-streaming can validate a shard when it copies it into the local cache, but it reports a
failure from a background thread as "Background thread failed", and a corrupt shard that is not
validated surfaces as "Relative sample index ... is not present". Checking up front names the
file and the fix. Local data only: remote shards are validated by streaming as they arrive.
"""
from __future__ import annotations

import hashlib
import json
import os

from megadlm.errors import DataError


def _xxh64(path: str) -> str:
    import xxhash

    with open(path, "rb") as f:
        return hashlib.file_digest(f, xxhash.xxh64).hexdigest()


def verify_shards(data_dir: str, splits: tuple[str, ...] = ("train", "val")) -> int:
    """Raise DataError naming the first shard that is missing, truncated or fails its checksum;
    returns how many shards were checked."""
    checked = 0
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
            if os.path.getsize(path) != info["bytes"]:
                raise DataError(f"shard {path} has {os.path.getsize(path)} bytes, "
                                f"its index says {info['bytes']}: "
                                "it is truncated or was rewritten; re-run `megadlm prepare`")
            expected = info.get("hashes", {}).get("xxh64")
            if expected and _xxh64(path) != expected:
                raise DataError(f"shard {path} fails its xxh64 checksum (corrupted): "
                                "re-run `megadlm prepare` (or restore the file)")
            checked += 1
    return checked
