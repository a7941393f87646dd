#!/usr/bin/env python
"""What a training rank pays at import for library code megadlm never runs, eagerly and megadlm's way.

Two parts, each timed in fresh interpreters, the two sides alternating trial by trial so machine load
hits both alike; prints each side's median and their ratio.

- streaming: after what a rank imports anyway (torch, megatron-core, DeepSpeed; only torch with
  --torch-only), the streaming classes the data loader uses.
  eager: `from streaming import Stream, StreamingDataset` (the package __init__ with its example datasets,
  which pull in transformers' AutoTokenizer and scikit-learn); deferred: megadlm's
  `defer_streaming_package_init()` then `from streaming.base.dataset import ...`.
- compile: after torch, megatron-core and DeepSpeed with the Muon kernels that ZeRO-1/2 import on their
  first reduction. eager: as the libraries do it (their torch.compile decorators import TorchInductor);
  deferred: with megadlm's import hook (megadlm/lazy_compile.py: compile on first call).

    python tools/bench_startup.py              # 5 trials a side per part, about 2 minutes on 2 cores
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

STREAMING_TRIAL = r"""
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

COMPILE_TRIAL = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
import torch  # not timed
if sys.argv[1] == "deferred":
    from megadlm import lazy_compile  # importing megadlm installs the hook
start = time.perf_counter()
import megatron.core, deepspeed
from megatron.core.models.gpt import gpt_layer_specs
from deepspeed.runtime.zero.muon import muon_optimizer
seconds = time.perf_counter() - start
print(json.dumps({"side": sys.argv[1], "seconds": seconds,
                  "inductor": "torch._inductor.compile_fx" in sys.modules}))
"""


def trial(code: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu")
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                         text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def alternate(trials: int, code: str, *args: str) -> tuple[dict[str, float], dict[str, list[dict]]]:
    results: dict[str, list[dict]] = {"eager": [], "deferred": []}
    for _ in range(trials):
        for side in ("eager", "deferred"):
            results[side].append(trial(code, side, *args))
    return {side: statistics.median(r["seconds"] for r in runs) for side, runs in results.items()}, results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5, help="trials per side (default 5)")
    parser.add_argument("--torch-only", action="store_true",
                        help="streaming part: preload only torch, not megatron-core and DeepSpeed (faster)")
    parser.add_argument("--part", choices=("streaming", "compile", "all"), default="all")
    args = parser.parse_args(argv)
    summary: dict = {"trials": args.trials}
    if args.part in ("streaming", "all"):
        medians, runs = alternate(args.trials, STREAMING_TRIAL, "torch" if args.torch_only else "engine")
        summary.update({
            "eager_s": round(medians["eager"], 3),
            "deferred_s": round(medians["deferred"], 3),
            "ratio_deferred_over_eager": round(medians["deferred"] / medians["eager"], 3),
            "deferred_imports_sklearn": any(r["sklearn"] for r in runs["deferred"]),
            "deferred_imports_transformers": any(r["transformers"] for r in runs["deferred"]),
        })
    if args.part in ("compile", "all"):
        medians, runs = alternate(args.trials, COMPILE_TRIAL)
        summary.update({
            "compile_eager_s": round(medians["eager"], 3),
            "compile_deferred_s": round(medians["deferred"], 3),
            "compile_saved_s": round(medians["eager"] - medians["deferred"], 3),
            "eager_imports_inductor": all(r["inductor"] for r in runs["eager"]),
            "deferred_imports_inductor": any(r["inductor"] for r in runs["deferred"]),
        })
    for key, value in summary.items():
        print(f"{key:32s} {value}")
    return summary


if __name__ == "__main__":
    main()
