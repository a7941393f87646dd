#!/usr/bin/env python
"""Step-time and loader benchmarks, as ratios measured in one run on this machine.

1. megadlm's training step (real `megadlm train`: streaming data, objective, megatron-core model,
   DeepSpeed ZeRO-1 engine) against a plain PyTorch loop (torch AdamW + clipping) of the SAME
   ~10M-parameter Qwen3-style model (RMSNorm, RoPE, QK-norm, GQA, SwiGLU, tied embeddings), same
   batch, one process. Target: ratio <= 1.3.
2. The training data loader alone (streaming MDS -> int64 micro-batches) in tokens/s against the
   trainer's consumption in tokens/s. Target: >= 20x.
3. `--head`: the scored, chunked MDM output head against the full head at vocabulary 50k, seq 512
   (tools/bench_head.py). Targets: masked_head_speedup >= 1.4, logits_peak_bytes_ratio <= 0.25.

    python tools/bench_step.py [--steps 20] [--warmup 5] [--objective ar|mdm] [--quick]
    python tools/bench_step.py --head [--rounds 10] [--quick]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPE = dict(layers=10, hidden=256, ffn=1024, heads=4, groups=2, seq=256, micro=8)
QUICK = dict(layers=2, hidden=64, ffn=128, heads=4, groups=2, seq=64, micro=4)


def overrides(shape: dict, data: Path, objective: str, steps: int) -> list[str]:
    return [f"model.num_layers={shape['layers']}", f"model.hidden_size={shape['hidden']}",
            f"model.ffn_hidden_size={shape['ffn']}", f"model.num_attention_heads={shape['heads']}",
            f"model.num_query_groups={shape['groups']}", f"data.seq_len={shape['seq']}",
            f"schedule.global_batch_size={shape['micro']}", f"schedule.micro_batch_size={shape['micro']}",
            f"data.path={data}", f"objective.type={objective}", f"schedule.max_steps={steps}",
            "logging.progress_bar=false", "checkpoint.save_final=false", "logging.eval_interval=1000000",
            "parallel.zero_stage=1", "optim.weight_decay=0.1"]


def prepare_data(root: Path, seq: int) -> Path:
    from megadlm.data.corpus import write_pydoc_corpus
    from megadlm.data.prepare import prepare

    data = root / "data"
    prepare([str(write_pydoc_corpus(root / "corpus"))], str(data), seq_len=seq, val_fraction=0.05,
            progress=False)
    return data


def time_megadlm(data: Path, shape: dict, objective: str, steps: int, warmup: int, root: Path) -> dict:
    run = root / f"run_{objective}"
    args = ["train", "tiny_ar", "--run-dir", str(run)]
    for o in overrides(shape, data, objective, steps):
        args += ["--set", o]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    subprocess.run([sys.executable, "-m", "megadlm", *args], check=True, env=env, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in recs if r["kind"] == "start")
    times = [r["step_time_s"] for r in recs if r["kind"] == "train"][warmup:]
    return {"ms": statistics.median(times) * 1000,
            "tokens_per_s": shape["micro"] * shape["seq"] / statistics.median(times),
            "flops_per_token": start["flops_per_token"], "params": None}


# ---------------------------------------------------------------- the plain PyTorch reference
PLAIN = r'''
import math, statistics, sys, time, json
import torch, torch.nn as nn, torch.nn.functional as F
shape, steps, warmup, vocab = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
H, L, FF, NH, G, S, B = (shape[k] for k in ("hidden", "layers", "ffn", "heads", "groups", "seq", "micro"))
D = H // NH

def rope(x, cos, sin):  # x [b, h, s, d], rotate halves
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return x * cos + torch.cat((-x2, x1), -1) * sin

class Block(nn.Module):
    def __init__(s):
        super().__init__()
        s.n1, s.n2 = nn.RMSNorm(H, eps=1e-6), nn.RMSNorm(H, eps=1e-6)
        s.qkv = nn.Linear(H, (NH + 2 * G) * D, bias=False); s.proj = nn.Linear(NH * D, H, bias=False)
        s.qn, s.kn = nn.RMSNorm(D, eps=1e-6), nn.RMSNorm(D, eps=1e-6)
        s.fc1 = nn.Linear(H, 2 * FF, bias=False); s.fc2 = nn.Linear(FF, H, bias=False)
    def forward(s, x, cos, sin):
        b, t, _ = x.shape
        q, k, v = s.qkv(s.n1(x)).split([NH * D, G * D, G * D], -1)
        q = rope(s.qn(q.view(b, t, NH, D)).transpose(1, 2), cos, sin)
        k = rope(s.kn(k.view(b, t, G, D)).transpose(1, 2), cos, sin)
        v = v.view(b, t, G, D).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + s.proj(a.transpose(1, 2).reshape(b, t, NH * D))
        g, u = s.fc1(s.n2(x)).chunk(2, -1)
        return x + s.fc2(F.silu(g) * u)

class GPT(nn.Module):
    def __init__(s):
        super().__init__()
        s.emb = nn.Embedding(vocab, H); s.blocks = nn.ModuleList(Block() for _ in range(L))
        s.norm = nn.RMSNorm(H, eps=1e-6)
        for p in s.parameters():
            if p.dim() > 1: nn.init.normal_(p, std=0.02)
        inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
        f = torch.outer(torch.arange(S).float(), inv)
        emb = torch.cat((f, f), -1); s.register_buffer("cos", emb.cos()); s.register_buffer("sin", emb.sin())
    def forward(s, ids, labels):
        x = s.emb(ids)
        for blk in s.blocks: x = blk(x, s.cos, s.sin)
        logits = s.norm(x) @ s.emb.weight.t()
        return F.cross_entropy(logits.float().view(-1, vocab), labels.reshape(-1))

torch.manual_seed(0)
model = GPT()
decay = [p for p in model.parameters() if p.dim() >= 2]; rest = [p for p in model.parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                        lr=3e-4, betas=(0.9, 0.95))
times = []
for i in range(steps):
    ids = torch.randint(0, 256, (B, S + 1))
    t0 = time.perf_counter()
    loss = model(ids[:, :-1], ids[:, 1:]); loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t0)
print(json.dumps({"ms": statistics.median(times[warmup:]) * 1000,
                  "params": sum(p.numel() for p in model.parameters())}))
'''


def time_plain(shape: dict, steps: int, warmup: int, vocab: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PLAIN, json.dumps(shape), str(steps), str(warmup),
                          str(vocab)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def loader_tokens_per_s(data: Path, shape: dict, root: Path, batches: int) -> float:
    from megadlm.config.loader import load_config
    from megadlm.data.loader import TrainData
    from megadlm.data.manifest import load_manifest
    from megadlm.parallel.distributed import _ensure_single_process_env

    _ensure_single_process_env()
    cfg = load_config("tiny_ar", overrides(shape, data, "ar", 1))
    train = TrainData(cfg, load_manifest(str(data)), str(root / "loader_run"), replication=1, seed=1)
    it = train.batches(0)
    next(it)  # first batch pays the shard copy/decompression; steady state is what training sees
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += next(it).tokens.numel()
    return n / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--objective", default="ar", choices=["ar", "mdm"])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a smoke run, not a measurement)")
    parser.add_argument("--head", action="store_true", help="the scored output head against the full one")
    parser.add_argument("--rounds", type=int, default=10, help="--head: interleaved A/B rounds")
    args = parser.parse_args()
    if args.head:
        from tools.bench_head import bench_head

        result = bench_head(args.rounds, args.quick)
        print(json.dumps(result))
        print(f"MDM output head at vocab {result['vocab']:,}, seq {result['seq']}: scored "
              f"{result['scored_ms']:.1f} ms vs full {result['full_ms']:.1f} ms -> "
              f"{result['masked_head_speedup']:.2f}x (target >= 1.4); peak logits bytes "
              f"{result['logits_peak_bytes_ratio']:.3f} of the full head's (target <= 0.25)")
        return 0
    shape = QUICK if args.quick else SHAPE
    from megadlm.config.validate import padded_vocab_size

    root = Path(tempfile.mkdtemp(prefix="megadlm-bench-"))
    try:
        data = prepare_data(root, shape["seq"])
        vocab = padded_vocab_size(258, 128, 1)
        plain = time_plain(shape, args.steps, args.warmup, vocab)
        mega = time_megadlm(data, shape, args.objective, args.steps, args.warmup, root)
        loader = loader_tokens_per_s(data, shape, root, batches=200)
    finally:
        # streaming's prefetch thread may still be filling the loader's cache: a strict rmtree
        # would race it ("Directory not empty") and fail the benchmark after it has measured.
        shutil.rmtree(root, ignore_errors=True)
    from megadlm.config.loader import load_config
    from megadlm.model.build import count_parameters

    cfg = load_config("tiny_ar", overrides(shape, Path("."), args.objective, 1))
    params = count_parameters(cfg, vocab)["total"]
    assert params == plain["params"], (params, plain["params"])  # the same model on both sides
    ratio = mega["ms"] / plain["ms"]
    loader_ratio = loader / mega["tokens_per_s"]
    result = {"params": params, "objective": args.objective, "plain_ms": round(plain["ms"], 1),
              "megadlm_ms": round(mega["ms"], 1), "step_time_ratio": round(ratio, 3),
              "trainer_tokens_per_s": round(mega["tokens_per_s"]), "loader_tokens_per_s": round(loader),
              "loader_over_trainer": round(loader_ratio, 1), "load_avg_1m": round(os.getloadavg()[0], 2)}
    print(json.dumps(result))
    print(f"step time: megadlm {mega['ms']:.1f} ms vs plain PyTorch {plain['ms']:.1f} ms "
          f"-> ratio {ratio:.2f} (target <= 1.3); loader {loader:,.0f} tok/s "
          f"vs trainer {mega['tokens_per_s']:,.0f} tok/s -> "
          f"{loader_ratio:.0f}x (target >= 20x); {params / 1e6:.2f}M params, {args.objective}")
    return 0 if math.isfinite(ratio) else 1


if __name__ == "__main__":
    sys.exit(main())
