"""Resume at another layout: `megadlm reshard` (DeepSpeed universal checkpoint) then `--resume-from`,
or, for another data-parallel size or ZeRO 1 <-> 2, a plain `megadlm train` that converts by itself.

A run stopped at step 4 in layout A, resharded and resumed in layout B, must continue exactly the
reference's global sample sequence and match its losses within 1e-6 (fp32; the layouts only
re-order sums). Dropout is off: after a layout change each rank's dropout stream is new.
"""
import json
import shutil

import pytest

from tests.conftest import TINY, run_cli, sets, snapshot, train_records

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
    assert max(abs(a["grad_norm"] - b["grad_norm"]) / b["grad_norm"]
               for a, b in zip(after, ref_after)) <= 5e-5


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


# ---------------------------------------------------------------- automatic conversion on resume
# A requeue on another node count relaunches the same `megadlm train` (torchrun on every rank, or
# --nproc N): a ZeRO 1/2 checkpoint of another data-parallel size is converted once, by itself.

CONVERTING = "converting it once to"
REUSING = "the universal conversion an earlier launch made"


def continues_like_the_reference(run, reference):
    got = train_records(run)
    assert [r["step"] for r in got] == list(range(1, len(reference) + 1))
    # the same global batches, step by step: no sample skipped or repeated
    assert [sorted(r["sample_ids"]) for r in got] == [sorted(r["sample_ids"]) for r in reference]
    after = [(a["loss"], b["loss"]) for a, b in zip(got, reference) if a["step"] > 4]
    assert after and max(abs(a - b) for a, b in after) <= 1e-6


def conversion_of(run, step=4):
    from megadlm.train import checkpoint as ckpt

    path = run / "checkpoints" / "universal" / f"step_{step:08d}_pp1"
    manifest, problem = ckpt.verify(str(path))
    assert problem is None, problem
    return path, manifest


@pytest.fixture(scope="module")
def one_process_at_step4(tiny_data, tmp_path_factory):
    """A run checkpointed at step 4 by one process (ZeRO-1), copied by each test that resumes it."""
    run = tmp_path_factory.mktemp("source") / "run"
    train(tiny_data, run, "run.stop_at_step=4")
    return run


def test_requeue_at_fewer_processes_converts_once_and_continues_exactly(tiny_data, tmp_path, reference):
    from megadlm.train import checkpoint as ckpt

    run = tmp_path / "run"
    train(tiny_data, run, "run.stop_at_step=4", nproc=2)
    # resumed by a plain `megadlm train` at 1 process; stops at once (nothing left before step 4)
    first = train(tiny_data, run, "run.stop_at_step=4")
    assert first.stderr.count(CONVERTING) == 1, first.stderr[-3000:]
    message = next(line for line in first.stderr.splitlines() if CONVERTING in line)
    assert "data-parallel size 2, this run has 1" in message and "step_00000004_pp1" in message
    path, manifest = conversion_of(run)
    # beside the original, which it names; never a resume candidate of its own
    assert manifest["facts"]["layout"]["from"]["path"] == str(run / "checkpoints" / "step_00000004")
    assert all("universal" not in p for p in ckpt.candidate_paths(str(run)))
    made = (path / "megadlm_manifest.json").stat().st_mtime_ns

    second = train(tiny_data, run)  # a second launch reuses the conversion
    assert CONVERTING not in second.stderr and second.stderr.count(REUSING) == 1
    assert (path / "megadlm_manifest.json").stat().st_mtime_ns == made
    continues_like_the_reference(run, reference)


def test_torchrun_at_more_processes_converts_on_rank0_and_continues_exactly(tiny_data, tmp_path, reference,
                                                                             one_process_at_step4):
    run = tmp_path / "run"
    shutil.copytree(one_process_at_step4, run)
    resumed = train(tiny_data, run, nproc=2)  # torchrun directly, as a Slurm requeue launches it
    assert resumed.stderr.count(CONVERTING) == 1, resumed.stderr[-3000:]
    assert "data-parallel size 1, this run has 2" in resumed.stderr
    conversion_of(run)
    continues_like_the_reference(run, reference)


def test_zero1_to_zero2_at_the_same_size_converts_and_continues_exactly(tiny_data, tmp_path, reference,
                                                                         one_process_at_step4):
    run = tmp_path / "run"
    shutil.copytree(one_process_at_step4, run)
    resumed = train(tiny_data, run, "parallel.zero_stage=2")
    assert resumed.stderr.count(CONVERTING) == 1
    assert "with parallel.zero_stage=1, this run uses 2" in resumed.stderr
    continues_like_the_reference(run, reference)


def test_zero0_loads_at_another_size_as_it_is(tiny_data, tmp_path, reference):
    """ZeRO-0 keeps the whole optimizer state in one file per model-parallel rank: no conversion."""
    run = tmp_path / "run"
    train(tiny_data, run, "parallel.zero_stage=0", "run.stop_at_step=2", nproc=2)
    resumed = train(tiny_data, run, "parallel.zero_stage=0", "run.stop_at_step=4")
    assert CONVERTING not in resumed.stderr and not (run / "checkpoints" / "universal").exists()
    got = train_records(run)
    assert [sorted(r["sample_ids"]) for r in got] == [sorted(r["sample_ids"]) for r in reference[:4]]
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(got, reference)) <= 1e-6


def test_zero3_at_another_size_is_refused_before_anything_is_written(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(tiny_data, run, "parallel.zero_stage=3", "run.stop_at_step=2", nproc=2)
    before = snapshot(run)
    proc = train(tiny_data, run, "parallel.zero_stage=3", args=["--nproc", "1"], check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "data-parallel size 2" in proc.stderr and "megadlm reshard" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(run) == before
