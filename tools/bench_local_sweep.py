#!/usr/bin/env python
"""How many points of a local sweep to train at once on this machine.

Runs the same small sweep (two arms of the demo model on byte-level pydoc data, one process each)
twice through the real `megadlm sweep --local`: once one point at a time with all cores, once
`--parallel 2` with the cores split between the two. Prints the wall time of each, their ratio, and
how far apart the two orders' final validation losses are (a different thread count may change the
fp32 reduction order; on this machine's CPU kernels it measured 0).

    python tools/bench_local_sweep.py               # about 3 minutes on 2 cores
    python tools/bench_local_sweep.py --steps 4     # smoke run (tests use it)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_grid(root: Path, data: Path, steps: int, name: str) -> Path:
    grid = {"name": name, "out": str(root / name), "base": "demo",
            "set": {"data.path": str(data), "schedule.max_steps": steps, "schedule.global_batch_size": 32,
                    "schedule.micro_batch_size": 16, "logging.eval_interval": steps,
                    "logging.progress_bar": False, "checkpoint.interval": 0},
            "arms": {"mdm": {"objective.type": "mdm"}, "ar": {"objective.type": "ar"}}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def run_sweep(grid: Path, parallel: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("WANDB_MODE", "disabled")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "megadlm", "sweep", str(grid), "--local",
                    "--parallel", str(parallel)],
                   check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def final_val_losses(sweep_dir: Path) -> dict:
    """Each point's last validation loss (every point validates at its last step)."""
    from megadlm.rundir import progress as run_progress

    return {run.name: run_progress(str(run))["val_loss"] for run in sorted((sweep_dir / "runs").iterdir())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200, help="training steps per point (default 200)")
    ap.add_argument("--out", help="also write the result as JSON here")
    args = ap.parse_args()

    from megadlm.data.corpus import write_pydoc_corpus
    from megadlm.data.prepare import prepare

    with tempfile.TemporaryDirectory(prefix="bench_local_sweep_") as tmp:
        root = Path(tmp)
        data = root / "data"
        prepare([str(write_pydoc_corpus(root / "corpus"))], str(data), tokenizer="bytes", seq_len=128,
                val_fraction=0.05, max_tokens=400_000, progress=False)
        serial = run_sweep(write_grid(root, data, args.steps, "serial"), parallel=1)
        parallel = run_sweep(write_grid(root, data, args.steps, "parallel"), parallel=2)
        a, b = final_val_losses(root / "serial"), final_val_losses(root / "parallel")
    diff = max(abs(a[name] - b[name]) for name in a)
    result = {"cpus": os.cpu_count(), "points": 2, "steps": args.steps, "serial_s": serial,
              "parallel2_s": parallel, "speedup": serial / parallel, "max_final_val_loss_diff": diff}
    print(f"2 points x {args.steps} steps on {os.cpu_count()} CPUs: one at a time {serial:.1f} s, "
          f"two at once {parallel:.1f} s -> {serial / parallel:.2f}x; final val losses differ by {diff:.2e}")
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
