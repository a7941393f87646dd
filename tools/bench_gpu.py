#!/usr/bin/env python
"""GPU throughput of megadlm's training step: Qwen3-0.6B- and 1.7B-shaped models, MDM and AR.

One process, bf16, seq 2048, TP = PP = 1, ZeRO-1, the real megadlm step (megatron-core model in a
DeepSpeed engine, objective corruption, loss, backward, clipping, AdamW) on random token batches;
data loading is measured separately by tools/bench_step.py. Prints per run: tokens/s, model
TFLOP/s, MFU and peak memory, plus a bf16 matmul ceiling measured in the same run.

MFU convention (the one every megadlm number uses): FLOPs/token = 6 * N (non-embedding parameters
+ the output projection) + 12 * layers * (heads * head_dim) * seq, the attention term in full for
AR and MDM alike; peak 989 TFLOP/s (H100/H200 SXM dense bf16) unless --peak-tflops says otherwise.

    python tools/bench_gpu.py                 # on a GPU: about 5 minutes on one H100
    python tools/bench_gpu.py --tiny          # CPU smoke run of the same code path (tests use it)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {
    "qwen3-0.6b": ("presets/qwen3-0.6b", 151669),
    "qwen3-1.7b": ("presets/qwen3-1.7b", 151669),
}
TINY_OVERRIDES = ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128",
                  "model.num_attention_heads=4", "model.num_query_groups=2", "model.kv_channels=16",
                  "data.seq_len=64", "parallel.precision=fp32"]


def matmul_ceiling_tflops(device, dtype, n: int, iters: int) -> float:
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_one(config: str, vocab: int, objective: str, args, extra: list[str]) -> dict:
    import torch

    from megadlm.config.loader import load_config
    from megadlm.config.validate import padded_vocab_size
    from megadlm.model.build import compute_dtype, flops_per_token
    from megadlm.objectives import make_batch
    from megadlm.parallel.distributed import current_layout, device
    from megadlm.train.runners import build_runner

    cfg = load_config(config, [f"objective.type={objective}", "parallel.zero_stage=1",
                               f"schedule.micro_batch_size={args.micro_batch}",
                               f"schedule.global_batch_size={args.micro_batch}",
                               f"model.activation_checkpointing={str(args.activation_checkpointing).lower()}",
                               *extra])
    layout = current_layout()
    padded = padded_vocab_size(vocab + 1, cfg.model.make_vocab_size_divisible_by, 1)  # +1: [MASK]
    dev = device()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    runner = build_runner(cfg, padded, layout, 1, compute_dtype(cfg.parallel.precision) == torch.bfloat16)
    seq, b = cfg.data.seq_len, cfg.schedule.micro_batch_size
    g = torch.Generator().manual_seed(0)
    times = []
    for step in range(args.warmup + args.steps):
        tokens = torch.randint(0, vocab, (b, seq + 1), generator=g)
        batch = make_batch(cfg.objective, tokens, torch.arange(step * b, (step + 1) * b), 0, 1, vocab, seq)
        sync(dev)
        t0 = time.perf_counter()
        result = runner.train_step([batch], step + 1)
        sync(dev)
        times.append(time.perf_counter() - t0)
    step_time = statistics.median(times[args.warmup:])
    tokens_per_s = b * seq / step_time
    tflops = flops_per_token(cfg, padded) * tokens_per_s / 1e12
    out = {"shape": config, "objective": objective, "micro_batch": b, "seq_len": seq,
           "step_time_s": step_time, "tokens_per_s": tokens_per_s, "tflops": tflops,
           "mfu": tflops / args.peak_tflops, "loss": result.loss,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None}
    del runner
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--objectives", nargs="+", default=["mdm", "ar"], choices=["mdm", "ar"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes in fp32: a CPU smoke run")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()

    import torch

    from megadlm.parallel.distributed import device, init_distributed, shutdown

    init_distributed(1, 1)
    dev = device()
    extra = TINY_OVERRIDES if args.tiny else []
    dtype = torch.float32 if args.tiny else torch.bfloat16
    ceiling = matmul_ceiling_tflops(dev, dtype, 256 if args.tiny else 8192, 5 if args.tiny else 50)
    card = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    results = []
    for shape in args.shapes:
        config, vocab = SHAPES[shape]
        for objective in args.objectives:
            r = bench_one(config, 256 if args.tiny else vocab, objective, args, extra)
            results.append(r)
            print(json.dumps(r), flush=True)
    shutdown()
    print(f"\ndevice: {card}; {'fp32' if args.tiny else 'bf16'} matmul ceiling {ceiling:.1f} TFLOP/s "
          f"({ceiling / args.peak_tflops:.0%} of the {args.peak_tflops:.0f} TFLOP/s peak)")
    print(f"{'shape':<24} {'obj':<4} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>9}")
    for r in results:
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        print(f"{r['shape']:<24} {r['objective']:<4} {r['tokens_per_s']:>10,.0f} {r['tflops']:>8.1f} "
              f"{r['mfu']:>6.1%} {mem:>9}")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": card, "matmul_ceiling_tflops": ceiling,
                                              "date": time.strftime("%Y-%m-%d"), "results": results},
                                             indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    sys.exit(main())
