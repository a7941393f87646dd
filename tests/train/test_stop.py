"""Stopping on request: SIGUSR1/SIGTERM or RUN_DIR/STOP -> every rank stops after the same step,
saves, exits 75; running the same command again resumes and finishes exactly like a run that
never stopped."""
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, TINY, megadlm_env, read_jsonl, run_cli, sets, train_records

pytestmark = pytest.mark.slow
STEPS = ["schedule.max_steps=40", "logging.eval_interval=20", "objective.mlp_dropout=0.1"]


def train_args(tiny_data, run_dir, nproc=1):
    return ["train", "tiny_ar", "--run-dir", str(run_dir), "--nproc", str(nproc),
            *sets(*TINY, f"data.path={tiny_data}", *STEPS)]


def start(tiny_data, run_dir, nproc=1):
    return subprocess.Popen([sys.executable, "-m", "megadlm", *train_args(tiny_data, run_dir, nproc)],
                            cwd=REPO, env=megadlm_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_step(run_dir, step, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        path = run_dir / "metrics.jsonl"
        if path.exists() and any(r.get("kind") == "train" and r["step"] >= step for r in read_jsonl(path)):
            return
        time.sleep(0.2)
    raise TimeoutError(f"step {step} not reached")


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("full") / "run"
    run_cli(*train_args(tiny_data, run))
    return train_records(run)


def check_resumes_exactly(tiny_data, run, uninterrupted, nproc=1):
    summary = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "summary"][-1]
    assert not summary["finished"] and 0 < summary["step"] < 40
    assert (run / "checkpoints" / "latest").read_text() == f"step_{summary['step']:08d}"
    run_cli(*train_args(tiny_data, run, nproc))  # the same command again
    resumed = train_records(run)
    assert [r["step"] for r in resumed] == list(range(1, 41))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in uninterrupted]
    return summary


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_saves_and_exits_75_then_resumes_exactly(tiny_data, tmp_path, uninterrupted, sig):
    run = tmp_path / "run"
    proc = start(tiny_data, run)
    wait_for_step(run, 3, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-3000:]
    summary = check_resumes_exactly(tiny_data, run, uninterrupted)
    assert summary["interrupted"] == sig.name


@pytest.fixture(scope="module")
def uninterrupted_dp2(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("full_dp2") / "run"
    run_cli(*train_args(tiny_data, run, 2))
    return train_records(run)


def test_stop_file_stops_every_rank(tiny_data, tmp_path, uninterrupted_dp2):
    run = tmp_path / "run"
    proc = start(tiny_data, run, nproc=2)
    wait_for_step(run, 3, proc)
    (run / "STOP").write_text("")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-3000:]
    assert not (run / "STOP").exists()  # consumed, so the resumed run does not stop again
    summary = check_resumes_exactly(tiny_data, run, uninterrupted_dp2, nproc=2)
    assert summary["interrupted"] == "STOP"
