"""`megadlm train --nproc 2` exits as `--nproc 1` would: a hang ends with exit 4 and every rank's
stacks in its log (the watchdog), and an attempt that fails after an interrupted one is a failure,
never 75 ("resume me")."""
import os
import time

import pytest

from megadlm.errors import EXIT_HUNG, EXIT_INTERRUPTED
from tests.conftest import TINY, read_jsonl, restore_env, run_cli, sets

pytestmark = pytest.mark.slow


def train(tiny_data, run_dir, *extra, nproc=2):
    return run_cli("train", "tiny_ar", "--run-dir", str(run_dir), "--nproc", str(nproc),
                   *sets(*TINY, f"data.path={tiny_data}", "schedule.max_steps=6", *extra), check=False)


def stalled(step: int):
    """The environment that makes rank 1 stop making progress before `step`."""
    saved = {k: os.environ.get(k) for k in ("MEGADLM_FAULT_STALL_STEP", "MEGADLM_FAULT_STALL_RANK")}
    os.environ.update({"MEGADLM_FAULT_STALL_STEP": str(step), "MEGADLM_FAULT_STALL_RANK": "1"})
    return saved


def test_a_hang_after_an_interrupted_attempt_is_a_failure_with_every_ranks_stacks(tiny_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "STOP").write_text("")  # the first attempt stops on request after its first step
    first = train(tiny_data, run)
    assert first.returncode == EXIT_INTERRUPTED, first.stderr[-3000:]

    saved = stalled(3)  # the resumed attempt hangs: a failure, whatever the previous attempt said
    started = time.monotonic()
    try:
        second = train(tiny_data, run, "run.hang_timeout_s=8")
    finally:
        restore_env(saved)
    assert second.returncode == EXIT_HUNG, second.stderr[-3000:]
    assert time.monotonic() - started < 120
    assert "no progress for" in second.stderr and "run.hang_timeout_s=8" in second.stderr
    for rank in (0, 1):
        log = (run / "logs" / f"rank{rank:05d}.log").read_text()
        assert "no progress for" in log and "most recent call first" in log  # faulthandler's dump
    # rank 0 waited in a collective of step 3; rank 1 was stuck before it
    assert "distributed_c10d.py" in (run / "logs" / "rank00000.log").read_text()
    assert "stall_for_tests" in (run / "logs" / "rank00001.log").read_text()
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == [1, 2]

    third = train(tiny_data, run)  # and the run still resumes from its checkpoint and finishes
    assert third.returncode == 0, third.stderr[-3000:]
    assert "resumed from step 1" in third.stderr
