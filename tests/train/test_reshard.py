"""Resume at another layout: `megadlm reshard` (DeepSpeed universal checkpoint) then `--resume-from`.

A run stopped at step 4 in layout A, resharded and resumed in layout B, must continue exactly the
reference's global sample sequence and match its losses within 1e-6 (fp32; the layouts only
re-order sums). Dropout is off: after a layout change each rank's dropout stream is new.
"""
import json

import pytest

from tests.conftest import TINY, run_cli, sets, train_records

pytestmark = pytest.mark.slow

COMMON = [*TINY, "schedule.max_steps=8", "logging.sample_ids=true", "checkpoint.interval=2"]


def train(tiny_data, run_dir, *extra, nproc=0, args=(), check=True):
    return run_cli("train", "tiny_mdm", "--run-dir", str(run_dir), *args,
                   *sets(*COMMON, f"data.path={tiny_data}", *extra), nproc=nproc, check=check)


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("reshard") / "reference"
    train(tiny_data, run)
    return train_records(run)


LAYOUTS = {  # name: (source overrides, source ranks, target overrides, target ranks, target pp)
    "dp2_to_dp1": ([], 2, [], 0, 1),
    "dp1_to_dp2_zero2": ([], 0, ["parallel.zero_stage=2"], 2, 1),
    "tp2_pp2_to_tp1_pp1": (["parallel.tp=2", "parallel.pp=2"], 4, [], 0, 1),
    "tp1_pp1_to_tp2_pp2": ([], 0, ["parallel.tp=2", "parallel.pp=2"], 4, 2),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_resume_at_another_layout_continues_exactly(tiny_data, tmp_path, reference, name):
    source, source_ranks, target, target_ranks, target_pp = LAYOUTS[name]
    run = tmp_path / "run"
    train(tiny_data, run, *source, "run.stop_at_step=4", nproc=source_ranks)
    universal = tmp_path / "step4_universal"
    out = run_cli("reshard", str(run / "checkpoints" / "step_00000004"), "--out", str(universal),
                  "--pp", str(target_pp))
    assert "resume with" in out.stdout
    assert json.loads((universal / "megadlm_manifest.json").read_text())["facts"]["layout"]["universal"]
    train(tiny_data, run, *target, nproc=target_ranks, args=["--resume-from", str(universal)])

    got = train_records(run)
    assert [r["step"] for r in got] == list(range(1, 9))
    # the same global batches, step by step: no sample skipped or repeated
    assert [sorted(r["sample_ids"]) for r in got] == [sorted(r["sample_ids"]) for r in reference]
    after = [r for r in got if r["step"] > 4]
    ref_after = [r for r in reference if r["step"] > 4]
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(after, ref_after)) <= 1e-6
    assert max(abs(a["grad_norm"] - b["grad_norm"]) / b["grad_norm"] for a, b in zip(after, ref_after)) <= 5e-5


def test_reshard_refusals_change_nothing(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(tiny_data, run, "run.stop_at_step=2")
    step2 = run / "checkpoints" / "step_00000002"
    taken = tmp_path / "taken"
    taken.mkdir()
    proc = run_cli("reshard", str(step2), "--out", str(taken), check=False)
    assert proc.returncode == 2 and "already exists" in proc.stderr and not list(taken.iterdir())
    # resharded for pp=2 but resumed with pp=1
    universal = tmp_path / "u2"
    run_cli("reshard", str(step2), "--out", str(universal), "--pp", "2")
    before = (run / "metrics.jsonl").read_text()
    proc = train(tiny_data, run, args=["--resume-from", str(universal)], check=False)
    assert proc.returncode == 2 and "resharded for parallel.pp=2" in proc.stderr and "--pp 1" in proc.stderr
    assert (run / "metrics.jsonl").read_text() == before
