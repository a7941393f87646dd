"""kill -9 of a random rank at random moments, some of them in the middle of a checkpoint save: the
relaunched run resumes from the last complete checkpoint and its losses equal an uninterrupted run.

One 2-rank (DP2, AR with MLP dropout) run is killed MEGADLM_FAULT_TRIALS times (default 3; the
full fault suite is `MEGADLM_FAULT_TRIALS=10 pytest tests/train/test_faults.py`), relaunched after
each kill, then run to the end. MEGADLM_FAULT_SEED picks the kill schedule (default 0).
"""
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from megadlm.train.launch import torchrun_command
from tests.conftest import REPO, TINY, megadlm_env, run_cli, sets, train_records

pytestmark = pytest.mark.slow

TRIALS = int(os.environ.get("MEGADLM_FAULT_TRIALS", "3"))
SEED = int(os.environ.get("MEGADLM_FAULT_SEED", "0"))
STEPS = 4 * TRIALS + 4  # each trial moves the run on by at most 4 steps before its kill
OVERRIDES = [*TINY, "objective.mlp_dropout=0.1", f"schedule.max_steps={STEPS}", "checkpoint.interval=1",
             "checkpoint.keep_last=3", "logging.eval_interval=4"]


def args(tiny_data, run_dir):
    return ["train", "tiny_ar", "--run-dir", str(run_dir), *sets(*OVERRIDES, f"data.path={tiny_data}")]


def runs_megadlm_train(cmdline: list[str]) -> bool:
    """True for a worker's command line, `PYTHON -u -m megadlm train ...` (torchrun's `-m` form)."""
    return any(cmdline[i:i + 3] == ["-m", "megadlm", "train"] for i in range(len(cmdline)))


def rank_pids(launcher: psutil.Process) -> dict[int, int]:
    """RANK -> pid of the training workers: torchrun's own children that run `-m megadlm train`.
    Not any descendant with RANK set and "megadlm" in its command line: each worker's
    multiprocessing resource tracker inherits RANK, and its command line starts with the interpreter's
    path, which holds "megadlm" when the checkout is named so (killing a tracker kills no rank)."""
    found = {}
    for child in launcher.children():  # torchrun --standalone is the agent: workers are its children
        try:
            cmdline, env = child.cmdline(), child.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "RANK" in env and runs_megadlm_train(cmdline):
            found[int(env["RANK"])] = child.pid
    return found


def steps_logged(run_dir: Path) -> int:
    try:
        return len(train_records(run_dir))
    except (FileNotFoundError, ValueError):  # not written yet / a line being written
        return 0


def wait_for(condition, proc, timeout=120.0) -> bool:
    """Poll until condition() or the launcher exits; True when the condition was met first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise AssertionError("the run made no progress")


def kill_once(tiny_data, run_dir: Path, rng: random.Random) -> str:
    """Launch, kill -9 one rank at a random point, wait for the launcher to end. Returns what was hit."""
    proc = subprocess.Popen(torchrun_command(2, args(tiny_data, run_dir)), env=megadlm_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        launcher = psutil.Process(proc.pid)
        launched_at = time.time()
        start = steps_logged(run_dir)
        during_save = rng.random() < 0.5
        if during_save:  # the moment a save's temporary directory appears (not one left by a kill)
            root = run_dir / "checkpoints"
            after = start + rng.randint(0, 3)

            def saving() -> bool:
                try:
                    return any(p.name.startswith(".incomplete_") and p.stat().st_mtime > launched_at
                               for p in root.iterdir())
                except FileNotFoundError:  # renamed or not created yet
                    return False

            hit = wait_for(lambda: steps_logged(run_dir) >= after and saving(), proc)
        else:  # somewhere in a random step
            target = start + rng.randint(1, 4)
            hit = wait_for(lambda: steps_logged(run_dir) >= target, proc)
            time.sleep(rng.uniform(0.0, 0.15))
        if not hit:
            return "finished before the kill"
        pids = rank_pids(launcher)
        rank = rng.choice(sorted(pids))
        os.kill(pids[rank], signal.SIGKILL)
        proc.wait(timeout=120)
        assert proc.returncode != 0
        return (f"rank {rank} killed {'during a save' if during_save else 'mid-step'} "
                f"after step {steps_logged(run_dir)}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kill_9_at_random_points_then_resume_matches_uninterrupted(tiny_data, tmp_path):
    reference = tmp_path / "reference"
    run_cli(*args(tiny_data, reference), nproc=2)

    run = tmp_path / "faulty"
    rng = random.Random(SEED)
    events = [kill_once(tiny_data, run, rng) for _ in range(TRIALS)]
    print("\n".join(events))
    run_cli(*args(tiny_data, run), nproc=2)  # the relaunch that finishes the run

    assert sum("killed" in e for e in events) >= max(1, TRIALS - 1), events
    got, want = train_records(run), train_records(reference)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert [(r["loss"], r["grad_norm"]) for r in got] == [(r["loss"], r["grad_norm"]) for r in want]
    assert ([v["val_loss"] for v in train_records(run, "val")]
            == [v["val_loss"] for v in train_records(reference, "val")])
