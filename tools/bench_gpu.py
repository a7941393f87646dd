#!/usr/bin/env python
"""GPU calibration of megadlm's training step at the shapes the paper grids run.

Each point trains a preset's production config — bf16, ZeRO-1, its activation checkpointing and
micro-batch, gradient accumulation over several micro-batches (fp32 sums), the scored output head —
on random tokens for a few dozen micro-batches, MDM and AR, at seq 2048 and 4096. Every point runs
in its own subprocess, so an engine's memory never carries into the next. One table: tokens/s,
model TFLOP/s, MFU, peak memory measured beside the memory `megadlm plan` predicts for the same
config, and a bf16 matmul ceiling measured in the same run. On a GPU it also writes
docs/perf/gpu.md.

MFU convention (every megadlm number uses it): FLOPs/token = 6 * N (non-embedding parameters + the
output projection) + 12 * layers * (heads * head_dim) * seq, the attention term in full for AR and
MDM alike; the peak is the card's dense bf16 peak by its exact name (train/metrics.py) unless
--peak-tflops says otherwise.

    python tools/bench_gpu.py           # on one H100/H200: 8 points, under 8 minutes
    python tools/bench_gpu.py --tiny    # CPU smoke run of the same code path (the tests run it)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QWEN_VOCAB = 151669
# (preset, seq) -> micro-batch: the paper grids' per-GPU batch at seq 4096, the presets' at 2048
POINTS = {("presets/qwen3-0.6b", 2048): 4, ("presets/qwen3-0.6b", 4096): 4,
          ("presets/qwen3-1.7b", 2048): 4, ("presets/qwen3-1.7b", 4096): 2}
TINY_OVERRIDES = ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128",
                  "model.num_attention_heads=4", "model.num_query_groups=2", "model.kv_channels=16",
                  "parallel.precision=fp32"]
GiB = 2**30


def matmul_ceiling_tflops(tiny: bool) -> float:
    import torch

    cuda = torch.cuda.is_available() and not tiny
    n, iters = (8192, 50) if cuda else (256, 5)
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, device="cuda" if cuda else "cpu", dtype=dtype)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - start) / 1e12


def point_overrides(preset: str, seq: int, micro: int, objective: str, accum: int, tiny: bool) -> list[str]:
    return [f"objective.type={objective}", f"data.seq_len={seq}", f"schedule.micro_batch_size={micro}",
            f"schedule.global_batch_size={micro * accum}", "parallel.zero_stage=1",
            *(TINY_OVERRIDES if tiny else [])]


def run_point(preset: str, overrides: list[str], vocab: int, steps: int, warmup: int) -> dict:
    """In this (child) process: train `steps` optimizer steps after `warmup`, one GPU."""
    import torch

    from megadlm.config.loader import load_config
    from megadlm.config.validate import padded_vocab_size
    from megadlm.model.build import compute_dtype, flops_per_token
    from megadlm.objectives import make_batch
    from megadlm.parallel.distributed import device, init_distributed, shutdown
    from megadlm.train.runners import build_runner

    cfg = load_config(preset, overrides)
    layout = init_distributed(1, 1)
    dev = device()
    padded = padded_vocab_size(vocab + 1, cfg.model.make_vocab_size_divisible_by, 1)  # +1: [MASK]
    accum = cfg.schedule.global_batch_size // cfg.schedule.micro_batch_size
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    runner = build_runner(cfg, padded, layout, accum, compute_dtype(cfg.parallel.precision) == torch.bfloat16)
    seq, b = cfg.data.seq_len, cfg.schedule.micro_batch_size
    g = torch.Generator().manual_seed(0)
    times, sample = [], 0
    for step in range(warmup + steps):
        batches = []
        for _ in range(accum):
            tokens = torch.randint(0, vocab, (b, seq + 1), generator=g)
            ids = torch.arange(sample, sample + b)
            batches.append(make_batch(cfg.objective, tokens, ids, 0, 1, vocab, seq))
            sample += b
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = runner.train_step(batches, step + 1)  # ends in a host sync (the loss)
        times.append(time.perf_counter() - start)
    step_time = statistics.median(times[warmup:])
    tokens_per_s = accum * b * seq / step_time
    out = {"shape": preset, "objective": cfg.objective.type, "seq_len": seq, "micro_batch": b,
           "grad_accum": accum, "activation_checkpointing": cfg.model.activation_checkpointing,
           "output_head": cfg.model.output_head, "step_time_s": step_time, "tokens_per_s": tokens_per_s,
           "tflops": flops_per_token(cfg, padded) * tokens_per_s / 1e12, "loss": result.loss,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / GiB if dev.type == "cuda" else None,
           "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"}
    shutdown()
    return out


def planned_gib(preset: str, overrides: list[str], vocab: int, tiny: bool) -> float:
    from megadlm.config.loader import load_config
    from megadlm.plan import make_plan

    plan = make_plan(load_config(preset, overrides), vocab + 1, nodes=1, gpus_per_node=1, gpu_mem_gib=80,
                     precision="fp32" if tiny else "bf16")
    return plan.total_bytes / GiB


def child(args) -> int:
    spec = json.loads(args.point)
    print("RESULT " + json.dumps(run_point(spec["preset"], spec["overrides"], spec["vocab"], args.steps,
                                           args.warmup)), flush=True)
    return 0


def write_markdown(path: Path, card: str, ceiling: float, peak: float, rows: list[dict],
                   command: str) -> None:
    lines = [f"# megadlm on {card}", "", f"Measured {time.strftime('%Y-%m-%d')} with `{command}`.", "",
             f"bf16 matmul ceiling (8192^3, same run): {ceiling:.0f} TFLOP/s; MFU below is against "
             f"the card's {peak:.0f} TFLOP/s dense bf16 peak.", "",
             "| shape | obj | seq | micro x accum | recompute | tokens/s | TFLOP/s | MFU | peak GiB "
             "| plan GiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['objective']} | {r['seq_len']} | {r['micro_batch']} x "
                     f"{r['grad_accum']} | {r['activation_checkpointing']} | {r['tokens_per_s']:,.0f} | "
                     f"{r['tflops']:.0f} | {r['mfu']:.1%} | {r['peak_mem_gib']:.1f} | {r['plan_gib']:.1f} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objectives", nargs="+", default=["mdm", "ar"], choices=["mdm", "ar"])
    parser.add_argument("--seqs", nargs="+", type=int, default=[2048, 4096])
    parser.add_argument("--accum", type=int, default=4, help="micro-batches per optimizer step")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per point")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, help="default: the card's, by its name")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes in fp32 on CPU: a smoke run")
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--point", help=argparse.SUPPRESS)  # internal: run one point in this process
    args = parser.parse_args()
    if args.point:
        return child(args)

    import torch

    from megadlm.train.metrics import peak_tflops_for

    on_gpu = torch.cuda.is_available() and not args.tiny
    card = torch.cuda.get_device_name() if on_gpu else "cpu"
    peak = args.peak_tflops or (peak_tflops_for(card) if on_gpu else None) or 989.0
    ceiling = matmul_ceiling_tflops(args.tiny)
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    if args.tiny:
        env["MEGADLM_FORCE_CPU"] = "1"
    rows = []
    for (preset, seq), micro in POINTS.items():
        if seq not in (args.seqs if not args.tiny else [2048]):
            continue
        for objective in args.objectives:
            vocab = 256 if args.tiny else QWEN_VOCAB
            overrides = point_overrides(preset, 64 if args.tiny else seq, 2 if args.tiny else micro,
                                        objective, args.accum, args.tiny)
            spec = json.dumps({"preset": preset, "overrides": overrides, "vocab": vocab})
            proc = subprocess.run([sys.executable, __file__, "--point", spec, "--steps", str(args.steps),
                                   "--warmup", str(args.warmup)], env=env, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(f"{preset} seq {seq} {objective}: failed (exit {proc.returncode})\n"
                      f"{proc.stderr[-3000:]}", file=sys.stderr)
                return 1
            row = json.loads(line[len("RESULT "):])
            row.update(mfu=row["tflops"] / peak, plan_gib=planned_gib(preset, overrides, vocab, args.tiny))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\ndevice: {card}; {'fp32' if args.tiny else 'bf16'} matmul ceiling {ceiling:.1f} TFLOP/s "
          f"({ceiling / peak:.0%} of the {peak:.0f} TFLOP/s peak); MFU convention: 6N + 12*L*h*s")
    print(f"{'shape':<20} {'obj':<4} {'seq':>5} {'mbxGA':>6} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6} "
          f"{'peak GiB':>9} {'plan GiB':>9}")
    for r in rows:
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        print(f"{r['shape']:<20} {r['objective']:<4} {r['seq_len']:>5} "
              f"{r['micro_batch']:>3}x{r['grad_accum']:<2} {r['tokens_per_s']:>10,.0f} {r['tflops']:>8.1f} "
              f"{r['mfu']:>6.1%} {mem:>9} {r['plan_gib']:>9.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": card, "matmul_ceiling_tflops": ceiling,
                                              "peak_tflops": peak, "date": time.strftime("%Y-%m-%d"),
                                              "results": rows}, indent=1))
    if on_gpu:
        write_markdown(REPO / "docs" / "perf" / "gpu.md", card, ceiling, peak, rows,
                       "python tools/bench_gpu.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    sys.exit(main())
