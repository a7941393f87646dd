"""Downstream scores over training: each evaluated checkpoint of each run, by epoch.

A run's evaluations are the `results.json` files `megadlm eval` wrote anywhere under its directory
(e.g. `megadlm eval RUN/checkpoints/step_00001600 --tasks paper6 --out RUN/eval/step_00001600`). Those
of a checkpoint (`model.checkpoint` names `.../step_NNNNNNNN`) are placed at that step's epoch, read
from the run's own metrics. A series is (task, metric, estimator); in the plot, accuracies of every
arm share a task's panel (a right answer is a right answer whatever estimated the likelihoods), while
bits/byte only shares one with the same estimator's (an MC-ELBO is a bound, not the NLL).

Per task the score is lm-eval's `acc_norm` where the task reports it, else `acc`, else `exact_match`,
else `bits_per_byte` (lower is better); the suite average is the mean of an estimator's accuracy-like
(higher is better) task scores, over the steps where all of them were evaluated. Best-by-validation
is the evaluated checkpoint at the step with the lowest validation loss (what `checkpoint.keep_best:
val_loss` keeps); final is the last evaluated one.
"""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from megadlm.rundir import read_metrics

# lm-eval metric names, in the order one is chosen as a task's score; True: higher is better
SCORE_METRICS = (("acc_norm", True), ("acc", True), ("exact_match", True), ("bits_per_byte", False))
STEP = re.compile(r"step_(\d+)$")
AVERAGE = "average"


@dataclass
class Series:
    """One run's score on one (task, metric, estimator) at each evaluated step."""

    run_dir: str
    arm: str
    seed: int | None
    task: str
    metric: str
    estimator: str
    higher_is_better: bool
    points: dict[int, tuple[float, float]] = field(default_factory=dict)  # step -> (epoch, score)


def checkpoint_step(record: dict) -> int | None:
    """The step of the checkpoint a results.json record scored (None: an HF export or unknown)."""
    match = STEP.search(str((record.get("model") or {}).get("checkpoint") or "").rstrip("/"))
    return None if match is None else int(match.group(1))


def score_of(metrics: dict) -> tuple[str, float, bool] | None:
    """(metric, value, higher is better) for one task's lm-eval results, by SCORE_METRICS' order."""
    for name, higher in SCORE_METRICS:
        for key, value in metrics.items():
            if key.split(",")[0] == name and "stderr" not in key and isinstance(value, (int, float)):
                return name, float(value), higher
    return None


def estimator_label(evaluator: dict) -> str:
    """How a results.json record's likelihoods were estimated, as report columns name it."""
    return evaluator.get("estimator", "?") + (f" mc={evaluator['mc_num']}" if evaluator.get("mc_num") else "")


def _epochs_by_step(run_dir: str) -> tuple[dict[int, float], dict[int, float]]:
    epochs, val_loss = {}, {}
    for record in read_metrics(run_dir, partial_ok=True):
        if record.get("kind") in ("train", "val") and "epoch" in record:
            epochs[record["step"]] = record["epoch"]
        if record.get("kind") == "val" and record.get("val_loss") is not None:
            val_loss[record["step"]] = record["val_loss"]
    return epochs, val_loss


def _epoch_at(step: int | None, epochs: dict[int, float]) -> float | None:
    """The epoch at `step`: recorded there, else scaled from the nearest recorded step (a checkpoint
    saved between logged steps: a stop request, a save interval that is not a log interval's multiple)."""
    if step is None or not epochs:
        return None
    if step in epochs:
        return epochs[step]
    nearest = min((s for s in epochs if s > 0), key=lambda s: abs(s - step), default=None)
    return None if nearest is None else epochs[nearest] * step / nearest


def run_series(run) -> tuple[list[Series], dict[int, float]]:
    """A reporting Run's per-checkpoint series (with an AVERAGE series per estimator), and its
    validation loss by step."""
    epochs, val_loss = _epochs_by_step(run.run_dir)
    series: dict[tuple[str, str, str], Series] = {}
    for record in run.evals:
        step = checkpoint_step(record)
        epoch = _epoch_at(step, epochs)
        if epoch is None:
            continue  # not a checkpoint (an HF export), or a run without step records
        estimator = estimator_label(record["evaluator"])
        for task, metrics in record["tasks"].items():
            scored = score_of(metrics)
            if scored is None:
                continue
            metric, value, higher = scored
            key = (task, metric, estimator)
            s = series.setdefault(key, Series(run.run_dir, run.arm, run.seed, task, metric, estimator,
                                              higher))
            s.points[step] = (epoch, value)
    found = list(series.values())
    for estimator in dict.fromkeys(s.estimator for s in found):
        members = [s for s in found if s.estimator == estimator and s.higher_is_better]
        if len(members) < 2:
            continue  # one task is its own average
        steps = set.intersection(*(set(s.points) for s in members))
        average = Series(run.run_dir, run.arm, run.seed, AVERAGE, "mean score", estimator, True)
        for step in sorted(steps):
            average.points[step] = (members[0].points[step][0],
                                    statistics.fmean(s.points[step][1] for s in members))
        if average.points:
            found.append(average)
    return found, val_loss


