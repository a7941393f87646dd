"""What a run directory holds, and the readers that answer questions about it. Torch-free: the CLI,
stop handling, the Slurm job script's requeue check, `megadlm status`, sweeps and reports all read
run directories through this module, so they agree on what they see.

    RUN_DIR/config.yaml        the resolved config of the newest attempt
    RUN_DIR/deepspeed.json     the DeepSpeed config that attempt's engine was given
    RUN_DIR/metrics.jsonl      one JSON record per line: start, train, val, skip, summary
    RUN_DIR/STOP               a stop request (removed once honoured)
    RUN_DIR/checkpoints/       step_NNNNNNNN/ (each with megadlm_manifest.json) and `latest`;
                               with checkpoint.keep_best, one manifest is marked "best"
    RUN_DIR/logs/              per-rank logs: library warnings, stack dumps of a hang

An *attempt* is one launch of the trainer: its `start` record, its steps and, unless it crashed,
its `summary` record. Both carry the attempt id the launcher chose (MEGADLM_ATTEMPT), so a launcher
can tell its own attempt's outcome from an older one's.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

CONFIG = "config.yaml"
DEEPSPEED_CONFIG = "deepspeed.json"
METRICS = "metrics.jsonl"
STOP = "STOP"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
CHECKPOINT_MANIFEST = "megadlm_manifest.json"
LOGS = "logs"
ATTEMPT_ENV = "MEGADLM_ATTEMPT"
CHECKPOINT_TAG = re.compile(r"step_\d+")


def resolve_run_dir(cfg, explicit: str | None = None) -> str:
    """The run directory of a config: --run-dir, else run.run_dir, else runs/<run.name>, absolute."""
    return os.path.abspath(explicit or cfg.run.run_dir or os.path.join("runs", cfg.run.name))


def metrics_path(run_dir: str) -> str:
    return os.path.join(run_dir, METRICS)


def checkpoint_root(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINTS)


def stop_path(run_dir: str) -> str:
    return os.path.join(run_dir, STOP)


def rank_log_path(run_dir: str, rank: int) -> str:
    return os.path.join(run_dir, LOGS, f"rank{rank:05d}.log")


def is_checkpoint_tag(name: str) -> bool:
    """Whether a name in RUN_DIR/checkpoints is a checkpoint's (step_NNNNNNNN), not something kept
    beside them (a `megadlm eval` export step_N.hf, a save's .incomplete_ directory)."""
    return CHECKPOINT_TAG.fullmatch(name) is not None


def has_checkpoint_dirs(run_dir: str) -> bool:
    """Whether RUN_DIR/checkpoints holds any step_* directory (complete or not: not verified)."""
    root = checkpoint_root(run_dir)
    return os.path.isdir(root) and any(is_checkpoint_tag(name) for name in os.listdir(root))


def read_checkpoint_manifest(directory: str) -> dict | None:
    """A checkpoint directory's manifest, or None when it has none or it does not parse (a save in
    progress, a damaged file: `checkpoint.verify` says which)."""
    try:
        with open(os.path.join(directory, CHECKPOINT_MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def best_checkpoint(run_dir: str) -> tuple[str, dict] | None:
    """(path, its "best" mark: metric, value, step) of the checkpoint kept by checkpoint.keep_best,
    or None. A crash between marking a new best and unmarking the old one leaves two marks: the
    lower value is the best. The files are not verified here (loading a checkpoint does that)."""
    root = checkpoint_root(run_dir)
    if not os.path.isdir(root):
        return None
    marked = []
    for name in sorted(os.listdir(root)):
        manifest = read_checkpoint_manifest(os.path.join(root, name)) if is_checkpoint_tag(name) else None
        mark = (manifest or {}).get("best")
        if mark:
            marked.append((mark["value"], os.path.join(root, name), mark))
    if not marked:
        return None
    _, path, mark = min(marked, key=lambda m: (m[0], m[1]))
    return path, mark


def looks_like_run_dir(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, name)) for name in (METRICS, CHECKPOINTS, "slurm"))


def read_jsonl(path: str, partial_ok: bool = False) -> list[dict]:
    """The records of a JSONL file ([] if it does not exist). `partial_ok` skips lines that do not
    parse: a file another process is appending to may end in half a line."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if not partial_ok:
                    raise
    return records


def read_metrics(run_dir: str, partial_ok: bool = False) -> list[dict]:
    return read_jsonl(metrics_path(run_dir), partial_ok)


@dataclass
class Attempt:
    """The newest attempt recorded in metrics.jsonl."""

    start: dict
    summary: dict | None  # None: the attempt is still running, or it crashed

    @property
    def attempt_id(self) -> str | None:
        return self.start.get("attempt")

    @property
    def stopped_on_request(self) -> bool:
        """Checkpointed and stopped because it was asked to (signal or STOP file): resume it."""
        return bool(self.summary and self.summary.get("interrupted") and not self.summary.get("finished"))

    @property
    def finished(self) -> bool:
        return bool(self.summary and self.summary.get("finished"))


def last_attempt(run_dir: str) -> Attempt | None:
    """The newest attempt, or None when no attempt has logged its start. A summary only belongs to
    the newest start if it comes after it: a later start without a summary is a crash (or a run
    in progress), whatever older attempts said."""
    start, summary = None, None
    for record in read_metrics(run_dir, partial_ok=True):  # the run may be writing it right now
        kind = record.get("kind")
        if kind == "start":
            start, summary = record, None
        elif kind == "summary" and start is not None:
            summary = record
    return Attempt(start, summary) if start is not None else None


def attempt_stopped_on_request(run_dir: str, attempt_id: str | None = None) -> bool:
    """Whether the newest attempt stopped on request; with `attempt_id`, only if it is that attempt
    (an attempt that crashed before logging its start leaves the previous one's records)."""
    attempt = last_attempt(run_dir)
    if attempt is None or not attempt.stopped_on_request:
        return False
    return attempt_id is None or attempt.attempt_id == attempt_id


def progress(run_dir: str) -> dict:
    """Where a run stands, from its metrics: step, epoch, last losses, finished or stopped."""
    records = read_metrics(run_dir, partial_ok=True)
    start = next((r for r in reversed(records) if r.get("kind") == "start"), {})
    train = next((r for r in reversed(records) if r.get("kind") == "train"), {})
    val = next((r for r in reversed(records) if r.get("kind") == "val"), {})
    attempt = last_attempt(run_dir)
    return {"step": train.get("step", start.get("step")), "total_steps": start.get("total_steps"),
            "epoch": train.get("epoch"), "loss": train.get("loss"), "val_loss": val.get("val_loss"),
            "finished": bool(attempt and attempt.finished),
            "interrupted": bool(attempt and attempt.stopped_on_request),
            "restarts_seen": start.get("restarts")}
