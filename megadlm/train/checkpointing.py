"""The checkpointing component of the training loop: it owns when a checkpoint is written, what it
records besides the engine (retention, the run's facts, the resolved config, DeepSpeed's universal
checkpoint info) and how a run resumes or rolls back. The file format is `checkpoint.py`'s."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from megadlm.config.schema import CheckpointConfig
from megadlm.errors import CheckpointError, DivergenceError, RunDirError
from megadlm.preflight import RunFacts
from megadlm.train import checkpoint as ckpt


@dataclass
class ResumePoint:
    """A verified checkpoint to continue from."""

    path: str
    manifest: dict

    @property
    def universal(self) -> bool:
        return bool(self.manifest["facts"]["layout"].get("universal"))


def resume_point(run_dir: str, facts: RunFacts, resume: bool = True,
                 resume_from: str | None = None) -> ResumePoint | None:
    """The verified checkpoint a run continues from (None: a new run), after every check and before
    anything is written. Collective when a process group exists; also runs without one (a launcher
    checks before it starts the workers)."""
    if not resume:
        if ckpt.has_checkpoints(run_dir):
            raise RunDirError(f"{run_dir} already holds checkpoints and --no-resume was given: "
                              f"choose another --run-dir or drop --no-resume to continue that run")
        return None
    chosen = ckpt.choose(run_dir, resume_from)
    if chosen is None:
        return None
    from megadlm.train.universal import checkpoint_for_layout

    # refuses what cannot fit before anything is written; another DP size or ZeRO 1<->2 is converted once
    chosen = checkpoint_for_layout(*chosen, facts, run_dir)
    problems = ckpt.compatibility_problems(chosen[1]["facts"], facts)
    if problems:
        raise CheckpointError(f"cannot resume from {chosen[0]}: " + "; ".join(problems)
                              + ". Nothing in the run directory was changed.")
    return ResumePoint(*chosen)


class Checkpointer:
    """Saves at every `checkpoint.interval` steps and once at the end (when `save_final`, or when
    the run stops before its last step so that it can resume), never twice for one step. With
    `checkpoint.keep_best`, also at each validation that beats every earlier one (of this run
    directory, across resumes): that checkpoint is marked best and outlives retention."""

    def __init__(self, run_dir: str, settings: CheckpointConfig, total_steps: int, epoch_samples: int,
                 facts: RunFacts, resolved_config: dict, is_main: bool):
        self.run_dir = run_dir
        self.epoch_samples = epoch_samples
        self.settings = settings
        self.total_steps = total_steps
        self.retention = ckpt.Retention(settings.keep_last, settings.keep_every)
        self.facts = facts
        self.resolved_config = resolved_config
        self.is_main = is_main
        self.engine: Any = None
        self.client_extra: dict = {}
        self.saved_step: int | None = None
        # the best so far, as the run directory records it (a resumed run goes on from it)
        self.best = ckpt.best_mark(run_dir) if settings.keep_best != "none" else None

    def bind(self, engine: Any, client_extra: dict | None = None) -> None:
        """The engine whose state is saved, and what else each checkpoint's client state holds."""
        self.engine = engine
        self.client_extra = dict(client_extra or {})

    def restore(self, point: ResumePoint) -> ckpt.TrainState:
        state = ckpt.load(self.engine, point.path, point.manifest)
        if self.is_main:
            epoch = state.consumed_samples / self.epoch_samples
            print(f"megadlm: resumed from step {state.step} (epoch {epoch:.2f}, checkpoint {point.path})",
                  file=sys.stderr, flush=True)
        return state

    def due(self, step: int, final: bool = False) -> bool:
        if step == self.saved_step:
            return False
        if final:
            stopped_early = step < self.total_steps
            return ((self.settings.save_final or stopped_early)
                    and ckpt.latest_tag(self.run_dir) != ckpt.tag_of(step))
        return bool(self.settings.interval) and step % self.settings.interval == 0

    def maybe_save(self, state: ckpt.TrainState, final: bool = False) -> str | None:
        """Save if due (a collective: every rank decides the same); returns the tag written."""
        if not self.due(state.step, final):
            return None
        return self._save(state)

    def after_validation(self, state: ckpt.TrainState, val_loss: float) -> str | None:
        """checkpoint.keep_best: save and mark this step when its validation loss is the best yet
        (a collective: the loss is reduced, so every rank decides the same); returns the tag."""
        if self.settings.keep_best == "none" or not math.isfinite(val_loss):
            return None
        if self.best is not None and val_loss >= self.best["value"]:
            return None
        best = {"metric": self.settings.keep_best, "value": val_loss, "step": state.step}
        tag = self._save(state, best)
        self.best = best
        return tag

    def _save(self, state: ckpt.TrainState, best: dict | None = None) -> str:
        tag = ckpt.save(self.engine, self.run_dir, state, self.retention, self.facts, self.resolved_config,
                        self.client_extra, best=best)
        self.saved_step = state.step
        return tag

    def roll_back(self, state: ckpt.TrainState, error: DivergenceError, max_skips: int) -> ckpt.TrainState:
        """Restore the newest checkpoint (weights, optimizer, RNG) and mark the global batch that
        diverged to be skipped when the replay reaches it."""
        bad = state.consumed_samples
        if len(state.skipped_batches) >= max_skips:
            raise DivergenceError(f"{error} (run.on_nan=skip already skipped run.max_skips={max_skips} "
                                  f"batches: the run is diverging, not unlucky)")
        chosen = ckpt.choose(self.run_dir)
        if chosen is None:
            raise DivergenceError(f"{error} (run.on_nan=skip needs a checkpoint to roll back to: set "
                                  f"checkpoint.interval)")
        restored = ckpt.load(self.engine, *chosen)
        restored.skipped_batches = sorted(set(restored.skipped_batches) | set(state.skipped_batches) | {bad})
        return restored
