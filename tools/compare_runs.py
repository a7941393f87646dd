#!/usr/bin/env python
"""Compare the per-step training losses and grad norms of two run directories.

    python tools/compare_runs.py RUN_A RUN_B

Prints the steps both logged, max |Δloss|, max |Δgrad_norm| and whether they are bit-identical;
used to check layouts (1 process vs DP2, GAS) and resumes against a reference run.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def train_records(run: str) -> dict[int, dict]:
    from megadlm.rundir import read_metrics

    if not (Path(run) / "metrics.jsonl").exists():
        raise SystemExit(f"{run} has no metrics.jsonl")
    return {r["step"]: r for r in read_metrics(run) if r.get("kind") == "train"}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    a, b = (train_records(r) for r in argv)
    steps = sorted(set(a) & set(b))
    if not steps:
        print("no common steps")
        return 1
    dloss = max(abs(a[s]["loss"] - b[s]["loss"]) for s in steps)
    dnorm = max(abs((a[s]["grad_norm"] or 0) - (b[s]["grad_norm"] or 0)) for s in steps)
    identical = all(a[s]["loss"] == b[s]["loss"] for s in steps)
    print(json.dumps({"steps": len(steps), "max_abs_loss_diff": dloss, "max_abs_grad_norm_diff": dnorm,
                      "bit_identical_losses": identical}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
