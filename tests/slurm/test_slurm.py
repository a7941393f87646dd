"""`megadlm submit`, auto-requeue, `megadlm sweep` and `megadlm status` against a real Slurm cluster
(2 fake nodes on this host, started by the session fixture)."""
import json
import subprocess
import time

import pytest

from megadlm.rundir import read_metrics
from tests.conftest import TINY, read_jsonl, run_cli, sets, snapshot, train_records
from tests.slurm.conftest import HERE, job_fields, submitted_job_id, wait_for

# each fake node gets its own /dev/shm, as a real node has (they share this host)
FAKE_NODE = ["--launcher-wrapper", str(HERE / "fake_node.sh")]

pytestmark = pytest.mark.slow


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in train_records(run_dir)]


def log_of(job):
    path = job.get("StdOut")
    try:
        return open(path).read()
    except OSError:
        return f"(no log at {path})"


def test_two_nodes_two_ranks_each_match_torchrun(slurm_cluster, tiny_data, tmp_path):
    args = sets(*TINY, f"data.path={tiny_data}", "schedule.max_steps=6")
    proc = run_cli("submit", "tiny_mdm", *args, "--nodes", "2", "--procs-per-node", "2", "--time", "10",
                   *FAKE_NODE, "--run-dir", str(tmp_path / "slurm"))
    job_id = submitted_job_id(proc.stdout)
    script = (tmp_path / "slurm" / "slurm" / "train.sbatch").read_text()
    assert ("#SBATCH --nodes=2" in script and "--signal=B:USR1@120" in script
            and "--kill-on-bad-exit=1" in script)
    (job,) = wait_for(job_id)
    assert job["JobState"] == "COMPLETED", log_of(job)
    assert job["NodeList"] == "node[1-2]"
    start = [r for r in read_jsonl(tmp_path / "slurm" / "metrics.jsonl") if r["kind"] == "start"][0]
    assert (start["world_size"], start["slurm_job_id"], start["restarts"]) == (4, job_id, 0)

    run_cli("train", "tiny_mdm", *args, "--run-dir", str(tmp_path / "torchrun"), nproc=4)
    ours, reference = losses(tmp_path / "slurm"), losses(tmp_path / "torchrun")
    assert [s for s, _ in ours] == list(range(1, 7)) and [s for s, _ in reference] == list(range(1, 7))
    assert max(abs(a - b) for (_, a), (_, b) in zip(ours, reference)) <= 1e-6


def test_each_signal_checkpoints_requeues_and_the_run_resumes_bit_identically(slurm_cluster, tiny_data,
                                                                              tmp_path):
    """One job gets both signals, one per attempt: USR1 (what --signal=B:USR1@margin sends before the
    time limit, delivered now), then, once requeued, TERM (e.g. `scancel --signal=TERM --batch` by an
    operator). Each attempt checkpoints, exits 75 and is requeued; the run ends as if never stopped."""
    args = sets(*TINY, f"data.path={tiny_data}", "schedule.max_steps=60", "checkpoint.interval=1000",
                "checkpoint.keep_last=0")
    run_dir = tmp_path / "slurm"
    proc = run_cli("submit", "tiny_ar", *args, "--nodes", "1", "--procs-per-node", "2", "--time", "10",
                   "--run-dir", str(run_dir))
    job_id = submitted_job_id(proc.stdout)
    for restart, signal in enumerate(("USR1", "TERM")):
        deadline = time.time() + 300
        while time.time() < deadline:  # signal once this attempt is a few steps in
            records = read_metrics(str(run_dir), partial_ok=True)  # being appended to right now
            if sum(r["kind"] == "train" and r["restarts"] == restart for r in records) >= 3:
                break
            time.sleep(0.2)
        subprocess.run(["scancel", f"--signal={signal}", "--batch", job_id], check=True)
    (job,) = wait_for(job_id)
    text = log_of(job)
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "2", text
    assert "got USR1" in text and "got TERM" in text
    assert "requeueing (restart 1 of at most 5)" in text and "requeueing (restart 2 of at most 5)" in text
    # torchrun's failure report for the intended exit 75 is followed by a line that says so
    assert text.index("megadlm: the run stopped on request") > text.find("ChildFailedError"), text
    records = train_records(run_dir)
    stops = [max(r["step"] for r in records if r["restarts"] == k) for k in (0, 1)]
    assert 3 <= stops[0] < stops[1] < 60 and records[-1]["restarts"] == 2
    assert all((run_dir / "checkpoints" / f"step_{s:08d}").is_dir() for s in stops)

    run_cli("train", "tiny_ar", *args, "--run-dir", str(tmp_path / "reference"), nproc=2)
    assert losses(run_dir) == losses(tmp_path / "reference")  # bit-identical, every step once


