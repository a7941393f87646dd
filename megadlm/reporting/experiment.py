"""`megadlm report RUN_OR_SWEEP_DIRS... --out DIR`: the data-constrained comparison as a report.

Runs are grouped by arm (a sweep point's arm, or the run directory's name) and seeds are pooled.
Runs are only compared with runs of the same data budget (unique tokens, epochs, sequence length,
global batch); each budget gets its own section, and the report says so. Downstream results
(`results.json` written by `megadlm eval` anywhere under a run directory) are tabulated per
task, metric and estimator, so scores from different likelihood estimators never share a column.

Writes DIR/summary.md, DIR/summary.json and per budget DIR/val_loss_<k>.png (validation loss vs
epoch and vs tokens seen, one colour per arm, thin lines per seed).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from megadlm.errors import UserError
from megadlm.reporting.downstream import (
    checkpoint_step,
    downstream_rows,
    estimator_label,
    plot_downstream,
    run_series,
)
from megadlm.rundir import read_metrics

OVERFIT_TOLERANCE = 0.005  # final val loss this far (relative) above the minimum = "turned up"


@dataclass
class Run:
    run_dir: str
    arm: str
    seed: int | None
    objective: str | None
    budget: dict
    val: list[dict] = field(default_factory=list)  # epoch, tokens, val_loss
    evals: list[dict] = field(default_factory=list)


def _evals(run_dir: Path) -> list[dict]:
    found = []
    for path in sorted(run_dir.rglob("results.json")):
        if "checkpoints" in path.parts:
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and "tasks" in record and "evaluator" in record:
            found.append({"path": str(path), **record})
    return found


def load_run(run_dir: str, arm: str | None = None) -> Run:
    root = Path(run_dir)
    config_path = root / "config.yaml"
    if not config_path.is_file():
        raise UserError(f"{run_dir} has no config.yaml: is it a megadlm run directory (has it started)?")
    cfg = yaml.safe_load(config_path.read_text())
    data, schedule = cfg.get("data", {}), cfg.get("schedule", {})
    budget = {"unique_tokens": data.get("unique_tokens"), "epochs": data.get("epochs"),
              "seq_len": data.get("seq_len"), "global_batch_size": schedule.get("global_batch_size"),
              "max_steps": schedule.get("max_steps")}
    val = [{"epoch": r["epoch"], "tokens": r.get("tokens_seen"), "val_loss": r["val_loss"], "step": r["step"]}
           for r in read_metrics(str(root), partial_ok=True)
           if r.get("kind") == "val" and r.get("val_loss") is not None]
    return Run(run_dir=str(root), arm=arm or root.name, seed=(cfg.get("run") or {}).get("seed"),
               objective=(cfg.get("objective") or {}).get("type"), budget=budget, val=val, evals=_evals(root))


def collect(paths: list[str]) -> list[Run]:
    runs = []
    for path in paths:
        manifest = Path(path) / "sweep.json"
        if manifest.is_file():
            for point in json.loads(manifest.read_text())["points"]:
                if (Path(point["run_dir"]) / "config.yaml").is_file():
                    runs.append(load_run(point["run_dir"], point.get("arm") or point["name"]))
        else:
            runs.append(load_run(path))
    if not runs:
        raise UserError(f"no started runs in {', '.join(paths)}")
    return runs


def overfit_onset(val: list[dict], tolerance: float = OVERFIT_TOLERANCE) -> float | None:
    """The epoch of the lowest validation loss if the loss has since risen more than `tolerance`
    (relative) above it; None while the run is still at (or near) its best."""
    if len(val) < 2:
        return None
    best = min(val, key=lambda r: r["val_loss"])
    return best["epoch"] if val[-1]["val_loss"] > best["val_loss"] * (1 + tolerance) else None


def turned_up_at(val: list[dict], tolerance: float = OVERFIT_TOLERANCE) -> float | None:
    """The first epoch after the best at which the validation loss is more than `tolerance`
    (relative) above the best; None when it never is."""
    if not val:
        return None
    best = min(range(len(val)), key=lambda i: val[i]["val_loss"])
    limit = val[best]["val_loss"] * (1 + tolerance)
    return next((r["epoch"] for r in val[best + 1:] if r["val_loss"] > limit), None)


def _budget_key(budget: dict) -> str:
    return json.dumps(budget, sort_keys=True)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def arm_rows(runs: list[Run]) -> list[dict]:
    rows = []
    for arm in dict.fromkeys(r.arm for r in runs):
        members = [r for r in runs if r.arm == arm and r.val]
        if not members:
            continue
        bests = [min(r.val, key=lambda v: v["val_loss"]) for r in members]
        onsets = [overfit_onset(r.val) for r in members]
        rows.append({"arm": arm, "objective": members[0].objective, "seeds": [r.seed for r in members],
                     "best_val": _mean([b["val_loss"] for b in bests]),
                     "best_val_spread": (max(b["val_loss"] for b in bests)
                                         - min(b["val_loss"] for b in bests)),
                     "best_epoch": _mean([b["epoch"] for b in bests]),
                     "final_val": _mean([r.val[-1]["val_loss"] for r in members]),
                     "final_epoch": _mean([r.val[-1]["epoch"] for r in members]),
                     "overfit_onsets": onsets,
                     "turned_up_at": [turned_up_at(r.val) for r in members]})
    return rows


def eval_rows(runs: list[Run]) -> tuple[list[str], list[dict]]:
    """Columns 'task/metric [estimator]' and one row per arm (mean over its runs' results)."""
    cells: dict[tuple[str, str], dict[str, list[float]]] = {}
    evaluated: dict[str, list] = {}  # arm -> seeds of its runs that have results
    for run in runs:
        if run.evals:
            evaluated.setdefault(run.arm, []).append(run.seed)
        per_run: dict[str, list[tuple[int, float]]] = {}  # column -> (checkpoint step or -1, value)
        for record in run.evals:
            estimator = estimator_label(record["evaluator"])
            step = checkpoint_step(record)
            for task, metrics in record["tasks"].items():
                for key, value in metrics.items():
                    if "," not in key or "stderr" in key or not isinstance(value, (int, float)):
                        continue
                    column = f"{task}/{key.split(',')[0]} [{estimator}]"
                    per_run.setdefault(column, []).append((-1 if step is None else step, float(value)))
        for column, values in per_run.items():
            # several checkpoints of one run scored alike: the latest stands for the run here (the
            # downstream-over-training section has them all); otherwise their mean
            latest = max(step for step, _ in values)
            kept = [v for step, v in values if step == latest] if latest >= 0 else [v for _, v in values]
            cells.setdefault((run.arm, column), {}).setdefault("v", []).append(statistics.fmean(kept))
    columns = sorted({c for _, c in cells})
    rows = []
    for arm in dict.fromkeys(r.arm for r in runs):
        row = {"arm": arm, "eval_seeds": evaluated.get(arm, [])}
        for column in columns:
            values = cells.get((arm, column), {}).get("v")
            row[column] = _mean(values) if values else None
        if any(row[c] is not None for c in columns):
            rows.append(row)
    return columns, rows


def _plot(runs: list[Run], out_png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    colors: dict[str, str] = {}
    for run in runs:
        if not run.val:
            continue
        label = None if run.arm in colors else run.arm  # one legend entry per arm, not per seed
        color = colors.setdefault(run.arm, f"C{len(colors) % 10}")
        epochs = [v["epoch"] for v in run.val]
        losses = [v["val_loss"] for v in run.val]
        axes[0].plot(epochs, losses, color=color, lw=1.2, marker=".", label=label)
        if all(v["tokens"] is not None for v in run.val):
            axes[1].plot([v["tokens"] for v in run.val], losses, color=color, lw=1.2, label=label)
        best = min(run.val, key=lambda v: v["val_loss"])
        axes[0].plot([best["epoch"]], [best["val_loss"]], color=color, marker="*", ms=13, mec="black",
                     mew=0.6)
        turned = turned_up_at(run.val)
        if turned is not None:
            axes[0].axvline(turned, color=color, ls=":", lw=1.0)
    axes[0].set(title="validation loss vs epoch (star: best; dotted: turned up, > "
                      f"{OVERFIT_TOLERANCE:.1%} above the best)", xlabel="epoch", ylabel="nats / token")
    axes[1].set(title="validation loss vs tokens seen", xlabel="tokens", ylabel="nats / token")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def _fmt(value, spec=".4f") -> str:
    return "-" if value is None else format(value, spec)


def write_experiment_report(paths: list[str], out_dir: str) -> str:
    runs = collect(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(_budget_key(run.budget), []).append(run)
    lines = ["# Data-constrained comparison", ""]
    if len(groups) > 1:
        lines += [f"These runs have {len(groups)} different data budgets; each budget is reported on its own "
                  f"and never compared with another.", ""]
    summary = {"budgets": []}
    for k, (key, members) in enumerate(groups.items()):
        budget = json.loads(key)
        png = out / f"val_loss_{k}.png"
        _plot(members, png, "budget: " + ", ".join(f"{a}={b}" for a, b in budget.items() if b is not None))
        arms = arm_rows(members)
        columns, evals = eval_rows(members)
        summary["budgets"].append({"budget": budget, "plot": png.name, "arms": arms, "evals": evals,
                                   "runs": [asdict(r) | {"evals": [e["path"] for e in r.evals]}
                                            for r in members]})
        lines += [f"## Budget {k}: " + ", ".join(f"{a} = {b}" for a, b in budget.items() if b is not None),
                  "",
                  f"![validation loss]({png.name})", "",
                  "| arm | objective | seeds | best val | spread | @epoch | final val | @epoch "
                  "| overfitting onset (epoch, per seed) | turned up at (epoch, per seed) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for a in sorted(arms, key=lambda r: r["best_val"]):
            onsets = ", ".join("none" if o is None else f"{o:.2f}" for o in a["overfit_onsets"])
            turned = ", ".join("never" if o is None else f"{o:.2f}" for o in a["turned_up_at"])
            lines.append(f"| {a['arm']} | {a['objective']} | {len(a['seeds'])} | {_fmt(a['best_val'])} | "
                         f"{_fmt(a['best_val_spread'])} | {_fmt(a['best_epoch'], '.2f')} | "
                         f"{_fmt(a['final_val'])} | "
                         f"{_fmt(a['final_epoch'], '.2f')} | {onsets} | {turned} |")
        lines += ["", "Validation loss: AR = NLL per token; MDM = ELBO per token (an upper bound on its "
                      "NLL), in nats. Onset = epoch of the lowest validation loss when the last one is "
                      "more than "
                      f"{OVERFIT_TOLERANCE:.1%} above it; turned up = the first later epoch more than "
                      f"{OVERFIT_TOLERANCE:.1%} above it.", ""]
        if evals:
            lines += ["Downstream (mean over the evaluated seeds, each run's latest evaluated checkpoint; "
                      "the estimator is part of each column):", "",
                      "| arm | seeds evaluated | " + " | ".join(columns) + " |",
                      "|---|---|" + "---|" * len(columns)]
            for row in evals:
                seeds = ", ".join("?" if s is None else str(s) for s in row["eval_seeds"])
                lines.append(f"| {row['arm']} | {seeds} | "
                             + " | ".join(_fmt(row[c]) for c in columns) + " |")
            lines.append("")
        lines += _downstream_section(members, out / f"downstream_{k}.png", summary["budgets"][-1])
    (out / "summary.md").write_text("\n".join(lines))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return "\n".join(lines)


def _downstream_section(members: list[Run], png: Path, budget_summary: dict) -> list[str]:
    """Scores of each evaluated checkpoint by epoch (plot) and, per arm, at best-by-validation, at the
    final evaluated checkpoint and the best over checkpoints (table); nothing without such results."""
    per_run = [run_series(run) for run in members]
    rows = [r for r in downstream_rows(per_run) if max(r["checkpoints"]) > 1]
    if not rows or not plot_downstream(per_run, png, "downstream score vs epoch"):
        return []
    budget_summary["downstream"] = {"plot": png.name, "rows": rows}
    lines = ["Downstream over training (each evaluated checkpoint; means over the arm's seeds):", "",
             f"![downstream]({png.name})", "",
             "| arm | task | metric [estimator] | seeds | checkpoints | at best val | at final | best "
             "| @epoch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["task"] == "average", r["task"], r["estimator"], r["arm"])):
        seeds = ", ".join("?" if s is None else str(s) for s in r["seeds"])
        checkpoints = ", ".join(str(c) for c in r["checkpoints"])
        lines.append(f"| {r['arm']} | {r['task']} | {r['metric']} [{r['estimator']}] | {seeds} "
                     f"| {checkpoints} | {_fmt(r['at_best_val'])} | {_fmt(r['at_final'])} "
                     f"| {_fmt(r['best'])} | {_fmt(r['best_epoch'], '.2f')} |")
    lines += ["", "At best val: the checkpoint at the lowest validation loss among those evaluated (the "
                  "one `checkpoint.keep_best: val_loss` keeps); best: over every evaluated checkpoint "
                  "(highest, or lowest for bits_per_byte), chosen with hindsight on the task itself.", ""]
    return lines


def _bits_per_byte(evals: list[dict], arm: str, task: str) -> tuple[float | None, str]:
    """An arm's mean bits/byte on `task` and its estimator, from eval_rows' columns."""
    for row in evals:
        if row["arm"] != arm:
            continue
        for column, value in row.items():
            if column.startswith(f"{task}/bits_per_byte [") and value is not None:
                return value, column.split("[", 1)[1].rstrip("]")
    return None, ""


def verdict_table(paths: list[str], task: str | None = None) -> str:
    """Per arm, in words: whether and when validation turned up, the best and final validation loss
    and (with `task`) the best checkpoint's held-out bits/byte on equal terms. Means over seeds."""
    runs = collect(paths)
    _, evals = eval_rows(runs)
    lines = []
    for row in arm_rows(runs):
        seeds = len(row["seeds"])
        up = [e for e in row["turned_up_at"] if e is not None]
        rise = (row["final_val"] - row["best_val"]) / row["best_val"]
        if up:
            when = ", ".join(f"{e:g}" for e in up)
            story = (f"validation turned up in {len(up)} of {seeds} seed(s), at epoch {when}, after its best "
                     f"at epoch {row['best_epoch']:g}; by epoch {row['final_epoch']:g} it is {rise:+.1%} "
                     f"above it")
        else:
            story = (f"validation never turned up: at epoch {row['final_epoch']:g} it is {rise:+.1%} from "
                     f"its best (epoch {row['best_epoch']:g})")
        lines.append(f"{row['arm']} ({row['objective']}, {seeds} seed(s)): {story}. "
                     f"Best val {row['best_val']:.4f}, final {row['final_val']:.4f} nats/token.")
        if task:
            bpb, estimator = _bits_per_byte(evals, row["arm"], task)
            if bpb is not None:
                lines.append(f"    held-out {task}, best checkpoint: {bpb:.4f} bits/byte ({estimator})")
    lines.append("Validation loss: AR = NLL, MDM = ELBO (an upper bound on its NLL). Held-out bits/byte: "
                 "AR's exact NLL against MDM's exact left-to-right chain rule, on the same bytes.")
    return "\n".join(lines)
