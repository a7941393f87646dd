"""A real Slurm 22.05 cluster (slurmctld + 2 slurmd "nodes" with 4 CPUs each, no GPUs) started for
the test session by tests/slurm/slurm_local.sh (installs Debian's packages when missing), plus
helpers to wait for jobs. Tests talk to it with the real sbatch/scontrol/scancel."""
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import restore_env

HERE = Path(__file__).resolve().parent
CLUSTER_DIR = Path(os.environ.get("MEGADLM_TEST_SLURM_DIR", "/tmp/megadlm-test-slurm"))
PORT = os.environ.get("MEGADLM_TEST_SLURM_PORT", "7817")  # not 6817: a developer's own cluster may use it
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED"}


@pytest.fixture(scope="session")
def slurm_cluster():
    script = HERE / "slurm_local.sh"
    start = subprocess.run(["bash", str(script), "start", str(CLUSTER_DIR), "--nodes", "2", "--cpus", "4",
                            "--port", PORT], capture_output=True, text=True, timeout=600)
    assert start.returncode == 0, f"could not start the test Slurm cluster:\n{start.stdout}\n{start.stderr}"
    saved = {"SLURM_CONF": os.environ.get("SLURM_CONF")}
    os.environ["SLURM_CONF"] = str(CLUSTER_DIR / "etc" / "slurm.conf")
    yield CLUSTER_DIR
    subprocess.run(["bash", str(script), "stop", str(CLUSTER_DIR)], capture_output=True, timeout=120)
    restore_env(saved)


def job_fields(job_id: str) -> list[dict]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]


def wait_for(job_id: str, timeout: float = 600, states=FINAL) -> list[dict]:
    """Poll until every task of the job is in `states`; return scontrol's records."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        jobs = job_fields(job_id)
        if jobs and all(j.get("JobState") in states for j in jobs):
            return jobs
        time.sleep(1)
    raise AssertionError(f"job {job_id} not in {sorted(states)} after {timeout} s: {job_fields(job_id)}")


def submitted_job_id(stdout: str) -> str:
    match = re.search(r"submitted (?:array )?job (\d+)", stdout)
    assert match, stdout
    return match.group(1)
