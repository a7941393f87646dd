"""The training loop: one code path for CPU/gloo and GPU/NCCL, one process or many.

Flow: validate config against the data manifest (before any process group) -> process groups ->
model (megatron-core) -> DeepSpeed engine (AdamW, ZeRO, clipping, accumulation) -> data (streaming)
-> resume if the run directory has a checkpoint -> steps, validation, checkpoints, metrics.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megadlm.config.loader import config_to_dict, dump_config
from megadlm.config.schema import Config
from megadlm.config.validate import padded_vocab_size, validate_config
from megadlm.data.integrity import verify_shards
from megadlm.data.prepare import load_manifest
from megadlm.data.tokenizer import tokenizer_from_manifest
from megadlm.errors import CheckpointError, ConfigError, DivergenceError, RunDirError
from megadlm.objectives import make_batch
from megadlm.objectives.randomness import DROPOUT_STREAM, derive_seed
from megadlm.parallel import distributed as pdist
from megadlm.train import checkpoint as ckpt
from megadlm.train.evaluate import validate
from megadlm.train.memory import live_tensor_bytes
from megadlm.train.metrics import MetricsLogger, detect_peak_tflops
from megadlm.train.schedule import lr_at
from megadlm.train.stop import StopRequest


@dataclass
class RunPlan:
    """Sizes derived once from the config, the manifest and the layout."""

    padded_vocab_size: int
    mask_id: int
    grad_accum: int
    total_steps: int
    steps_per_epoch: int
    epoch_samples: int


def check_config(cfg: Config, world_size: int) -> dict:
    """Every check that needs no process group; returns the data manifest."""
    validate_config(cfg, world_size=world_size)
    if cfg.data.remote and not (cfg.data.path and os.path.isfile(os.path.join(cfg.data.path, "manifest.json"))):
        # data only on an object store: its manifest and tokenizer are fetched into a local cache
        # (again when a saved config names a cache this machine does not have)
        from megadlm.data.remote import fetch_metadata

        cfg.data.path = str(fetch_metadata(cfg.data.remote, cfg.data.path or None))
    elif not cfg.data.path:
        raise ConfigError("data.path is not set: point it at a `megadlm prepare` output directory "
                          "(--set data.path=DIR), or set data.remote to its copy on an object store")
    manifest = load_manifest(cfg.data.path)
    validate_config(cfg, world_size=world_size, manifest=manifest)
    # The shards' token ids only mean something with the tokenizer that wrote them.
    tokenizer_from_manifest(cfg.data.path)
    if cfg.model.init_from:
        from megadlm.convert.import_hf import check_init_from

        vocab = cfg.model.vocab_size or int(manifest["vocab_size"])
        padded = padded_vocab_size(vocab, cfg.model.make_vocab_size_divisible_by, cfg.parallel.tp)
        check_init_from(cfg.model.init_from, model_shape(cfg, padded))
    if not cfg.data.remote and os.environ.get("LOCAL_RANK", "0") == "0":
        verify_shards(cfg.data.path)  # once per node; the other ranks wait for it in init
    return manifest


# Model fields that do not change what a checkpoint holds (or may change between resumes).
_NOT_SHAPE = ("init_std", "activation_checkpointing", "make_vocab_size_divisible_by", "vocab_size", "init_from")


def model_shape(cfg: Config, padded_vocab: int) -> dict:
    """The model fields a checkpoint or imported weights must agree with."""
    model = {k: v for k, v in config_to_dict(cfg)["model"].items() if k not in _NOT_SHAPE}
    model["padded_vocab_size"] = padded_vocab
    if model.get("num_query_groups") is None:
        model["num_query_groups"] = model["num_attention_heads"]
    if model.get("kv_channels") is None:
        model["kv_channels"] = model["hidden_size"] // model["num_attention_heads"]
    return model


def run_facts(cfg: Config, layout: pdist.Layout, padded_vocab: int, manifest: dict) -> ckpt.RunFacts:
    return ckpt.RunFacts(
        objective=cfg.objective.type, model=model_shape(cfg, padded_vocab),
        layout={"tp": layout.tp, "pp": layout.pp, "dp": layout.dp, "zero_stage": cfg.parallel.zero_stage},
        data={"seq_len": cfg.data.seq_len, "tokenizer_sha256": manifest.get("tokenizer", {}).get("sha256")})


def _resume_point(cfg: Config, run_dir: str, resume: bool, resume_from: str | None,
                  facts: ckpt.RunFacts) -> tuple[str, dict] | None:
    """The verified checkpoint to continue from, after every check and before anything is written."""
    if not resume:
        if ckpt.has_checkpoints(run_dir):
            raise RunDirError(f"{run_dir} already holds checkpoints and --no-resume was given: "
                                f"choose another --run-dir or drop --no-resume to continue that run")
        return None
    chosen = ckpt.choose(run_dir, resume_from)
    if chosen is not None:
        problems = ckpt.compatibility_problems(chosen[1]["facts"], facts)
        if problems:
            raise CheckpointError(f"cannot resume from {chosen[0]}: " + "; ".join(problems)
                                + ". Nothing in the run directory was changed.")
    return chosen


def slurm_restarts() -> int:
    """How many times Slurm has requeued this job (0 outside Slurm): recorded in the metrics."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def check_run_dir(run_dir: str) -> None:
    """The run directory must be a writable directory, or not exist yet under a writable parent."""
    existing = run_dir
    while not os.path.exists(existing):
        existing = os.path.dirname(existing) or "."
    if not os.path.isdir(existing):
        raise RunDirError(f"run directory {run_dir}: {existing} exists and is not a directory; "
                            f"choose another --run-dir")
    if not os.access(existing, os.R_OK | os.W_OK | os.X_OK):
        raise RunDirError(f"run directory {run_dir}: {existing} is not readable and writable by this user; "
                            f"fix its permissions or choose another --run-dir")


