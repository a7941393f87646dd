"""Training data from MDS shards through mosaicml-streaming: unique-data cap, repetitions, and a
position that is one integer (consumed samples)."""
import itertools
import os

import pytest

from megadlm.config.loader import load_config
from megadlm.errors import DataError
from tests.conftest import DIST_VARS, restore_env


@pytest.fixture()
def single_process_env():
    before = {k: os.environ.get(k) for k in DIST_VARS}
    from megadlm.parallel.distributed import _ensure_single_process_env

    _ensure_single_process_env()
    yield
    restore_env(before)


def make_train_data(tiny_data, run_dir, *overrides):
    from megadlm.data.loader import TrainData
    from megadlm.data.manifest import load_manifest

    cfg = load_config("tiny_ar", [f"data.path={tiny_data}", "data.seq_len=32", "schedule.global_batch_size=8",
                                  "schedule.micro_batch_size=4", *overrides])
    return TrainData(cfg, load_manifest(str(tiny_data)), str(run_dir), replication=1, seed=5)


def take(data, consumed, n):
    return list(itertools.islice(data.batches(consumed), n))


def test_unique_tokens_cap_is_the_same_subset_every_epoch(tiny_data, tmp_path, single_process_env):
    data = make_train_data(tiny_data, tmp_path / "a", "data.unique_tokens=1300")  # 40 samples of 32
    assert data.epoch_samples == 40 and data.steps_per_epoch == 5
    batches = take(data, 0, 30)  # 3 epochs of 10 micro-batches of 4
    epochs = [[int(i) for b in batches[e * 10:(e + 1) * 10] for i in b.sample_ids] for e in range(3)]
    assert [b.epoch for b in batches] == [0] * 10 + [1] * 10 + [2] * 10
    assert all(len(set(e)) == 40 for e in epochs)  # each sample exactly once per epoch
    assert set(epochs[0]) == set(epochs[1]) == set(epochs[2])  # the same unique data repeated
    assert epochs[0] != epochs[1]  # reshuffled between repetitions


def test_position_is_the_consumed_sample_count(tiny_data, tmp_path, single_process_env):
    data = make_train_data(tiny_data, tmp_path / "a", "data.unique_tokens=1300")
    whole = take(data, 0, 16)
    again = make_train_data(tiny_data, tmp_path / "b", "data.unique_tokens=1300")
    resumed = take(again, 24, 10)  # 24 samples = 6 micro-batches in, mid-epoch 0 ... into epoch 1
    assert [b.sample_ids.tolist() for b in resumed] == [b.sample_ids.tolist() for b in whole[6:16]]
    assert [b.epoch for b in resumed] == [b.epoch for b in whole[6:16]]
    assert all((x.tokens == y.tokens).all() for x, y in zip(resumed, whole[6:16]))


def test_too_little_data_for_one_global_batch(tiny_data, tmp_path, single_process_env):
    with pytest.raises(DataError, match="fewer than one global batch"):
        make_train_data(tiny_data, tmp_path / "a", "data.unique_tokens=100")


def test_shards_are_cached_in_node_local_scratch_when_the_scheduler_provides_it(tmp_path, monkeypatch):
    from megadlm.data.loader import split_source

    cfg = load_config("tiny", [f"data.path={tmp_path / 'data'}"])
    run_dir = str(tmp_path / "run")
    for name in ("SLURM_TMPDIR", "TMPDIR", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # outside a job: not the scheduler's scratch
    assert split_source(cfg, "train", run_dir)[1].startswith(os.path.join(run_dir, ".cache"))
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    in_tmp = split_source(cfg, "train", run_dir)[1]
    assert in_tmp.startswith(str(tmp_path / "tmp" / "megadlm-cache")) and in_tmp.endswith("train")
    monkeypatch.setenv("SLURM_TMPDIR", str(tmp_path / "slurm"))
    assert split_source(cfg, "val", run_dir)[1].startswith(str(tmp_path / "slurm" / "megadlm-cache"))
    # another run on the same node gets a directory of its own; data.cache_dir still wins
    assert split_source(cfg, "train", str(tmp_path / "other"))[1] != split_source(cfg, "train", run_dir)[1]
    chosen = load_config("tiny", [f"data.path={tmp_path / 'data'}", f"data.cache_dir={tmp_path / 'c'}"])
    assert split_source(chosen, "train", run_dir)[1] == str(tmp_path / "c" / "train")
