"""Validation curves of several runs in one picture and one table (rank-0 metrics.jsonl files)."""
from __future__ import annotations

import os

from megadlm.errors import UserError
from megadlm.rundir import read_metrics


def _label(run_dir: str, records: list[dict]) -> str:
    start = next((r for r in records if r.get("kind") == "start"), {})
    return f"{os.path.basename(os.path.normpath(run_dir))} ({start.get('objective', '?')})"


def summarize(run_dir: str) -> dict:
    records = read_metrics(run_dir)
    val = [r for r in records if r.get("kind") == "val"]
    if not val:
        raise UserError(f"{run_dir} has no validation records in metrics.jsonl: "
                        f"train it with a val split (prepare --val-fraction/--val-input)")
    best = min(val, key=lambda r: r["val_loss"])
    return {"run": _label(run_dir, records), "val": val, "best": best, "final": val[-1],
            "train": [r for r in records if r.get("kind") == "train"]}


def format_table(summaries: list[dict]) -> str:
    header = f"{'run':<28} {'epochs':>7} {'final val':>10} {'best val':>9} {'@epoch':>7} {'final bpb':>10}"
    lines = [header, "-" * len(header)]
    for s in summaries:
        final, best = s["final"], s["best"]
        bpb = final.get("val_bits_per_byte")
        lines.append(f"{s['run']:<28} {final['epoch']:>7.2f} {final['val_loss']:>10.4f} "
                     f"{best['val_loss']:>9.4f} {best['epoch']:>7.2f} "
                     f"{(f'{bpb:.4f}' if bpb is not None else '-'):>10}")
    lines.append("val loss: AR = NLL per token; MDM = ELBO per token (an upper bound on NLL), "
                 "fixed validation masks; nats/token")
    return "\n".join(lines)


def write_report(run_dirs: list[str], out_png: str) -> str:
    """Plot val (and train) loss vs epoch for each run into `out_png`; returns the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = [summarize(d) for d in run_dirs]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in summaries:
        line, = axes[0].plot([r["epoch"] for r in s["val"]], [r["val_loss"] for r in s["val"]],
                             marker="o", label=s["run"])
        axes[1].plot([r["epoch"] for r in s["train"]], [r["loss"] for r in s["train"]],
                     color=line.get_color(), alpha=0.7, label=s["run"])
    axes[0].set(title="validation loss vs epoch", xlabel="epoch (passes over the unique data)",
                ylabel="nats / token")
    axes[1].set(title="training loss vs epoch", xlabel="epoch", ylabel="nats / token")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return format_table(summaries)
