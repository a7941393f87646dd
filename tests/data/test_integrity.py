"""Shard checks: every failure names the shard, and hashing is remembered across checks (a requeue or
the next sweep re-hashes only what changed)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import xxhash

from megadlm.data import integrity
from megadlm.data.integrity import RACY_WINDOW_NS, verify_shards
from megadlm.errors import DataError

HOUR_NS = 3600 * 10**9


def write_split(root: Path, split: str, contents: list[bytes], age_ns: int = HOUR_NS) -> list[Path]:
    """An MDS-like split: shard files plus an index.json with their sizes and xxh64 checksums,
    modified `age_ns` ago."""
    (root / split).mkdir(parents=True)
    shards, paths = [], []
    for i, data in enumerate(contents):
        path = root / split / f"shard.{i:05d}.mds"
        path.write_bytes(data)
        shards.append({"raw_data": {"basename": path.name, "bytes": len(data),
                                    "hashes": {"xxh64": xxhash.xxh64(data).hexdigest()}}})
        paths.append(path)
    (root / split / "index.json").write_text(json.dumps({"version": 2, "shards": shards}))
    then = time.time_ns() - age_ns
    for path in paths:
        os.utime(path, ns=(then, then))
    return paths


@pytest.fixture()
def counted_hashing(monkeypatch):
    calls: list[str] = []
    real = integrity._xxh64

    def counting(path: str) -> str:
        calls.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(integrity, "_xxh64", counting)
    return calls


def test_a_second_check_hashes_nothing_that_is_unchanged(tmp_path, counted_hashing):
    data = tmp_path / "data"
    write_split(data, "train", [b"a" * 100, b"b" * 200])
    write_split(data, "val", [b"c" * 50])
    assert verify_shards(str(data)) == integrity.ShardCheck(checked=3, hashed=3)
    assert verify_shards(str(data)) == integrity.ShardCheck(checked=3, hashed=0)
    assert len(counted_hashing) == 3


def test_a_shard_rewritten_at_the_same_size_is_hashed_again_and_named(tmp_path, counted_hashing):
    data = tmp_path / "data"
    train = write_split(data, "train", [b"a" * 100, b"b" * 200])
    verify_shards(str(data))
    train[1].write_bytes(b"x" * 200)  # same size, new content, new modification time
    with pytest.raises(DataError, match=r"shard .*shard\.00001\.mds fails its xxh64 checksum"):
        verify_shards(str(data))
    assert counted_hashing == ["shard.00000.mds", "shard.00001.mds", "shard.00001.mds"]


def test_sizes_are_compared_even_for_remembered_shards(tmp_path):
    data = tmp_path / "data"
    train = write_split(data, "train", [b"a" * 100])
    verify_shards(str(data))
    stat = os.stat(train[0])
    with open(train[0], "r+b") as f:
        f.truncate(60)
    os.utime(train[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(DataError, match="has 60 bytes, its index says 100"):
        verify_shards(str(data))


def test_a_shard_modified_just_before_its_check_is_not_remembered(tmp_path, counted_hashing):
    """File times are coarse: a write in the clock tick that was recorded could go unseen, so a shard
    younger than the racy window is hashed at every check."""
    data = tmp_path / "data"
    write_split(data, "train", [b"a" * 100], age_ns=RACY_WINDOW_NS // 4)
    verify_shards(str(data))
    assert verify_shards(str(data)).hashed == 1


def test_a_new_index_is_hashed_again_and_the_record_is_per_directory(tmp_path, counted_hashing):
    one, two = tmp_path / "one", tmp_path / "two"
    write_split(one, "train", [b"a" * 100])
    write_split(two, "train", [b"a" * 100])
    verify_shards(str(one))
    assert verify_shards(str(two)).hashed == 1  # another directory: its own record
    index = json.loads((one / "train" / "index.json").read_text())
    index["shards"][0]["raw_data"]["hashes"]["xxh64"] = "0" * 16  # the index now expects other bytes
    (one / "train" / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="fails its xxh64 checksum"):
        verify_shards(str(one))


def test_an_unwritable_cache_only_means_hashing_again(tmp_path, monkeypatch, counted_hashing):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("MEGADLM_CACHE", str(blocker))
    data = tmp_path / "data"
    write_split(data, "train", [b"a" * 100])
    assert verify_shards(str(data)).hashed == 1
    assert verify_shards(str(data)).hashed == 1
