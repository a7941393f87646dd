"""`megadlm status SWEEP_OR_RUN_DIR`: each run's Slurm state, step, epoch and last losses, from the
job records (RUN_DIR/slurm/jobs.jsonl or SWEEP_DIR/jobs.jsonl), Slurm (`scontrol`, or `sacct` once a
job has left slurmctld's memory) and the runs' metrics.jsonl. Works without Slurm too (metrics only)."""
from __future__ import annotations

import glob
import json
import re
import shutil
import subprocess
from pathlib import Path

from megadlm.errors import EXIT_INTERRUPTED, UserError
from megadlm.rundir import looks_like_run_dir, read_jsonl
from megadlm.rundir import progress as run_progress
from megadlm.slurm.submit import JOBS_FILE
from megadlm.slurm.sweep import LOCAL_RECORDS, MANIFEST

_FIELD = re.compile(r"(\w+)=(\S*)")


def slurm_jobs(job_id: str) -> dict[str, dict]:
    """Slurm's view of a job (all tasks of an array): key '<id>' or '<array id>_<task>'."""
    out: dict[str, dict] = {}
    if shutil.which("scontrol"):
        proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            f = dict(_FIELD.findall(line))
            key = f"{f['ArrayJobId']}_{f['ArrayTaskId']}" if f.get("ArrayTaskId") else f.get("JobId", "")
            out[key] = {"state": f.get("JobState"), "exit_code": f.get("ExitCode"),
                        "restarts": int(f.get("Restarts", 0) or 0), "log": f.get("StdOut"),
                        "job_id": f.get("JobId"), "reason": f.get("Reason")}
    if not out and shutil.which("sacct"):
        proc = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "--format=JobID,State,ExitCode"],
                              capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            parts = line.split("|")
            if len(parts) == 3:
                out[parts[0]] = {"state": parts[1].split()[0], "exit_code": parts[2], "restarts": None,
                                 "log": None, "job_id": parts[0], "reason": None}
    return out


def _local_state(record: dict | None) -> dict | None:
    if record is None:
        return None
    code = record["exit_code"]
    state = "COMPLETED" if code == 0 else "STOPPED" if code == EXIT_INTERRUPTED else "FAILED"
    return {"state": state, "exit_code": f"{code}:0", "restarts": None, "log": record["log"], "job_id": None,
            "reason": None}


def _state(slurm: dict | None, progress: dict) -> str:
    if slurm and slurm.get("state"):
        return slurm["state"]
    if progress["finished"]:
        return "COMPLETED"
    if progress["interrupted"]:
        return "STOPPED"
    return "UNKNOWN" if progress["step"] is not None else "NOT_STARTED"


def collect(path: str) -> list[dict]:
    root = Path(path)
    if (root / MANIFEST).is_file():
        manifest = json.loads((root / MANIFEST).read_text())
        jobs = read_jsonl(str(root / JOBS_FILE), partial_ok=True)
        array_id = jobs[-1]["job_id"] if jobs else None
        states = slurm_jobs(array_id) if array_id else {}
        # `megadlm sweep --local`
        local = {r["index"]: r for r in read_jsonl(str(root / LOCAL_RECORDS), partial_ok=True)}
        rows = []
        for p in manifest["points"]:
            slurm = states.get(f"{array_id}_{p['index']}") or _local_state(local.get(p["index"]))
            logs = (sorted(glob.glob(str(root / "logs" / f"*-{array_id}_{p['index']}.out")))
                    if array_id else [])
            rows.append(_row(p["name"], p["run_dir"], slurm, f"{array_id}_{p['index']}" if array_id else None,
                             (slurm or {}).get("log") or (logs[-1] if logs else None)))
        return rows
    if looks_like_run_dir(str(root)):
        jobs = read_jsonl(str(root / "slurm" / JOBS_FILE), partial_ok=True)
        job_id = jobs[-1]["job_id"] if jobs else None
        slurm = slurm_jobs(job_id).get(job_id) if job_id else None
        logs = sorted(glob.glob(str(root / "slurm" / f"*-{job_id}.out"))) if job_id else []
        return [_row(root.name, str(root), slurm, job_id,
                     (slurm or {}).get("log") or (logs[-1] if logs else None))]
    raise UserError(f"{path} is neither a sweep directory ({MANIFEST}) nor a run directory (metrics.jsonl, "
                    f"slurm/ or checkpoints/)")


def _row(name: str, run_dir: str, slurm: dict | None, job: str | None, log: str | None) -> dict:
    progress = run_progress(run_dir)
    return {"name": name, "state": _state(slurm, progress), "job": job,
            "exit_code": (slurm or {}).get("exit_code"), "restarts": (slurm or {}).get("restarts"),
            **progress, "run_dir": run_dir, "log": log}


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_rows(rows: list[dict]) -> str:
    header = (f"{'run':<28} {'state':<11} {'step':>11} {'epoch':>7} {'loss':>8} {'val':>8} "
              f"{'restarts':>8}  job")
    lines = [header]
    for r in rows:
        step = f"{_fmt(r['step'], 'd')}/{_fmt(r['total_steps'], 'd')}"
        lines.append(f"{r['name'][:28]:<28} {r['state']:<11} {step:>11} {_fmt(r['epoch'], '.2f'):>7} "
                     f"{_fmt(r['loss'], '.4f'):>8} {_fmt(r['val_loss'], '.4f'):>8} "
                     f"{_fmt(r['restarts'], 'd'):>8}  "
                     f"{r['job'] or '-'}")
        if r["state"] not in ("COMPLETED", "RUNNING", "PENDING") and r["log"]:
            lines.append(f"    {r['state'].lower()}: exit code {r['exit_code'] or '-'}, log {r['log']}")
    return "\n".join(lines)
