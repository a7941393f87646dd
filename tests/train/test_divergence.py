"""A NaN loss (fault-injected into one sample) stops the run, or with run.on_nan=skip rolls back to
the last checkpoint and skips that global batch; the bad step never reaches a checkpoint."""
import json

import pytest

from tests.conftest import TINY, read_jsonl, run_cli, sets, train_records

pytestmark = pytest.mark.slow

COMMON = [*TINY, "schedule.max_steps=6", "schedule.type=constant", "checkpoint.interval=2",
          "logging.sample_ids=true"]


def train(tiny_data, run_dir, *extra, check=True):
    return run_cli("train", "tiny_ar", "--run-dir", str(run_dir),
                   *sets(*COMMON, f"data.path={tiny_data}", *extra), check=check)


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("nan") / "reference"
    train(tiny_data, run, "schedule.max_steps=7")
    return train_records(run)


def test_nan_loss_stops_before_the_step_is_saved(tiny_data, tmp_path, reference, monkeypatch):
    monkeypatch.setenv("MEGADLM_FAULT_NAN_SAMPLE", str(reference[3]["sample_ids"][0]))  # in step 4
    run = tmp_path / "stop"
    proc = train(tiny_data, run, check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "loss is NaN/inf at step 4" in proc.stderr and "run.on_nan=skip" in proc.stderr
    assert (run / "checkpoints" / "latest").read_text() == "step_00000002"


def test_nan_loss_with_skip_rolls_back_and_skips_that_batch(tiny_data, tmp_path, reference, monkeypatch):
    monkeypatch.setenv("MEGADLM_FAULT_NAN_SAMPLE", str(reference[3]["sample_ids"][0]))
    run = tmp_path / "skip"
    proc = train(tiny_data, run, "run.on_nan=skip")
    assert "rolled back to step 2 and will skip the global batch at sample 24" in proc.stderr
    got = train_records(run)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    # steps 1-3 replayed exactly; from step 4 on, each step takes the batch after the skipped one
    assert [r["loss"] for r in got[:3]] == [r["loss"] for r in reference[:3]]
    assert [r["sample_ids"] for r in got[3:]] == [r["sample_ids"] for r in reference[4:7]]
    skips = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "skip"]
    assert len(skips) == 1 and skips[0]["skipped_batch_at_sample"] == 24
    manifest = json.loads((run / "checkpoints" / "step_00000006" / "megadlm_manifest.json").read_text())
    assert manifest["train_state"]["skipped_batches"] == [24]
    assert manifest["train_state"]["consumed_samples"] == 7 * 8
