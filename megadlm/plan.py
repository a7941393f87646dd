"""`megadlm plan`: will this config fit, per GPU, on N nodes x G GPUs, and how fast might it run?

Everything derives from the parameter inventory (exact shapes and TP dims) and DeepSpeed's known
storage layout. Model state between steps (parameters + optimizer state) is checked against what a
CPU run really holds (tests/test_plan.py, within 10%); gradients, buckets and activations are
estimates, stated with their formulas below.

Bytes per parameter (Ψ = parameters this rank holds before ZeRO partitioning, dp = data-parallel size):
  bf16 (GPU): params 2 (ZeRO-3: 2/dp) | grads summed in fp32: 4 (ZeRO-2/3: /dp), a buffer DeepSpeed
              keeps between steps | fp32 master 4 + Adam m,v 8 (ZeRO-1+: /dp)
  fp32 (CPU): params 4 (ZeRO-3: 4/dp) | grads 4 (ZeRO-2/3: /dp) | Adam m,v 8, plus a fp32 copy 4 with
              ZeRO-1+ (all /dp); ZeRO-0 keeps no copy. ZeRO-3 leaves tensors under
              stage3_param_persistence_threshold (1e5 elements) unpartitioned.
  ZeRO-3 also holds one reduce bucket: reduce_bucket_size (5e8 elements) x gradient bytes.
Activations per layer and micro-batch: tensor by tensor what the layer saves for backward
(`layer_activation_bytes`, checked against a CPU run's saved tensors in tests/test_plan.py, no
sequence parallelism); a recomputed layer keeps only its input, s*b*h*e, plus one layer's full set
while it is recomputed. The first pipeline stage keeps min(pp, grad_accum) micro-batches in
flight (1F1B); the last stage holds fp32 logits and their gradient, 2 * s*b*V/tp*4 bytes.
Step time = FLOPs/token * tokens/step / (GPUs * peak * MFU); FLOPs/token as in every MFU megadlm
reports (6N + 12*L*h*s, full attention term).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from megadlm.config.schema import Config
from megadlm.model.inventory import ParamSpec, count_parameters, parameter_inventory

PERSISTENCE_THRESHOLD = 100_000  # DeepSpeed stage3_param_persistence_threshold default
REDUCE_BUCKET = 500_000_000  # DeepSpeed reduce_bucket_size default (elements)
GiB = 1024**3


@dataclass
class Plan:
    world_size: int
    tp: int
    pp: int
    dp: int
    zero_stage: int
    precision: str
    params_total: int
    params_per_gpu: int  # on the largest pipeline stage, this TP rank, before ZeRO partitioning
    param_bytes: float
    grad_bytes: float
    optimizer_bytes: float
    bucket_bytes: float
    activation_bytes: float
    logits_bytes: float
    total_bytes: float
    gpu_mem_bytes: float
    fits: bool
    tokens_per_step: int
    flops_per_token: float
    step_time_s: float
    tokens_per_s: float
    mfu: float
    peak_tflops: float
    checkpoint_bytes: float  # one checkpoint, all ranks
    retained_checkpoints: int | None  # None: the run's length depends on the data directory

    @property
    def model_state_bytes(self) -> float:
        """What lives between steps: parameters, optimizer state, buckets (gradients are freed)."""
        return self.param_bytes + self.optimizer_bytes + self.bucket_bytes


def _local_numel(p: ParamSpec, tp: int) -> int:
    return p.numel // tp if p.tp_dim is not None else p.numel


def stage_parameters(cfg: Config, vocab: int, tp: int, pp: int) -> list[list[ParamSpec]]:
    """The parameters each pipeline stage holds (tied embeddings: a copy on the last stage)."""
    inventory = parameter_inventory(cfg, vocab)
    per_stage = cfg.model.num_layers // pp
    stages: list[list[ParamSpec]] = [[] for _ in range(pp)]
    for p in inventory:
        if p.layer is not None:
            stages[p.layer // per_stage].append(p)
        elif p.name.startswith("embedding."):
            stages[0].append(p)
            if cfg.model.tie_embeddings and pp > 1 and p.name == "embedding.word_embeddings.weight":
                stages[-1].append(p)
        else:
            stages[-1].append(p)
    return stages


def _state_bytes(params: list[ParamSpec], tp: int, dp: int, zero: int,
                 bf16: bool) -> tuple[float, float, float]:
    """(parameter, gradient, optimizer) bytes on one rank for the given parameters."""
    numel = [_local_numel(p, tp) for p in params]
    total = sum(numel)
    pbytes = 2 if bf16 else 4
    if zero == 3:
        persistent = sum(n for n in numel if n < PERSISTENCE_THRESHOLD)
        param = pbytes * (persistent + (total - persistent) / dp)
    else:
        param = pbytes * total
    # bf16 gradients are summed in fp32 (train.runners.deepspeed_config): a 4-byte buffer
    grad = (4 if bf16 else pbytes) * total / (dp if zero >= 2 else 1)
    if bf16:
        optimizer = 12 * total / (dp if zero >= 1 else 1)
    else:
        optimizer = (12 * total / dp) if zero >= 1 else 8 * total
    return param, grad, optimizer


def layer_activation_bytes(cfg: Config, tp: int, elem: int, mask_bytes: int = 1) -> float:
    """Bytes one transformer layer keeps for backward per micro-batch, counted tensor by tensor
    from what the local (non-Transformer-Engine) layer saves: s = seq, b = micro-batch, h = hidden,
    a = heads * head_dim and g = key/value groups * head_dim (each /tp), f = ffn width (/tp), e-byte
    activations:
      norms           RMSNorm 2 per norm (input, normalised), LayerNorm 1 (input), x2 norms: s*b*h*e
      linear inputs   QKV and FC1 inputs, 2 * s*b*h*e (attention out and FC2 inputs are counted below)
      attention       with QK-norm 5a + 4g (q, k before/after norm, the fused QKV output holding v,
                      rotated q and k, the output), without 3a + 3g, times s*b*e; softmax statistics
                      b*heads*s in fp32; RoPE tables 4*s*head_dim*e
      MLP             SwiGLU 5f (FC1 output 2f, the gate's three f-wide tensors), GELU 2f, times s*b*e
      dropout masks   s*b*h each, two with hidden dropout and one more with MLP dropout: 1 byte per
                      element on GPU (a bool mask), `mask_bytes` = e on CPU (a float mask)
    Attention dropout is assumed fused into the attention kernel (flash/memory-efficient on GPU:
    no s x s probabilities); CPU's math fallback for dropout does keep them."""
    m, obj = cfg.model, cfg.objective
    s, b, h = cfg.data.seq_len, cfg.schedule.micro_batch_size, m.hidden_size
    head_dim = m.kv_channels or h // m.num_attention_heads
    heads, groups = m.num_attention_heads // tp, (m.num_query_groups or m.num_attention_heads) // tp
    a, g, f = heads * head_dim, groups * head_dim, m.ffn_hidden_size // tp
    norm_copies = 2 if m.normalization == "RMSNorm" else 1
    norm_stats = 1 if m.normalization == "RMSNorm" else 2  # per-row rstd (and mean): s*b each
    width = 2 * norm_copies * h + 2 * h
    width += (5 * a + 4 * g) if m.qk_layernorm else (3 * a + 3 * g)
    width += 5 * f if m.activation == "swiglu" else 2 * f
    stats = 2 * norm_stats + (heads + groups if m.qk_layernorm else 0)
    total = (width + stats) * s * b * elem + b * heads * s * 4 + 4 * s * head_dim * elem
    masks = (2 if obj.hidden_dropout > 0 else 0) + (1 if obj.mlp_dropout > 0 else 0)
    return total + masks * s * b * h * mask_bytes


def _activation_bytes(cfg: Config, tp: int, pp: int, grad_accum: int, elem: int) -> float:
    """A pipeline stage's activations: recomputed layers keep only their input (plus, while one is
    recomputed, that layer's full set), the others everything; the first stage keeps
    min(pp, grad_accum) micro-batches in flight (1F1B)."""
    m, s, b = cfg.model, cfg.data.seq_len, cfg.schedule.micro_batch_size
    layers = m.num_layers // pp
    recomputed = m.recomputed_layers(layers)
    full_layer = layer_activation_bytes(cfg, tp, elem)
    per_micro = (layers - recomputed) * full_layer + recomputed * s * b * m.hidden_size * elem
    if recomputed:
        per_micro += full_layer
    return per_micro * min(pp, grad_accum)


def checkpoint_bytes(params_total: int, zero_stage: int, precision: str) -> float:
    """One checkpoint on disk, all ranks together: the weights in the model dtype plus the optimizer's
    fp32 state (master copy 4 and Adam moments 8 per parameter; fp32 without ZeRO keeps no copy)."""
    bf16 = precision == "bf16"
    optimizer = 12 if bf16 or zero_stage >= 1 else 8
    return params_total * ((2 if bf16 else 4) + optimizer)


def planned_steps(cfg: Config, available_samples: int | None = None) -> int | None:
    """Optimizer steps of the run: schedule.max_steps, else data.epochs over data.unique_tokens or
    the data's samples (None when neither is known)."""
    if cfg.schedule.max_steps:
        return cfg.schedule.max_steps
    samples = [n for n in (available_samples,
                           cfg.data.unique_tokens // cfg.data.seq_len if cfg.data.unique_tokens else None)
               if n is not None]
    if not samples:
        return None
    per_epoch = min(samples) // cfg.schedule.global_batch_size
    return max(1, math.ceil(cfg.data.epochs * per_epoch))


def retained_checkpoints(cfg: Config, total_steps: int) -> int:
    """How many checkpoints the finished run keeps: saves every checkpoint.interval steps and at the
    end, pruned to the newest keep_last (0: all) plus every step that is a multiple of keep_every."""
    c = cfg.checkpoint
    saved = set(range(c.interval, total_steps + 1, c.interval)) if c.interval > 0 else set()
    if c.save_final:
        saved.add(total_steps)
    ordered = sorted(saved)
    kept = set(ordered[-c.keep_last:]) if c.keep_last > 0 else set(ordered)
    kept |= {step for step in ordered if c.keep_every > 0 and step % c.keep_every == 0}
    return len(kept)


def checkpoint_storage(cfg: Config, padded_vocab: int, available_samples: int | None = None) -> float | None:
    """Bytes the checkpoints a finished run keeps take on disk (None when its length is unknown)."""
    steps = planned_steps(cfg, available_samples)
    if steps is None:
        return None
    precision = cfg.parallel.precision if cfg.parallel.precision in ("bf16", "fp32") else "bf16"
    one = checkpoint_bytes(count_parameters(cfg, padded_vocab)["total"], cfg.parallel.zero_stage, precision)
    return one * retained_checkpoints(cfg, steps)


def make_plan(cfg: Config, vocab: int, nodes: int, gpus_per_node: int, gpu_mem_gib: float,
              mfu: float = 0.40, peak_tflops: float = 989.0, precision: str = "bf16") -> Plan:
    from megadlm.config.validate import padded_vocab_size
    from megadlm.model.build import flops_per_token

    world = nodes * gpus_per_node
    tp, pp, zero = cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.zero_stage
    dp = world // (tp * pp)
    padded = padded_vocab_size(vocab, cfg.model.make_vocab_size_divisible_by, tp)
    bf16 = precision == "bf16"
    elem = 2 if bf16 else 4
    grad_accum = max(1, cfg.schedule.global_batch_size // (cfg.schedule.micro_batch_size * dp))
    best = None
    for index, params in enumerate(stage_parameters(cfg, padded, tp, pp)):
        param, grad, optimizer = _state_bytes(params, tp, dp, zero, bf16)
        bucket = REDUCE_BUCKET * elem if zero == 3 else 0.0
        acts = _activation_bytes(cfg, tp, pp, grad_accum, elem) if index == 0 else \
            _activation_bytes(cfg, tp, pp, 1, elem)
        logits = (2 * cfg.data.seq_len * cfg.schedule.micro_batch_size * padded / tp * 4
                  if index == pp - 1 else 0.0)
        total = param + grad + optimizer + bucket + acts + logits
        stage = (total, sum(_local_numel(p, tp) for p in params), param, grad, optimizer, bucket, acts,
                 logits)
        if best is None or stage[0] > best[0]:
            best = stage
    total, n_local, param, grad, optimizer, bucket, acts, logits = best
    tokens = cfg.schedule.global_batch_size * cfg.data.seq_len
    fpt = flops_per_token(cfg, padded)
    step_time = fpt * tokens / (world * peak_tflops * 1e12 * mfu)
    return Plan(world, tp, pp, dp, zero, precision, count_parameters(cfg, padded)["total"], n_local,
                param, grad, optimizer, bucket, acts, logits, total, gpu_mem_gib * GiB,
                total <= 0.9 * gpu_mem_gib * GiB, tokens, fpt, step_time, tokens / step_time, mfu,
                peak_tflops, checkpoint_bytes(count_parameters(cfg, padded)["total"], zero, precision),
                retained_checkpoints(cfg, steps) if (steps := planned_steps(cfg)) else None)


def format_plan(plan: Plan, name: str) -> str:
    g = lambda b: f"{b / GiB:8.2f} GiB"  # noqa: E731
    rows = [
        f"plan for {name}: {plan.world_size} GPUs = TP {plan.tp} x PP {plan.pp} x DP {plan.dp}, "
        f"ZeRO-{plan.zero_stage}, {plan.precision}",
        f"  parameters        {plan.params_total / 1e9:8.3f} B total, "
        f"{plan.params_per_gpu / 1e6:.1f} M on the largest stage per TP rank",
        f"  parameters        {g(plan.param_bytes)}",
        f"  gradients         {g(plan.grad_bytes)}",
        f"  optimizer state   {g(plan.optimizer_bytes)}   (fp32 master + Adam moments)",
        f"  ZeRO-3 buckets    {g(plan.bucket_bytes)}",
        f"  activations       {g(plan.activation_bytes)}",
        f"  logits            {g(plan.logits_bytes)}",
        f"  total per GPU     {g(plan.total_bytes)}   of {plan.gpu_mem_bytes / GiB:.0f} GiB -> "
        + ("fits (<= 90%)" if plan.fits else "DOES NOT FIT (> 90%): raise TP/PP/ZeRO, enable "
           "model.activation_checkpointing or lower schedule.micro_batch_size"),
        f"  checkpoint        {g(plan.checkpoint_bytes)}   on disk, all ranks (weights + fp32 optimizer)"
        + (f"; {plan.retained_checkpoints} kept at the end = "
           f"{plan.checkpoint_bytes * plan.retained_checkpoints / GiB:,.1f} GiB"
           if plan.retained_checkpoints else ""),
        f"  tokens per step   {plan.tokens_per_step:,}",
        f"  est. step time    {plan.step_time_s:8.2f} s at MFU {plan.mfu:.0%} of {plan.peak_tflops:.0f} "
        f"TFLOP/s ({plan.tokens_per_s:,.0f} tokens/s)",
    ]
    return "\n".join(rows)


def plan_dict(plan: Plan) -> dict:
    return {**asdict(plan), "model_state_bytes": plan.model_state_bytes}
