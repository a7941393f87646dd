#!/usr/bin/env python
"""What a training rank pays to import mosaicml-streaming, eagerly and the way megadlm imports it.

Each trial is a fresh interpreter that first imports what a rank imports anyway (torch, megatron-core,
DeepSpeed; only torch with --torch-only), then times only the streaming classes the data loader uses:

- eager: `from streaming import Stream, StreamingDataset` (the package __init__ with its text, vision
  and multimodal example datasets, which pull in transformers' AutoTokenizer and scikit-learn);
- deferred: `defer_streaming_package_init()` then `from streaming.base.dataset import ...` (megadlm's
  path: neither package __init__ runs, so neither transformers nor scikit-learn is imported).

The two sides alternate, trial by trial, so machine load hits both alike. Prints each side's median
and their ratio.

    python tools/bench_startup.py              # 5 trials a side, about a minute on 2 cores
    python tools/bench_startup.py --trials 1 --torch-only   # smoke run (tests use it)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TRIAL = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
import torch  # what every rank imports anyway: not timed
if sys.argv[2] == "engine":
    import megatron.core, deepspeed
start = time.perf_counter()
if sys.argv[1] == "deferred":
    from megadlm.data.streaming_import import defer_streaming_package_init
    defer_streaming_package_init()
    from streaming.base.dataset import StreamingDataset
    from streaming.base.stream import Stream
else:
    from streaming import Stream, StreamingDataset
seconds = time.perf_counter() - start
print(json.dumps({"side": sys.argv[1], "seconds": seconds,
                  "sklearn": "sklearn" in sys.modules, "transformers": "transformers" in sys.modules}))
"""


def trial(side: str, preload: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu")
    out = subprocess.run([sys.executable, "-c", TRIAL, side, preload], env=env, capture_output=True,
                         text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5, help="trials per side (default 5)")
    parser.add_argument("--torch-only", action="store_true",
                        help="preload only torch, not megatron-core and DeepSpeed (smoke mode: faster)")
    args = parser.parse_args(argv)
    preload = "torch" if args.torch_only else "engine"
    results: dict[str, list[dict]] = {"eager": [], "deferred": []}
    for _ in range(args.trials):
        for side in ("eager", "deferred"):
            results[side].append(trial(side, preload))
    medians = {side: statistics.median(r["seconds"] for r in runs) for side, runs in results.items()}
    summary = {
        "trials": args.trials,
        "eager_s": round(medians["eager"], 3),
        "deferred_s": round(medians["deferred"], 3),
        "ratio_deferred_over_eager": round(medians["deferred"] / medians["eager"], 3),
        "deferred_imports_sklearn": any(r["sklearn"] for r in results["deferred"]),
        "deferred_imports_transformers": any(r["transformers"] for r in results["deferred"]),
    }
    for key, value in summary.items():
        print(f"{key:32s} {value}")
    return summary


if __name__ == "__main__":
    main()