def test_sweep_array_and_status_report_each_point(slurm_cluster, tiny_data, tmp_path):
    grid = {
        "name": "three", "out": str(tmp_path / "sweep"), "base": "tiny_ar",
        "set": [*TINY, f"data.path={tiny_data}", "schedule.max_steps=4"],
        "arms": {"mdm": {"objective.type": "mdm"}, "ar": {"objective.type": "ar"},
                 # diverges at once: NaN/inf loss, the run stops with exit code 3
                 "diverging": {"objective.type": "ar", "optim.lr": 1.0e30, "schedule.warmup_steps": 0}},
        "resources": {"nodes": 1, "procs_per_node": 1, "time": "10"},
    }
    (tmp_path / "grid.yaml").write_text(json.dumps(grid))
    proc = run_cli("sweep", str(tmp_path / "grid.yaml"))
    array_id = submitted_job_id(proc.stdout)
    manifest = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [p["name"] for p in manifest["points"]] == ["mdm", "ar", "diverging"]
    jobs = wait_for(array_id)
    states = {j["ArrayTaskId"]: j["JobState"] for j in jobs}
    assert states == {"0": "COMPLETED", "1": "COMPLETED", "2": "FAILED"}, [log_of(j) for j in jobs]

    rows = json.loads(run_cli("status", str(tmp_path / "sweep"), "--json").stdout)
    by_name = {r["name"]: r for r in rows}
    for name in ("mdm", "ar"):
        assert by_name[name]["state"] == "COMPLETED" and by_name[name]["step"] == 4
        assert by_name[name]["loss"] is not None and by_name[name]["epoch"] is not None
    failed = by_name["diverging"]
    assert failed["state"] == "FAILED" and failed["exit_code"] not in (None, "0:0")
    assert (failed["log"].endswith(f"-{array_id}_2.out")
            and "training has diverged" in open(failed["log"]).read())
    table = run_cli("status", str(tmp_path / "sweep")).stdout
    assert f"failed: exit code {failed['exit_code']}, log {failed['log']}" in table
    single = json.loads(run_cli("status", manifest["points"][0]["run_dir"], "--json").stdout)
    assert single[0]["step"] == 4 and single[0]["finished"]


@pytest.mark.parametrize("extra, reason", [
    (["--nodes", "3"], "Node count specification invalid"),
    (["--gpus-per-node", "1", "--set", "schedule.global_batch_size=2",
      "--set", "schedule.micro_batch_size=2"],
     "Invalid generic resource"),
])
def test_impossible_resources_are_refused_with_slurms_reason(slurm_cluster, tiny_data, tmp_path, extra,
                                                             reason):
    squeue_before = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout
    proc = run_cli("submit", "tiny_mdm",
                   *sets(*TINY, f"data.path={tiny_data}", "schedule.global_batch_size=12"),
                   "--time", "5", "--run-dir", str(tmp_path / "run"), *extra, check=False)
    assert (proc.returncode == 2 and reason in proc.stderr
            and "nothing was written" in proc.stderr), proc.stderr
    assert not (tmp_path / "run").exists()
    assert subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout == squeue_before


def test_sweep_with_impossible_resources_writes_nothing(slurm_cluster, tiny_data, tmp_path):
    grid = {"base": "tiny_mdm", "out": str(tmp_path / "sweep"),
            "set": [*TINY, f"data.path={tiny_data}", "schedule.global_batch_size=12"],
            "grid": {"run.seed": [1, 2]}, "resources": {"nodes": 3, "time": "5"}}
    (tmp_path / "grid.yaml").write_text(json.dumps(grid))
    before = snapshot(tmp_path)
    proc = run_cli("sweep", str(tmp_path / "grid.yaml"), check=False)
    assert proc.returncode == 2 and "Node count specification invalid" in proc.stderr
    assert snapshot(tmp_path) == before and not (tmp_path / "sweep").exists()


def test_status_of_a_job_still_queued(slurm_cluster, tiny_data, tmp_path):
    """A held job shows as PENDING with its job id before any metrics exist."""
    proc = run_cli("submit", "tiny_mdm", *sets(*TINY, f"data.path={tiny_data}", "schedule.max_steps=2"),
                   "--time", "5", "--sbatch=--hold", "--run-dir", str(tmp_path / "run"))
    job_id = submitted_job_id(proc.stdout)
    try:
        (row,) = json.loads(run_cli("status", str(tmp_path / "run"), "--json").stdout)
        assert row["state"] == "PENDING" and row["job"] == job_id and row["step"] is None
    finally:
        subprocess.run(["scancel", job_id])
    assert job_fields(job_id)
