"""`python -m megadlm.slurm.interrupted RUN_DIR`: exit 0 if the run's last attempt stopped on request
(checkpointed, resumable) and is this job attempt's, 1 otherwise. Used by the sbatch script to decide
whether to requeue; reads metrics.jsonl only (no torch)."""
from __future__ import annotations

import os
import sys

from megadlm.rundir import last_attempt


def main(argv: list[str]) -> int:
    attempt = last_attempt(argv[0])
    if attempt is None or not attempt.stopped_on_request:
        return 1
    # written by this job attempt (a crash before the trainer logs anything leaves the previous one)
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    return 0 if attempt.summary.get("restarts", restarts) == restarts else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
