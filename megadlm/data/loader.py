"""Reading MDS shards during training, with mosaicml-streaming.

Train: one StreamingDataset per rank with `replication = TP * PP`, so every rank of a data-parallel
replica gets the same samples and replicas get disjoint ones. Its position is derived from the
global consumed-sample counter alone (epoch = C // E, sample_in_epoch = C % E), which is
independent of the world size, so resume needs nothing else from the loader.

`data.unique_tokens` caps the unique data: a fixed subset of E samples (the same every epoch,
streaming's "fixed" sampling) with E a whole number of global batches. `data.epochs` repeats it.

Validation: map-style random access on a non-shuffled dataset, split by data-parallel rank, so
every evaluation scores exactly the same sequences with no padding or duplicates.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from megadlm.config.schema import Config
from megadlm.data.streaming_import import defer_streaming_package_init
from megadlm.errors import DataError


@dataclass
class TrainBatch:
    epoch: int
    tokens: torch.Tensor  # [b, seq_len + 1] int64
    sample_ids: torch.Tensor  # [b] int64 (global index of the sample in its split)


def _collate(samples: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.from_numpy(np.stack([s["tokens"] for s in samples]).astype(np.int64))
    ids = torch.tensor([int(s["idx"]) for s in samples], dtype=torch.int64)
    return tokens, ids


def _node_name() -> str:
    """This node's cache name: the host, plus torchrun's node rank when it is not 0 (two launcher
    "nodes" on one host, as on a test cluster, must not download into one directory)."""
    group = os.environ.get("GROUP_RANK", "0")
    return socket.gethostname() + ("" if group == "0" else f"-node{group}")


def node_scratch() -> str | None:
    """Node-local scratch the scheduler provides for this job: $SLURM_TMPDIR, else $TMPDIR inside a
    Slurm job (a per-job directory on most clusters). Outside a job $TMPDIR is not used: caches there
    would outlive the run on a workstation."""
    if os.environ.get("SLURM_TMPDIR"):
        return os.environ["SLURM_TMPDIR"]
    if os.environ.get("SLURM_JOB_ID") and os.environ.get("TMPDIR"):
        return os.environ["TMPDIR"]
    return None


def default_cache_root(run_dir: str) -> str:
    """Where a node caches the shards its ranks read when data.cache_dir is not set: node-local
    scratch when the scheduler provides it, in a directory of this run's own (two jobs on one node
    must not share it); else RUN_DIR/.cache. Caching under the run directory puts every node's copy
    of the shards on the (shared) storage that holds the run."""
    scratch = node_scratch()
    if scratch:
        run_id = hashlib.sha1(os.path.abspath(run_dir).encode()).hexdigest()[:12]
        return os.path.join(scratch, "megadlm-cache", run_id, _node_name())
    return os.path.join(run_dir, ".cache", _node_name())


def split_source(cfg: Config, split: str, run_dir: str) -> tuple[str, str]:
    """(remote, local) for a split. Shards are copied into a per-node cache so the prepared data
    directory is only ever read (it may be shared by many runs)."""
    base = cfg.data.remote or cfg.data.path
    remote = base.rstrip("/") + "/" + split
    cache_root = cfg.data.cache_dir or default_cache_root(run_dir)
    return remote, os.path.join(cache_root, split)


def samples_per_epoch(available: int, unique_tokens: int | None, seq_len: int, global_batch: int) -> int:
    """Unique samples used each epoch: capped by unique_tokens, rounded down to whole global batches."""
    wanted = available if unique_tokens is None else min(available, unique_tokens // seq_len)
    usable = (wanted // global_batch) * global_batch
    if usable == 0:
        raise DataError(
            f"the training data gives {wanted} samples of {seq_len} tokens "
            f"(data.unique_tokens={unique_tokens}), fewer than one global batch of {global_batch}: "
            f"lower schedule.global_batch_size or raise data.unique_tokens / prepare more text")
    return usable


@contextlib.contextmanager
def streaming_registration_lock(timeout_s: float = 300.0):
    """Serialise mosaicml-streaming's shared-memory registration between jobs on one host.

    streaming picks its shared-memory prefix as the first free one and creates it later, between two
    barriers; two jobs starting together on a node (a Slurm array packed on one machine, two runs
    launched at once) pick the same prefix and one dies with FileExistsError '/000000_locals'. Each
    job's local leader therefore holds a host-wide lock while its dataset registers. Every rank
    (not only the leader) picks the prefix, so all of them wait at a barrier until their leader
    holds the lock: otherwise a rank could pick a prefix that another job then takes, and die with
    "shared memory prefix=N was not registered by local leader". The lock file is in /dev/shm,
    the namespace the names collide in. After `timeout_s` the leader goes on without it (a
    warning) rather than wait forever.
    """
    import torch.distributed as dist

    def everyone_waits_for_the_leaders() -> None:
        if dist.is_available() and dist.is_initialized():
            dist.barrier()

    if os.environ.get("LOCAL_RANK", "0") != "0":
        everyone_waits_for_the_leaders()
        yield
        return
    with _host_lock(timeout_s):
        everyone_waits_for_the_leaders()
        yield


def release_shared_memory(*holders) -> None:
    """Drop datasets (TrainData, ValData) and so unlink their shared memory, under the host lock
    on the local leader, which owns it. Freed while another job's ranks scan for their prefix, a
    prefix below theirs would make those ranks disagree ("prefix=N was not registered by local
    leader"). No collective: a rank may get here alone after a failure."""
    import gc

    leader = os.environ.get("LOCAL_RANK", "0") == "0"
    with _host_lock(300.0) if leader else contextlib.nullcontext():
        for holder in holders:
            holder.__dict__.pop("dataset", None)
        gc.collect()


@contextlib.contextmanager
def _host_lock(timeout_s: float):
    directory = ("/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)
                 else tempfile.gettempdir())
    with open(os.path.join(directory, "megadlm-streaming-register.lock"), "a+") as f:
        deadline = time.monotonic() + timeout_s
        locked = False
        while not locked:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    print(f"megadlm: warning: {f.name} still held after {timeout_s:.0f} s; registering "
                          f"streaming shared memory without it", file=sys.stderr)
                    break
                time.sleep(0.05)
        try:
            yield
        finally:
            if locked:
                fcntl.flock(f, fcntl.LOCK_UN)


class TrainData:
    def __init__(self, cfg: Config, manifest: dict, run_dir: str, replication: int, seed: int):
        defer_streaming_package_init()
        from streaming.base.dataset import StreamingDataset
        from streaming.base.stream import Stream

        self.cfg = cfg
        self.global_batch = cfg.schedule.global_batch_size
        available = int(manifest["splits"]["train"]["samples"])
        self.epoch_samples = samples_per_epoch(available, cfg.data.unique_tokens, cfg.data.seq_len,
                                               self.global_batch)
        remote, local = split_source(cfg, "train", run_dir)
        stream = Stream(remote=remote, local=local, validate_hash="xxh64",
                        choose=self.epoch_samples if self.epoch_samples < available else None)
        with streaming_registration_lock():
            self.dataset = StreamingDataset(
                streams=[stream], shuffle=cfg.data.shuffle, shuffle_algo=cfg.data.shuffle_algo,
                shuffle_seed=seed, num_canonical_nodes=cfg.data.num_canonical_nodes,
                batch_size=cfg.schedule.micro_batch_size, replication=replication,
                sampling_method="fixed", allow_unsafe_types=False)
        self.steps_per_epoch = self.epoch_samples // self.global_batch

    def batches(self, consumed_samples: int) -> Iterator[TrainBatch]:
        """Micro-batches for this rank from the global position `consumed_samples` on, forever."""
        from torch.utils.data import DataLoader

        epoch, in_epoch = divmod(consumed_samples, self.epoch_samples)
        # streaming ignores a resume state older than the epoch it expects next (it treats it as
        # stale); when the trainer rewinds (run.on_nan=skip) that is the epoch being left, so say
        # which epoch comes next before resuming.
        self.dataset.next_epoch = epoch
        self.dataset.load_state_dict({
            "epoch": epoch, "sample_in_epoch": in_epoch,
            "num_canonical_nodes": self.cfg.data.num_canonical_nodes,
            "shuffle_seed": self.dataset.shuffle_seed, "initial_physical_nodes": None})
        # Its own generator: iterating a DataLoader draws a base seed, which must not come from the
        # global torch RNG that dropout uses (a resumed run creates its loader at another point
        # of that stream than an uninterrupted one).
        loader = DataLoader(self.dataset, batch_size=self.cfg.schedule.micro_batch_size,
                            num_workers=self.cfg.data.num_workers, collate_fn=_collate, drop_last=True,
                            generator=torch.Generator().manual_seed(self.dataset.shuffle_seed))
        while True:
            for tokens, ids in loader:
                yield TrainBatch(epoch=epoch, tokens=tokens, sample_ids=ids)
            epoch += 1


class ValData:
    """The whole val split (or its first val_max_samples), this DP rank's share of it."""

    def __init__(self, cfg: Config, manifest: dict, run_dir: str, dp_rank: int, dp_size: int):
        defer_streaming_package_init()
        from streaming.base.dataset import StreamingDataset

        split = manifest.get("splits", {}).get("val")
        self.available = split is not None and int(split.get("samples", 0)) > 0
        if not self.available:
            return
        remote, local = split_source(cfg, "val", run_dir)
        # replication = world size: every rank may index any sample; we split indices ourselves.
        from megadlm.parallel.distributed import env_world_size

        world = env_world_size()
        with streaming_registration_lock():
            self.dataset = StreamingDataset(remote=remote, local=local, validate_hash="xxh64", shuffle=False,
                                            batch_size=1, replication=world)
        total = int(split["samples"])
        if cfg.data.val_max_samples is not None:
            total = min(total, cfg.data.val_max_samples)
        self.total = total
        self.indices = list(range(dp_rank, total, dp_size))
        self.bytes_per_token = split.get("bytes_per_token")

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.indices), batch_size):
            yield _collate([self.dataset[i] for i in self.indices[start:start + batch_size]])
