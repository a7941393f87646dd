"""`python -m megadlm.slurm.interrupted RUN_DIR`: exit 0 if the run's last attempt stopped on request
(checkpointed, resumable), 1 otherwise. Used by the sbatch script; reads metrics.jsonl only (no torch)."""
from __future__ import annotations

import json
import os
import sys


def last_attempt_summary(run_dir: str) -> dict | None:
    """The summary of the newest attempt, or None when that attempt wrote none (it crashed): a
    summary only counts if no later attempt has started since."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    last = None
    with open(path) as f:
        for line in f:
            if '"summary"' not in line and '"start"' not in line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("kind") in ("start", "summary"):
                last = record
    return last if last is not None and last.get("kind") == "summary" else None


def main(argv: list[str]) -> int:
    summary = last_attempt_summary(argv[0])
    if not summary or not summary.get("interrupted"):
        return 1
    # written by this job attempt (a crash before the trainer logs anything leaves the previous one)
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    return 0 if summary.get("restarts", restarts) == restarts else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
