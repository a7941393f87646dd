"""`python -m megadlm.slurm.interrupted RUN_DIR`: exit 0 if the run's last attempt stopped on request
(checkpointed, resumable), 1 otherwise. Used by the sbatch script; reads metrics.jsonl only (no torch)."""
from __future__ import annotations

import json
import os
import sys


def last_summary(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    summary = None
    with open(path) as f:
        for line in f:
            if '"summary"' in line:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("kind") == "summary":
                    summary = record
    return summary


def main(argv: list[str]) -> int:
    summary = last_summary(argv[0])
    return 0 if summary and summary.get("interrupted") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
