#!/usr/bin/env python
"""The crossover runs' validation curves in one picture (the same 16 KiB of unique data, so epochs
line up even though the arms ran for different numbers of them, which `megadlm report` keeps apart).

    python docs/results/cpu_repro_crossover/plot.py runs/sweeps/cpu_repro_crossover \\
        runs/sweeps/cpu_repro_crossover_ar --out docs/results/cpu_repro_crossover/val_loss_all.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweeps", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from megadlm.reporting.experiment import collect

    fig, ax = plt.subplots(figsize=(9, 5))
    colors: dict[str, str] = {}
    for run in collect(args.sweeps):
        color = colors.setdefault(run.arm, f"C{len(colors)}")
        epochs, losses = [v["epoch"] for v in run.val], [v["val_loss"] for v in run.val]
        ax.plot(epochs, losses, color=color, lw=1.2, label=f"{run.arm} (seed {run.seed})")
        best = min(run.val, key=lambda v: v["val_loss"])
        ax.plot([best["epoch"]], [best["val_loss"]], color=color, marker="*", ms=12, mec="black", mew=0.6)
    ax.set(xscale="log", ylim=(2.1, 3.5), xlabel="epoch over the 16 KiB of unique data (log)",
           ylabel="val loss, nats/byte (AR: NLL; MDM: ELBO bound)",
           title="16 KiB x many epochs: star = each run's best (its kept checkpoint)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