def train(cfg: Config, run_dir: str, resume: bool = True, resume_from: str | None = None) -> dict:
    """Train until the configured number of steps; returns the final summary record."""
    check_run_dir(run_dir)
    manifest = check_config(cfg, pdist.env_world_size())
    layout = pdist.init_distributed(cfg.parallel.tp, cfg.parallel.pp)
    try:
        return _train(cfg, run_dir, resume, resume_from, manifest, layout)
    finally:
        pdist.shutdown()


def _train(cfg: Config, run_dir: str, resume: bool, resume_from: str | None, manifest: dict,
           layout: pdist.Layout) -> dict:
    from megadlm.data.loader import TrainData, ValData
    from megadlm.model.build import compute_dtype
    from megadlm.train.runners import build_runner

    vocab = cfg.model.vocab_size or int(manifest["vocab_size"])
    padded = padded_vocab_size(vocab, cfg.model.make_vocab_size_divisible_by, layout.tp)
    facts = run_facts(cfg, layout, padded, manifest)
    resume_point = _resume_point(cfg, run_dir, resume, resume_from, facts)
    if layout.is_main:
        os.makedirs(run_dir, exist_ok=True)
        dump_config(cfg, os.path.join(run_dir, "config.yaml"))
    dist.barrier()
    grad_accum = cfg.schedule.global_batch_size // (cfg.schedule.micro_batch_size * layout.dp)
    bf16 = compute_dtype(cfg.parallel.precision) == torch.bfloat16
    tensor_bytes_before = live_tensor_bytes(pdist.device().type) if layout.is_main else 0
    universal = resume_point is not None and bool(resume_point[1]["facts"]["layout"].get("universal"))
    runner = build_runner(cfg, padded, layout, grad_accum, bf16, load_universal=universal)
    # Dropout streams: one per replica and pipeline stage, shared by the TP ranks of a replica.
    torch.manual_seed(derive_seed(cfg.run.seed, DROPOUT_STREAM, layout.dp_rank, layout.pp_rank))

    data = TrainData(cfg, manifest, run_dir, replication=layout.tp * layout.pp, seed=cfg.run.seed)
    val = ValData(cfg, manifest, run_dir, layout.dp_rank, layout.dp)
    total_steps = cfg.schedule.max_steps or max(1, math.ceil(cfg.data.epochs * data.steps_per_epoch))
    plan = RunPlan(padded, int(manifest["mask_id"]), grad_accum, total_steps,
                   data.steps_per_epoch, data.epoch_samples)

    state = ckpt.TrainState()
    if resume_point is not None:
        state = ckpt.load(runner.engine, *resume_point)
    resolved = config_to_dict(cfg)
    logger = MetricsLogger(cfg, run_dir, layout.is_main, total_steps, state.step, resolved)
    # what every checkpoint records besides the engine: retention, the run's facts, the config
    from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_INFO

    checkpoint_args = (ckpt.Retention(cfg.checkpoint.keep_last, cfg.checkpoint.keep_every), facts, resolved,
                       {UNIVERSAL_CHECKPOINT_INFO: runner.universal_info})
    loop = _Loop(cfg, runner, data, val, plan, layout, logger, run_dir, tensor_bytes_before, checkpoint_args)
    if layout.is_main:
        logger.log({"kind": "start", "step": state.step, "total_steps": total_steps,
                    "steps_per_epoch": plan.steps_per_epoch, "epoch_samples": plan.epoch_samples,
                    "epochs": total_steps / plan.steps_per_epoch, "world_size": layout.world_size,
                    "tp": layout.tp, "pp": layout.pp, "dp": layout.dp, "grad_accum": grad_accum,
                    "zero_stage": cfg.parallel.zero_stage, "padded_vocab_size": padded,
                    "objective": cfg.objective.type, "resumed": state.step > 0,
                    "restarts": slurm_restarts(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                    "flops_per_token": loop.flops_per_token, "cpu_threads": torch.get_num_threads(),
                    "time": time.time(), "mfu_convention": "6*N(non-embedding + output matmul) + 12*L*h*s (full attention)"})
    stop = StopRequest(run_dir)
    try:
        return loop.run(state, stop)
    finally:
        stop.close()
        logger.close()


class _Loop:
    def __init__(self, cfg, runner, data, val, plan: RunPlan, layout, logger, run_dir, tensor_bytes_before: int,
                 checkpoint_args: tuple):
        from megadlm.model.build import flops_per_token

        self.cfg, self.runner, self.engine, self.data, self.val = cfg, runner, runner.engine, data, val
        self.plan, self.layout, self.logger, self.run_dir = plan, layout, logger, run_dir
        self.flops_per_token = flops_per_token(cfg, plan.padded_vocab_size)
        self.peak_tflops = detect_peak_tflops(cfg)
        self.tensor_bytes_before = tensor_bytes_before
        self.checkpoint_args = checkpoint_args
        self.model_state_logged = False

    def epoch_of(self, consumed: int) -> float:
        return consumed / self.plan.epoch_samples

    def objective_batch(self, tokens, sample_ids, epoch, train: bool, seed: int):
        return make_batch(self.cfg.objective, tokens, sample_ids, epoch, seed, self.plan.mask_id,
                          self.cfg.data.seq_len, train=train)

    def _global_batch_ids(self, micro) -> list[int]:
        """This step's sample ids over all data-parallel replicas, in DP-rank order."""
        lay = self.layout
        mine = (lay.dp_rank, [int(i) for b in micro for i in b.sample_ids]) if lay.tp_rank == lay.pp_rank == 0 else None
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, mine)
        return [i for _, ids in sorted(e for e in every if e is not None) for i in ids]

    def run(self, state: ckpt.TrainState, stop: StopRequest) -> dict:
        cfg, plan = self.cfg, self.plan
        batches = self.data.batches(state.consumed_samples)
        last_val: dict | None = None
        stop_at = min(plan.total_steps, cfg.run.stop_at_step or plan.total_steps)
        interrupted = None
        while state.step < stop_at and interrupted is None:
            t0 = time.perf_counter()
            lr = lr_at(state.step, plan.total_steps, cfg.schedule, cfg.optim)
            for group in self.engine.optimizer.param_groups:
                group["lr"] = lr
            epoch_index = state.consumed_samples // plan.epoch_samples
            # Every rank pulls its micro-batches, middle pipeline stages included: streaming's
            # barriers need all ranks to iterate.
            micro = [next(batches) for _ in range(plan.grad_accum)]
            if state.consumed_samples in state.skipped_batches:  # dropped after a NaN (run.on_nan=skip)
                state.consumed_samples += cfg.schedule.global_batch_size
                continue
            step_batches = [self.objective_batch(b.tokens, b.sample_ids, b.epoch, True, cfg.run.seed)
                            for b in micro]
            _inject_nan_for_tests(step_batches, micro)
            try:
                result = self.runner.train_step(step_batches, state.step + 1)
                grad_norm = result.grad_norm
                self._stop_if_grad_norm_not_finite(grad_norm, state.step)
            except DivergenceError as error:
                if cfg.run.on_nan != "skip":
                    raise
                state = self._roll_back_and_skip(state, error)
                batches.close()  # end this iteration before streaming starts the rewound one
                batches = self.data.batches(state.consumed_samples)
                continue
            state.step += 1
            state.consumed_samples += cfg.schedule.global_batch_size
            state.tokens_seen += cfg.schedule.global_batch_size * cfg.data.seq_len
            elapsed = time.perf_counter() - t0
            record = self._train_record(state, lr, result, grad_norm, elapsed, epoch_index)
            if cfg.logging.sample_ids:
                record["sample_ids"] = self._global_batch_ids(micro)
            if not self.model_state_logged and self.layout.is_main:
                # Measured once, between steps: what rank 0 holds for parameters and optimizer state
                # (what `megadlm plan` estimates as model state).
                del micro, result
                record["model_state_bytes_rank0"] = (live_tensor_bytes(pdist.device().type)
                                                     - self.tensor_bytes_before)
                self.model_state_logged = True
            if state.step % cfg.logging.log_interval == 0 or state.step == plan.total_steps:
                self.logger.log(record)
            postfix = {"loss": record["loss"], "epoch": f"{record['epoch']:.2f}"}
            if self._eval_due(state.step):
                last_val = self._validate(state)
            if last_val:
                postfix["val"] = last_val["val_loss"]
            self.logger.progress(state.step, postfix)
            if cfg.checkpoint.interval and state.step % cfg.checkpoint.interval == 0:
                ckpt.save(self.engine, self.run_dir, state, *self.checkpoint_args)
            interrupted = stop.agreed(pdist.device())
        stopped_early = state.step < plan.total_steps
        if (cfg.checkpoint.save_final or stopped_early) and ckpt.latest_tag(self.run_dir) != ckpt.tag_of(state.step):
            ckpt.save(self.engine, self.run_dir, state, *self.checkpoint_args)
        if interrupted and self.layout.is_main:
            stop.clear_file()
        summary = {"kind": "summary", "step": state.step, "finished": not stopped_early,
                   "interrupted": interrupted, "restarts": slurm_restarts(),
                   "epoch": self.epoch_of(state.consumed_samples),
                   "tokens_seen": state.tokens_seen, "final_val": last_val, "time": time.time()}
        self.logger.log(summary)
        return summary

    def _roll_back_and_skip(self, state: ckpt.TrainState, error: DivergenceError) -> ckpt.TrainState:
        """Restore the newest checkpoint (weights, optimizer, RNG) and mark the global batch that
        diverged to be skipped when the replay reaches it."""
        bad = state.consumed_samples
        if len(state.skipped_batches) >= self.cfg.run.max_skips:
            raise DivergenceError(f"{error} (run.on_nan=skip already skipped run.max_skips="
                                  f"{self.cfg.run.max_skips} batches: the run is diverging, not unlucky)")
        chosen = ckpt.choose(self.run_dir)
        if chosen is None:
            raise DivergenceError(f"{error} (run.on_nan=skip needs a checkpoint to roll back to: set "
                                  f"checkpoint.interval)")
        restored = ckpt.load(self.engine, *chosen)
        restored.skipped_batches = sorted(set(restored.skipped_batches) | set(state.skipped_batches) | {bad})
        self.logger.rewind(restored.step)
        message = (f"step {state.step + 1} diverged ({error}); rolled back to step {restored.step} and will "
                   f"skip the global batch at sample {bad}")
        self.logger.log({"kind": "skip", "step": restored.step, "skipped_batch_at_sample": bad,
                         "message": message})
        if self.layout.is_main:
            print(f"megadlm: warning: {message}", file=sys.stderr, flush=True)
        return restored

    def _stop_if_grad_norm_not_finite(self, norm, step: int) -> None:
        # Depending on the ZeRO stage DeepSpeed skips or applies an inf/NaN gradient; either way the
        # run has diverged. The norm is already all-reduced, so every rank stops here together,
        # before this step can be saved.
        if norm is not None and not math.isfinite(float(norm)):
            raise DivergenceError(
                f"gradient norm is {float(norm)} at step {step + 1}: training has diverged, so the run stops "
                f"and no checkpoint was written for this step. Lower optim.lr or set optim.grad_clip, then "
                f"resume from the last checkpoint in {ckpt.checkpoint_root(self.run_dir)}")

    def _train_record(self, state, lr, result, grad_norm, elapsed, epoch_index) -> dict:
        tokens = self.cfg.schedule.global_batch_size * self.cfg.data.seq_len
        tokens_per_s = tokens / elapsed if elapsed > 0 else float("nan")
        tflops = self.flops_per_token * tokens_per_s / 1e12
        record = {"kind": "train", "step": state.step, "epoch": self.epoch_of(state.consumed_samples),
                  "repetition": epoch_index + 1, "loss": result.loss, "lr": lr,
                  "grad_norm": float(grad_norm) if grad_norm is not None else None,
                  "tokens_seen": state.tokens_seen, "consumed_samples": state.consumed_samples,
                  "restarts": slurm_restarts(), "tokens_per_s": tokens_per_s, "step_time_s": elapsed,
                  "tflops_per_device": tflops / self.layout.world_size,
                  "mfu": (tflops / self.layout.world_size / self.peak_tflops) if self.peak_tflops else None}
        if self.cfg.objective.type == "mdm" or result.masked_count > 0:
            record["masked_ce"] = result.masked_ce_sum / result.masked_count if result.masked_count else None
        return record

    def _eval_due(self, step: int) -> bool:
        if not self.val.available:
            return False
        interval = self.cfg.logging.eval_interval or self.plan.steps_per_epoch
        return step % interval == 0 or step == self.plan.total_steps

    def _validate(self, state: ckpt.TrainState) -> dict:
        result = validate(self, self.cfg.schedule.micro_batch_size)
        record = {"kind": "val", "step": state.step, "epoch": self.epoch_of(state.consumed_samples),
                  "tokens_seen": state.tokens_seen, **result}
        self.logger.log(record)
        return record


def _inject_nan_for_tests(batches, micro) -> None:
    """Fault injection for the tests of run.on_nan: MEGADLM_FAULT_NAN_SAMPLE=ID makes the loss of
    any micro-batch holding that sample id NaN (as a broken sample or a hardware fault would)."""
    target = os.environ.get("MEGADLM_FAULT_NAN_SAMPLE")
    if target is None:
        return
    for batch, raw in zip(batches, micro):
        if int(target) in [int(i) for i in raw.sample_ids]:
            batch.weights.fill_(float("nan"))
