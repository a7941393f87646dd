"""Saving and resuming a run directory through DeepSpeed's checkpoint engine.

Layout: RUN_DIR/checkpoints/step_00000100/ holds DeepSpeed's model/optimizer files, one RNG file
per rank, and our client state (step, the global consumed-sample counter, tokens seen); DeepSpeed's
`latest` file names the newest tag. The data position is the consumed-sample counter only, which
does not depend on the world size.
"""
from __future__ import annotations

import os
import random
import shutil
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist

from megadlm.errors import TrainingError

CHECKPOINT_DIR = "checkpoints"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps completed
    consumed_samples: int = 0  # global samples consumed (position in the data stream)
    tokens_seen: int = 0


def checkpoint_root(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINT_DIR)


def latest_tag(run_dir: str) -> str | None:
    path = os.path.join(checkpoint_root(run_dir), "latest")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read().strip() or None


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine, run_dir: str, state: TrainState, keep_last: int) -> str:
    tag = f"step_{state.step:08d}"
    root = checkpoint_root(run_dir)
    engine.save_checkpoint(root, tag=tag, client_state={"train_state": asdict(state)}, save_latest=False)
    # DeepSpeed does not save RNG state; dropout and attention dropout need it for an exact resume.
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.save(_rng_state(), os.path.join(root, tag, f"rng_rank{rank:05d}.pt"))
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        # `latest` moves only once every rank has written everything of this tag.
        with open(os.path.join(root, "latest.tmp"), "w") as f:
            f.write(tag)
        os.replace(os.path.join(root, "latest.tmp"), os.path.join(root, "latest"))
        if keep_last > 0:
            _prune(root, keep_last)
    if dist.is_initialized():
        dist.barrier()
    return tag


def _prune(root: str, keep_last: int) -> None:
    tags = sorted(d for d in os.listdir(root) if d.startswith("step_") and os.path.isdir(os.path.join(root, d)))
    for old in tags[:-keep_last]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)


def load(engine, run_dir: str) -> TrainState:
    """Restore engine, RNG and counters from the newest checkpoint. Returns the train state."""
    root = checkpoint_root(run_dir)
    tag = latest_tag(run_dir)
    path, client = engine.load_checkpoint(root, tag=tag)
    if path is None or "train_state" not in (client or {}):
        raise TrainingError(f"checkpoint {os.path.join(root, str(tag))} could not be loaded as a megadlm "
                            f"checkpoint of this model and layout (see DeepSpeed's message above): resume "
                            f"with the layout it was saved with, or start a new --run-dir")
    rank = dist.get_rank() if dist.is_initialized() else 0
    rng_file = os.path.join(root, tag, f"rng_rank{rank:05d}.pt")
    if os.path.exists(rng_file):  # absent when resuming with more ranks than were saved
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return TrainState(**client["train_state"])
