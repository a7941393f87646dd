"""`megadlm eval RUN_DIR --checkpoints all|best|final --out DIR`: score a run's kept checkpoints.

Each chosen checkpoint is scored as `megadlm eval CKPT --out DIR/<checkpoint name>` would score it, in
this one process (lm-eval is imported once; its task index comes from the cache each time). A
checkpoint whose DIR/<name>/results.json exists is skipped, so a rerun after a failure or after
training went on scores only what is missing. Exports are made in DIR/.export-<name> and removed
once scored (a kept checkpoint's export would otherwise double the run's storage); `--export-dir`
keeps them there instead. `megadlm report` then plots the scores by epoch (reporting/downstream.py).

- all: every checkpoint whose checksums verify, oldest first (unusable ones are named and skipped);
- best: the one `checkpoint.keep_best` marked;
- final: the newest that verifies.
"""
from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

from megadlm.evaluation.models import EvalError
from megadlm.evaluation.run import RESULTS_FILE, EvalRequest, run_eval

CHOICES = ("all", "best", "final")


def chosen_checkpoints(run_dir: str, which: str) -> list[Path]:
    """The checkpoints `which` names in `run_dir` (EvalError when there are none)."""
    from megadlm.rundir import best_checkpoint, looks_like_run_dir
    from megadlm.train import checkpoint as ckpt

    if which not in CHOICES:
        raise EvalError(f"--checkpoints {which}: choose one of {', '.join(CHOICES)}")
    if not (looks_like_run_dir(run_dir) and ckpt.has_checkpoints(run_dir)):
        raise EvalError(f"--checkpoints needs a run directory with checkpoints; {run_dir} is not one "
                        f"(for one checkpoint or export, drop --checkpoints)")
    if which == "best":
        found = best_checkpoint(run_dir)
        if found is None:
            raise EvalError(f"no checkpoint of {run_dir} is marked best: the run needs "
                            f"checkpoint.keep_best: val_loss (or use --checkpoints all|final)")
        return [Path(found[0])]
    if which == "final":
        return [Path(ckpt.choose(run_dir)[0])]
    usable = []
    for path in sorted(ckpt.candidate_paths(run_dir)):
        _, problem = ckpt.verify(path)
        if problem is None:
            usable.append(Path(path))
        else:
            print(f"megadlm: skipping checkpoint {path}: {problem}", file=sys.stderr)
    if not usable:
        raise EvalError(f"no checkpoint of {run_dir} verifies: nothing to score")
    return usable


def score_checkpoints(req: EvalRequest, which: str) -> list[tuple[Path, dict | None]]:
    """Score each chosen checkpoint into OUT/<name>; (checkpoint, its record, or None when it was
    already scored) in checkpoint order."""
    checkpoints = chosen_checkpoints(req.model, which)
    out = Path(req.out)
    done = []
    for checkpoint in checkpoints:
        target = out / checkpoint.name
        if (target / RESULTS_FILE).exists():
            done.append((checkpoint, None))
            continue
        keep = req.export_dir is not None
        export = Path(req.export_dir or out) / (checkpoint.name if keep else f".export-{checkpoint.name}")
        one = dataclasses.replace(req, model=str(checkpoint), out=str(target), export_dir=str(export))
        try:
            done.append((checkpoint, run_eval(one)))
        finally:
            if not keep:
                shutil.rmtree(export, ignore_errors=True)
    return done