def summarise(series: Series, val_loss: dict[int, float]) -> dict:
    """The score at best-by-validation, at the final evaluated step and the best over checkpoints."""
    steps = sorted(series.points)
    with_val = [s for s in steps if s in val_loss]
    best_val_step = min(with_val, key=lambda s: val_loss[s]) if with_val else None
    pick = max if series.higher_is_better else min
    best_step = pick(steps, key=lambda s: series.points[s][1])
    return {"best_val_step": best_val_step,
            "at_best_val": None if best_val_step is None else series.points[best_val_step][1],
            "final_step": steps[-1], "at_final": series.points[steps[-1]][1],
            "best_step": best_step, "best": series.points[best_step][1],
            "best_epoch": series.points[best_step][0]}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def downstream_rows(per_run: list[tuple[list[Series], dict[int, float]]]) -> list[dict]:
    """Per (arm, task, metric, estimator): means over the arm's runs of summarise()'s three scores.
    `per_run`: run_series() of each run."""
    grouped: dict[tuple, list[dict]] = {}
    for series, val_loss in per_run:
        for s in series:
            key = (s.arm, s.task, s.metric, s.estimator)
            grouped.setdefault(key, []).append({"seed": s.seed, "checkpoints": len(s.points),
                                                "higher_is_better": s.higher_is_better,
                                                **summarise(s, val_loss)})
    rows = []
    for (arm, task, metric, estimator), members in grouped.items():
        rows.append({"arm": arm, "task": task, "metric": metric, "estimator": estimator,
                     "higher_is_better": members[0]["higher_is_better"],
                     "seeds": [m["seed"] for m in members],
                     "checkpoints": [m["checkpoints"] for m in members],
                     "at_best_val": _mean([m["at_best_val"] for m in members]),
                     "at_final": _mean([m["at_final"] for m in members]),
                     "best": _mean([m["best"] for m in members]),
                     "best_epoch": _mean([m["best_epoch"] for m in members])})
    return rows


def _panel(s: Series) -> tuple[str, str, str | None]:
    """Accuracies of every arm share a panel whatever estimator scored them (a right answer is one);
    likelihood-like scores (lower is better) only with the same estimator's (an ELBO is a bound)."""
    return s.task, s.metric, None if s.higher_is_better else s.estimator


def plot_downstream(per_run: list[tuple[list[Series], dict[int, float]]], out_png: Path, title: str) -> bool:
    """One panel per task (and estimator, see _panel), the suite average last; a line per run, a colour
    per arm; star: best-by-validation, square: final. `per_run`: run_series() of each run. Returns
    False (and writes nothing) without data."""
    panels = sorted({_panel(s) for series, _ in per_run for s in series},
                    key=lambda p: (p[0] == AVERAGE, p[0], p[1], p[2] or ""))
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    colors: dict[str, str] = {}
    for ax, panel in zip(axes.flat, panels):
        labelled = set()
        for series, val_loss in per_run:
            for s in series:
                if _panel(s) != panel:
                    continue
                color = colors.setdefault(s.arm, f"C{len(colors) % 10}")
                steps = sorted(s.points)
                label = s.arm if panel[2] else f"{s.arm} [{s.estimator}]"
                ax.plot([s.points[t][0] for t in steps], [s.points[t][1] for t in steps], color=color,
                        marker=".", lw=1.1, label=None if label in labelled else label)
                labelled.add(label)
                facts = summarise(s, val_loss)
                if facts["best_val_step"] is not None:
                    ax.plot(*s.points[facts["best_val_step"]], color=color, marker="*", ms=12, mec="black",
                            mew=0.6)
                ax.plot(*s.points[facts["final_step"]], color=color, marker="s", ms=6, mec="black", mew=0.6)
        task, metric, estimator = panel
        arrow = "lower is better" if estimator else "higher is better"
        ax.set(title=f"{task}: {metric}" + (f" [{estimator}]" if estimator else ""), xlabel="epoch",
               ylabel=f"{metric} ({arrow})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{title}\n(star: best by validation loss; square: final evaluated checkpoint)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return True
