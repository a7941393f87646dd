"""`megadlm submit`: render slurm/train.sbatch for a run (or a sweep's array), write it into the run
directory, submit it with sbatch and record the job.

Resources are checked by Slurm itself first (`sbatch --test-only`), so an impossible request is
refused with Slurm's own reason before anything is written.
"""
from __future__ import annotations

import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from megadlm.atomic_files import write_atomically
from megadlm.errors import UserError

TEMPLATE = Path(__file__).resolve().parents[2] / "slurm" / "train.sbatch"
SCRIPT_NAME = "train.sbatch"
JOBS_FILE = "jobs.jsonl"


class SlurmError(UserError):
    """sbatch refused the job, or Slurm is not reachable from here."""


@dataclass
class Resources:
    nodes: int = 1
    gpus_per_node: int = 0
    procs_per_node: int | None = None  # ranks per node; default gpus_per_node (GPU) or 1 (CPU)
    cpus_per_task: int | None = None
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    signal_margin_s: int = 120
    max_restarts: int = 5
    extra: list[str] = field(default_factory=list)  # more #SBATCH options, e.g. --constraint=h100
    launcher_wrapper: str = ""  # command each node's torchrun runs under, e.g. "apptainer exec img.sif"

    @property
    def ranks_per_node(self) -> int:
        return self.procs_per_node or self.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node

    def check(self) -> None:
        problems = []
        if self.nodes < 1:
            problems.append("--nodes must be >= 1")
        if self.gpus_per_node < 0 or (self.procs_per_node is not None and self.procs_per_node < 1):
            problems.append("--gpus-per-node must be >= 0 and --procs-per-node >= 1")
        if self.gpus_per_node and self.procs_per_node and self.procs_per_node != self.gpus_per_node:
            problems.append(f"--procs-per-node {self.procs_per_node} != "
                            f"--gpus-per-node {self.gpus_per_node}: "
                            f"a GPU job runs one rank per GPU")
        if problems:
            raise UserError("; ".join(problems))


def _which(cmd: str) -> str:
    path = shutil.which(cmd)
    if path is None:
        raise SlurmError(f"`{cmd}` is not on PATH: run `megadlm submit` on a Slurm login node "
                         f"(or use --dry-run to only print the script)")
    return path


def render(res: Resources, point_block: str, output: str, job_name: str, array: str | None = None) -> str:
    cpus = res.cpus_per_task or max(1, res.ranks_per_node * (4 if res.gpus_per_node else 1))
    resource_lines = [f"#SBATCH --{k}={v}" for k, v in (("time", res.time), ("partition", res.partition),
                                                        ("account", res.account), ("qos", res.qos)) if v]
    resource_lines += [f"#SBATCH {opt}" for opt in res.extra]
    if res.gpus_per_node:
        backend = ["# NCCL on GPU nodes: report async errors instead of hanging; quiet unless asked",
                   "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1", "export NCCL_DEBUG=${NCCL_DEBUG:-WARN}"]
    else:
        backend = ["# CPU nodes: torch.distributed uses gloo (chosen by megadlm when no GPU is visible)"]
    values = {
        "SUBMITTED": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "JOB_NAME": job_name, "NODES": res.nodes, "CPUS_PER_TASK": cpus,
        "GPU_LINE": f"#SBATCH --gpus-per-node={res.gpus_per_node}" if res.gpus_per_node else "",
        "RESOURCE_LINES": "\n".join(resource_lines), "OUTPUT": output,
        "SIGNAL_MARGIN": res.signal_margin_s, "ARRAY_LINE": f"#SBATCH --array={array}" if array else "",
        "PYTHON": shlex.quote(sys.executable), "PROCS_PER_NODE": res.ranks_per_node,
        "MAX_RESTARTS": res.max_restarts, "WORKDIR": shlex.quote(os.getcwd()),
        "POINT_BLOCK": point_block, "THREADS_PER_RANK": max(1, cpus // res.ranks_per_node),
        "BACKEND_LINES": "\n".join(backend), "LAUNCH_WRAPPER": shlex.quote(res.launcher_wrapper),
    }
    lines = []
    for template_line in TEMPLATE.read_text().splitlines():
        line = template_line
        for key, value in values.items():
            line = line.replace(f"@@{key}@@", str(value))
        if line or not template_line:  # a placeholder that rendered empty leaves no blank line
            lines.append(line)
    return "\n".join(lines) + "\n"


def single_run_block(run_dir: str, config: str) -> str:
    return f"RUN_DIR={shlex.quote(run_dir)}\nCONFIG={shlex.quote(config)}"


def sbatch_test_only(script: str) -> None:
    """Let Slurm judge the resources without queueing anything; raise with its reason."""
    proc = subprocess.run([_which("sbatch"), "--test-only"], input=script, capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr or proc.stdout).strip().replace("sbatch: error: ", "")
        raise SlurmError(f"Slurm refused the job: {reason}. "
                         f"Change --nodes/--gpus-per-node/--partition/--time "
                         f"(`sinfo` lists what the cluster has); nothing was written")


def sbatch(script_path: str) -> str:
    proc = subprocess.run([_which("sbatch"), "--parsable", script_path], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SlurmError(f"sbatch failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout.strip().split(";")[0]


def record_job(directory: Path, job_id: str, res: Resources, script: Path, **extra) -> dict:
    record = {"job_id": job_id,
              "submitted": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "script": str(script), "nodes": res.nodes, "gpus_per_node": res.gpus_per_node,
              "procs_per_node": res.ranks_per_node, **extra}
    with open(directory / JOBS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def submit_run(config: str, overrides: list[str], res: Resources, run_dir: str | None, dry_run: bool) -> dict:
    """Validate, render, let Slurm check, then write RUN_DIR/slurm/{config.yaml,train.sbatch} and submit."""
    import yaml

    from megadlm import preflight
    from megadlm.config.loader import config_to_dict, load_config
    from megadlm.rundir import resolve_run_dir

    res.check()
    cfg = load_config(config, overrides)
    run_dir = resolve_run_dir(cfg, run_dir)
    preflight.check_run_dir(run_dir)
    preflight.check(cfg, res.world_size)
    slurm_dir = Path(run_dir) / "slurm"
    config_path = slurm_dir / "config.yaml"
    script = render(res, single_run_block(run_dir, str(config_path)), str(slurm_dir / "%x-%j.out"),
                    job_name=f"megadlm-{cfg.run.name}")
    if dry_run:
        return {"script": script, "run_dir": run_dir, "job_id": None}
    sbatch_test_only(script)
    created = not os.path.exists(run_dir)
    try:
        slurm_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(config_path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        script_path = slurm_dir / SCRIPT_NAME
        write_atomically(script_path, script)
        job_id = sbatch(str(script_path))
    except BaseException:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    record = record_job(slurm_dir, job_id, res, script_path, run_dir=run_dir)
    return {"script": script, "run_dir": run_dir, **record}
