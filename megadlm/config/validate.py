"""Cross-field checks of a loaded `Config`, before anything heavy is imported or launched.

`loader.load_config` already guarantees every key is known and every value has the right type;
this module checks what types cannot express: ranges, choices, divisibility by the parallel
layout, and agreement with the data directory's manifest. Every problem is reported with what to
change; all problems found are reported together so one edit-and-retry fixes them all.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

from megadlm.config.schema import Config
from megadlm.errors import ConfigError

__all__ = ["validate_config", "padded_vocab_size"]

OBJECTIVES = ("mdm", "ar")
POSITION_EMBEDDINGS = ("rope", "learned_absolute")
NORMALIZATIONS = ("RMSNorm", "LayerNorm")
ACTIVATIONS = ("swiglu", "gelu")
PRECISIONS = ("auto", "fp32", "bf16", "fp64")
SCHEDULES = ("cosine", "constant", "wsd")
SHUFFLE_ALGOS = ("py1e", "py1br", "py1s", "py2s", "naive")
WANDB_MODES = ("online", "offline", "disabled")
# Skipping a NaN step needs an overflow-aware optimizer step; until then a NaN stops the run.
ON_NAN = ("stop", "skip")
KEEP_BEST = ("none", "val_loss")

Report = Callable[[str], None]


def padded_vocab_size(vocab: int, divisible_by: int, tp: int) -> int:
    """Round `vocab` up to a multiple of lcm(divisible_by, tp).

    Megatron pads to divisible_by * tp, which changes the model (and its loss: the softmax runs over
    the padding too) whenever TP changes. The least common multiple keeps the padded vocabulary, and
    so the model, the same for every TP size that divides divisible_by (any power of two up to 128
    by default), while still giving each TP rank an equal shard.
    """
    multiple = math.lcm(max(1, divisible_by), max(1, tp))
    return -(-vocab // multiple) * multiple


def validate_config(cfg: Config, world_size: int = 1, manifest: Optional[dict] = None) -> None:
    """Raise ConfigError listing every cross-field problem of `cfg` (each with its fix)."""
    problems: list[str] = []
    report: Report = problems.append
    _check_objective(cfg, report)
    _check_model(cfg, report)
    _check_parallel(cfg, world_size, report)
    _check_schedule(cfg, world_size, report)
    _check_data(cfg, report)
    _check_optim(cfg, report)
    _check_logging(cfg, report)
    if manifest is not None:
        _check_manifest(cfg, manifest, report)
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(
            f"{len(problems)} problems in the configuration:\n" + "\n".join(f"  - {p}" for p in problems)
        )


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _choice(key: str, value: Any, allowed: tuple[str, ...], report: Report) -> None:
    if value not in allowed:
        report(f"{key}={value!r} is not supported: set {key} to one of {', '.join(allowed)}")


def _at_least(key: str, value: Any, low: int, report: Report) -> bool:
    """Report unless `value` is an int >= low; returns whether it is (so dependent checks can run)."""
    if _is_int(value) and value >= low:
        return True
    report(f"{key}={value!r} must be an integer >= {low}")
    return False


def _in_range(
    key: str, value: Any, lo: float, hi: float, report: Report, lo_open: bool = False, hi_open: bool = False
) -> None:
    ok = (_is_num(value) and (value > lo if lo_open else value >= lo)
          and (value < hi if hi_open else value <= hi))
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        report(f"{key}={value!r} must be a number in {interval}")


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------


def _check_objective(cfg: Config, report: Report) -> None:
    o = cfg.objective
    _choice("objective.type", o.type, OBJECTIVES, report)
    td = o.token_dropout
    if isinstance(td, str):
        if td != "uniform":
            report(
                f"objective.token_dropout={td!r} is not supported: use a rate in [0, 1] "
                "or the string 'uniform' (a rate drawn per sequence)"
            )
    else:
        _in_range("objective.token_dropout", td, 0.0, 1.0, report)
    for name in ("mlp_dropout", "attention_dropout", "hidden_dropout"):
        _in_range(f"objective.{name}", getattr(o, name), 0.0, 1.0, report, hi_open=True)
    _in_range("objective.eps", o.eps, 0.0, 1.0, report, lo_open=True, hi_open=True)
    _in_range("objective.random_length_prob", o.random_length_prob, 0.0, 1.0, report)
    # Token dropout corrupts the AR input; MDM already masks its inputs, so the knob is a mistake there.
    if o.type == "mdm" and (td == "uniform" or (_is_num(td) and td > 0)):
        report(
            f"objective.token_dropout={td!r} is an AR regulariser and MDM already masks its inputs: "
            "set objective.token_dropout=0 or objective.type=ar"
        )


def _check_model(cfg: Config, report: Report) -> None:
    m = cfg.model
    _choice("model.output_head", m.output_head, ("scored", "full"), report)
    recompute = m.activation_checkpointing
    if (isinstance(recompute, str) and recompute not in ("none", "full")) or (
            _is_int(recompute) and recompute < 0):
        report(f"model.activation_checkpointing={recompute!r} must be none, full, or how many layers of "
               "each pipeline stage recompute their activations (an integer, 0 or more)")
    for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads"):
        _at_least(f"model.{name}", getattr(m, name), 1, report)
    _at_least("model.make_vocab_size_divisible_by", m.make_vocab_size_divisible_by, 1, report)
    if m.kv_channels is not None:
        _at_least("model.kv_channels", m.kv_channels, 1, report)
    if m.vocab_size is not None:
        _at_least("model.vocab_size", m.vocab_size, 1, report)
    heads = m.num_attention_heads
    heads_ok = _is_int(heads) and heads >= 1
    if heads_ok and m.kv_channels is None and _is_int(m.hidden_size) and m.hidden_size % heads:
        report(
            f"model.hidden_size={m.hidden_size} is not divisible by model.num_attention_heads={heads}: "
            "change one of them or set model.kv_channels (the head dimension) explicitly"
        )
    if m.num_query_groups is not None and _at_least("model.num_query_groups", m.num_query_groups, 1, report):
        if heads_ok and heads % m.num_query_groups:
            report(
                f"model.num_query_groups={m.num_query_groups} must divide "
                f"model.num_attention_heads={heads}: pick a divisor of {heads} "
                f"({', '.join(str(d) for d in _divisors(heads))})"
            )
    _choice("model.position_embedding", m.position_embedding, POSITION_EMBEDDINGS, report)
    _choice("model.normalization", m.normalization, NORMALIZATIONS, report)
    _choice("model.activation", m.activation, ACTIVATIONS, report)
    _in_range("model.norm_epsilon", m.norm_epsilon, 0.0, 1.0, report, lo_open=True, hi_open=True)
    if not (_is_num(m.init_std) and m.init_std > 0):
        report(f"model.init_std={m.init_std!r} must be a positive number")
    _at_least("model.rotary_base", m.rotary_base, 1, report)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _model_parallel(cfg: Config) -> Optional[int]:
    """tp * pp, or None if either is invalid (already reported)."""
    p = cfg.parallel
    if _is_int(p.tp) and _is_int(p.pp) and p.tp >= 1 and p.pp >= 1:
        return p.tp * p.pp
    return None


def bf16_zero_problem(zero_stage: int) -> str | None:
    """Why a bf16 run cannot use this ZeRO stage, or None. DeepSpeed 0.19.8 accumulates bf16 gradients
    in fp32 only inside a ZeRO optimizer; without ZeRO it would keep bf16 gradient sums."""
    if zero_stage == 0:
        return ("parallel.zero_stage=0 with bf16: DeepSpeed can only accumulate bf16 gradients in fp32 "
                "inside a ZeRO optimizer, and a bf16 sum of many micro-batches loses their low bits: use "
                "parallel.zero_stage=1 (the same update; at one data-parallel rank it partitions nothing)")
    return None


def _check_parallel(cfg: Config, world_size: int, report: Report) -> None:
    p = cfg.parallel
    tp_ok = _at_least("parallel.tp", p.tp, 1, report)
    pp_ok = _at_least("parallel.pp", p.pp, 1, report)
    if not (_is_int(p.zero_stage) and 0 <= p.zero_stage <= 3):
        report(f"parallel.zero_stage={p.zero_stage!r} must be 0, 1, 2 or 3")
    _choice("parallel.precision", p.precision, PRECISIONS, report)
    if p.precision == "bf16" and bf16_zero_problem(p.zero_stage):  # "auto" is checked where it resolves
        report(bf16_zero_problem(p.zero_stage))
    mp = _model_parallel(cfg)
    if mp is not None and world_size % mp:
        report(
            f"world size {world_size} is not divisible by tp*pp={mp}: "
            f"launch a multiple of {mp} processes or change parallel.tp/pp"
        )
    if tp_ok:
        heads, groups = cfg.model.num_attention_heads, cfg.model.num_query_groups
        if _is_int(heads) and heads >= 1 and heads % p.tp:
            report(
                f"model.num_attention_heads={heads} is not divisible by parallel.tp={p.tp}: "
                "each tensor-parallel rank needs whole heads; change parallel.tp or the head count"
            )
        groups = heads if groups is None else groups
        if _is_int(groups) and groups >= 1 and groups % p.tp:
            report(
                f"model.num_query_groups={groups} is not divisible by parallel.tp={p.tp}: "
                "each tensor-parallel rank needs whole key/value groups; change parallel.tp "
                "or model.num_query_groups"
            )
    if pp_ok and p.pp > 1:
        if p.zero_stage in (2, 3):
            report(
                f"parallel.zero_stage={p.zero_stage} with parallel.pp={p.pp}: DeepSpeed refuses ZeRO "
                "stage 2/3 with pipeline parallelism: use parallel.zero_stage=1"
            )
        if p.zero_stage == 0:
            report(
                f"parallel.zero_stage=0 with parallel.pp={p.pp}: DeepSpeed's non-ZeRO gradient clipping "
                "drops the replicated parameters of every stage but the first from the gradient norm "
                "(a DeepSpeed bug), so the run would train wrongly: use parallel.zero_stage=1"
            )
        layers = cfg.model.num_layers
        if _is_int(layers) and layers >= 1 and layers % p.pp:
            report(
                f"model.num_layers={layers} is not divisible by parallel.pp={p.pp}: every pipeline "
                f"stage needs the same number of layers; choose pp among {_divisors(layers)}"
            )
        if _is_num(cfg.objective.random_length_prob) and cfg.objective.random_length_prob > 0:
            report(
                f"objective.random_length_prob={cfg.objective.random_length_prob} with parallel.pp={p.pp}: "
                "pipeline stages exchange fixed-shape activations, so sequences cannot be truncated: "
                "set objective.random_length_prob=0 or parallel.pp=1"
            )
        if p.precision == "fp64":
            report(
                f"parallel.precision=fp64 with parallel.pp={p.pp}: DeepSpeed's pipeline engine passes "
                "activation gradients between stages in fp32 buffers, so an fp64 pipeline run is wrong: "
                "use parallel.precision=fp32 with pipelines (fp64 is for checking TP/DP layouts)"
            )


def _check_schedule(cfg: Config, world_size: int, report: Report) -> None:
    s = cfg.schedule
    _choice("schedule.type", s.type, SCHEDULES, report)
    mbs_ok = _at_least("schedule.micro_batch_size", s.micro_batch_size, 1, report)
    gbs_ok = _at_least("schedule.global_batch_size", s.global_batch_size, 1, report)
    mp = _model_parallel(cfg)
    if mbs_ok and gbs_ok and mp is not None and world_size % mp == 0 and world_size >= mp:
        dp = world_size // mp
        step = s.micro_batch_size * dp
        if s.global_batch_size % step:
            lower = (s.global_batch_size // step) * step
            upper = lower + step
            options = " or ".join(str(v) for v in (lower, upper) if v > 0)
            report(
                f"schedule.global_batch_size={s.global_batch_size} is not divisible by "
                f"micro_batch_size*dp = {s.micro_batch_size}*{dp} = {step} "
                f"(dp = world size {world_size} / tp*pp {mp}): set schedule.global_batch_size={options}, "
                "or change schedule.micro_batch_size"
            )
    if not (_is_int(s.warmup_steps) and s.warmup_steps >= 0):
        report(f"schedule.warmup_steps={s.warmup_steps!r} must be an integer >= 0")
    if s.max_steps is not None:
        _at_least("schedule.max_steps", s.max_steps, 1, report)
    _in_range("schedule.decay_fraction", s.decay_fraction, 0.0, 1.0, report, lo_open=True)


def _check_data(cfg: Config, report: Report) -> None:
    d = cfg.data
    # No divisibility by TP needed: sequence parallelism (which would split the sequence) is off.
    _at_least("data.seq_len", d.seq_len, 1, report)
    if not (_is_num(d.epochs) and d.epochs > 0):
        report(f"data.epochs={d.epochs!r} must be a number > 0")
    if d.unique_tokens is not None and not (_is_int(d.unique_tokens) and d.unique_tokens > 0):
        report(f"data.unique_tokens={d.unique_tokens!r} must be a positive integer or null (use all data)")
    _choice("data.shuffle_algo", d.shuffle_algo, SHUFFLE_ALGOS, report)
    _at_least("data.num_canonical_nodes", d.num_canonical_nodes, 1, report)
    if not (_is_int(d.num_workers) and d.num_workers >= 0):
        report(f"data.num_workers={d.num_workers!r} must be an integer >= 0")
    if d.val_max_samples is not None:
        _at_least("data.val_max_samples", d.val_max_samples, 1, report)


def _check_optim(cfg: Config, report: Report) -> None:
    o = cfg.optim
    if not (_is_num(o.lr) and o.lr > 0):
        report(f"optim.lr={o.lr!r} must be a positive number")
    for name in ("min_lr", "weight_decay", "grad_clip"):
        v = getattr(o, name)
        if not (_is_num(v) and v >= 0):
            report(f"optim.{name}={v!r} must be a number >= 0")
    for name in ("beta1", "beta2"):
        _in_range(f"optim.{name}", getattr(o, name), 0.0, 1.0, report, hi_open=True)
    if not (_is_num(o.eps) and o.eps > 0):
        report(f"optim.eps={o.eps!r} must be a positive number")


def _check_logging(cfg: Config, report: Report) -> None:
    _choice("logging.wandb_mode", cfg.logging.wandb_mode, WANDB_MODES, report)
    _choice("run.on_nan", cfg.run.on_nan, ON_NAN, report)
    _at_least("run.max_skips", cfg.run.max_skips, 0, report)
    if not (_is_num(cfg.run.hang_timeout_s) and cfg.run.hang_timeout_s >= 0):
        report(f"run.hang_timeout_s={cfg.run.hang_timeout_s!r} must be a number of seconds >= 0 "
               f"(0 = no watchdog)")
    if cfg.run.stop_at_step is not None:
        _at_least("run.stop_at_step", cfg.run.stop_at_step, 1, report)
    _at_least("logging.log_interval", cfg.logging.log_interval, 1, report)
    _at_least("logging.eval_interval", cfg.logging.eval_interval, 0, report)
    _at_least("checkpoint.interval", cfg.checkpoint.interval, 0, report)
    _at_least("checkpoint.keep_last", cfg.checkpoint.keep_last, 0, report)
    _at_least("checkpoint.keep_every", cfg.checkpoint.keep_every, 0, report)
    _choice("checkpoint.keep_best", cfg.checkpoint.keep_best, KEEP_BEST, report)


def _tokenizer_name(manifest: dict) -> str:
    tok = manifest.get("tokenizer")
    if isinstance(tok, dict):
        for k in ("name", "type", "path"):
            if tok.get(k):
                return str(tok[k])
    return "the data's tokenizer" if tok is None else str(tok)


def _check_manifest(cfg: Config, manifest: dict, report: Report) -> None:
    where = cfg.data.path or "the data directory"
    val = (manifest.get("splits") or {}).get("val") or {}
    if cfg.checkpoint.keep_best == "val_loss" and not int(val.get("samples") or 0):
        report(f"checkpoint.keep_best=val_loss needs a validation split, and {where} has none: prepare it "
               f"with `megadlm prepare --val-fraction F` or `--val-input FILE`, or set "
               f"checkpoint.keep_best=none")
    seq = manifest.get("seq_len")
    if seq is not None and cfg.data.seq_len != seq:
        report(
            f"data.seq_len={cfg.data.seq_len} but the shards in {where} hold {seq}-token sequences: "
            f"set data.seq_len={seq} or re-run `megadlm prepare --seq-len {cfg.data.seq_len}`"
        )
    data_vocab = manifest.get("vocab_size")
    vocab = cfg.model.vocab_size if cfg.model.vocab_size is not None else data_vocab
    if data_vocab is not None and cfg.model.vocab_size is not None and cfg.model.vocab_size < data_vocab:
        report(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the vocabulary of "
            f"{_tokenizer_name(manifest)} used for {where} ({data_vocab} tokens incl. [MASK]): "
            f"set model.vocab_size>={data_vocab} or null (take it from the manifest)"
        )
    for key in ("mask_id", "eos_id"):
        tid = manifest.get(key)
        if tid is not None and _is_int(vocab) and not (0 <= tid < vocab):
            report(
                f"manifest {key}={tid} of {where} is outside the model vocabulary of {vocab}: "
                "set model.vocab_size to null (take it from the manifest) or re-run `megadlm prepare`"
            )
