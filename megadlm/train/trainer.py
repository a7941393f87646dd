"""Training: one code path for CPU/gloo and GPU/NCCL, one process or many.

`train` runs the pre-flight checks (before any process group), builds the pieces (process groups,
model and DeepSpeed engine in a runner, streaming data, and the components that own their timing:
checkpointing, validation, metrics, the stop request and the watchdog) and hands them to `Loop`,
which only sequences steps.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from megadlm import preflight
from megadlm.config.loader import config_to_dict, dump_config
from megadlm.config.schema import Config
from megadlm.config.validate import bf16_zero_problem
from megadlm.console import log_library_output_to
from megadlm.errors import ConfigError, DivergenceError
from megadlm.objectives import ObjectiveBatch, make_batch
from megadlm.objectives.randomness import dropout_seeds
from megadlm.parallel import distributed as pdist
from megadlm.parallel.dropout_streams import seed_dropout_streams
from megadlm.rundir import CONFIG, DEEPSPEED_CONFIG, checkpoint_root, rank_log_path
from megadlm.train.checkpoint import TrainState
from megadlm.train.checkpointing import Checkpointer, resume_point
from megadlm.train.metrics import MetricsLogger, StepMetrics
from megadlm.train.schedule import lr_at
from megadlm.train.stop import StopRequest
from megadlm.train.validation import Validator
from megadlm.train.watchdog import Watchdog, stall_for_tests


@dataclass
class RunPlan:
    """Sizes derived once from the config, the manifest and the layout."""

    mask_id: int
    grad_accum: int
    total_steps: int
    steps_per_epoch: int
    epoch_samples: int


def train(cfg: Config, run_dir: str, resume: bool = True, resume_from: str | None = None) -> dict:
    """Train until the configured number of steps; returns the final summary record."""
    preflight.check_run_dir(run_dir)
    # once per node (LOCAL_RANK 0 hashes the shards; the other ranks wait for it in init)
    checked = preflight.check(cfg, pdist.env_world_size(),
                              verify_data=os.environ.get("LOCAL_RANK", "0") == "0")
    # the run reads the resolved data directory; the caller's config stays as it was given
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=checked.data_path))
    layout = pdist.init_distributed(cfg.parallel.tp, cfg.parallel.pp)
    try:
        return _train(cfg, run_dir, resume, resume_from, checked, layout)
    finally:
        pdist.shutdown()


def _train(cfg: Config, run_dir: str, resume: bool, resume_from: str | None, checked: preflight.Preflight,
           layout: pdist.Layout) -> dict:
    from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_INFO

    from megadlm.data.loader import TrainData, ValData, release_shared_memory
    from megadlm.model.build import compute_dtype, flops_per_token
    from megadlm.train.memory import live_tensor_bytes
    from megadlm.train.metrics import detect_peak_tflops
    from megadlm.train.runners import build_runner

    point = resume_point(run_dir, checked.facts, resume, resume_from)
    if layout.is_main:
        os.makedirs(run_dir, exist_ok=True)
        dump_config(cfg, os.path.join(run_dir, CONFIG))
    dist.barrier()
    log_library_output_to(rank_log_path(run_dir, layout.rank))
    grad_accum = cfg.schedule.global_batch_size // (cfg.schedule.micro_batch_size * layout.dp)
    live_bytes = (lambda: live_tensor_bytes(pdist.device().type)) if layout.is_main else None
    bytes_before = live_bytes() if live_bytes else None  # before the model exists
    bf16 = compute_dtype(cfg.parallel.precision) == torch.bfloat16
    if bf16 and bf16_zero_problem(cfg.parallel.zero_stage):  # precision "auto" became bf16 on this GPU
        error = ConfigError(bf16_zero_problem(cfg.parallel.zero_stage))
        error.same_on_every_rank = True
        raise error
    runner = build_runner(cfg, checked.padded_vocab_size, layout, grad_accum, bf16,
                          load_universal=point is not None and point.universal)
    if layout.is_main:
        with open(os.path.join(run_dir, DEEPSPEED_CONFIG), "w") as f:
            json.dump(runner.deepspeed_config, f, indent=2)
    # Dropout streams: hidden/MLP dropout shares one per replica and pipeline stage with the stage's
    # TP ranks (their tensors are replicated); attention dropout has one per TP rank (sharded heads).
    seed_dropout_streams(*dropout_seeds(cfg.run.seed, layout.dp_rank, layout.pp_rank, layout.tp_rank),
                         pdist.device())

    data = TrainData(cfg, checked.manifest, run_dir, replication=layout.tp * layout.pp, seed=cfg.run.seed)
    val = ValData(cfg, checked.manifest, run_dir, layout.dp_rank, layout.dp)
    total_steps = cfg.schedule.max_steps or max(1, math.ceil(cfg.data.epochs * data.steps_per_epoch))
    plan = RunPlan(int(checked.manifest["mask_id"]), grad_accum, total_steps, data.steps_per_epoch,
                   data.epoch_samples)
    resolved = config_to_dict(cfg)
    checkpointer = Checkpointer(run_dir, cfg.checkpoint, total_steps, data.epoch_samples, checked.facts,
                                resolved, layout.is_main)
    checkpointer.bind(runner.engine, {UNIVERSAL_CHECKPOINT_INFO: runner.universal_info})
    state = checkpointer.restore(point) if point is not None else TrainState()
    metrics = StepMetrics(cfg, flops_per_token(cfg, checked.padded_vocab_size), detect_peak_tflops(cfg),
                          layout.world_size, data.epoch_samples, total_steps,
                          gather_sample_ids=lambda micro: _global_batch_ids(micro, layout),
                          live_bytes=live_bytes, bytes_before=bytes_before)
    logger = MetricsLogger(cfg, run_dir, layout.is_main, total_steps, state.step, resolved)
    logger.log(metrics.start_record(
        state, tp=layout.tp, pp=layout.pp, dp=layout.dp, grad_accum=grad_accum,
        zero_stage=cfg.parallel.zero_stage, padded_vocab_size=checked.padded_vocab_size,
        cpu_threads=torch.get_num_threads()))
    validator = Validator(cfg, runner, val, data.steps_per_epoch, total_steps, plan.mask_id, pdist.device())
    stop = StopRequest(run_dir, reads_stop_file=layout.is_main)
    watchdog = Watchdog(cfg.run.hang_timeout_s, layout.rank, rank_log_path(run_dir, layout.rank))
    loop = Loop(cfg, plan, runner, data, validator, checkpointer, metrics, logger, stop, watchdog,
                layout.rank)
    try:
        return loop.run(state)
    finally:
        release_shared_memory(data, val)
        watchdog.stop()
        stop.close()
        logger.close()


def _global_batch_ids(micro: list, layout: pdist.Layout) -> list[int]:
    """This step's sample ids over all data-parallel replicas, in DP-rank order (a collective)."""
    mine = ((layout.dp_rank, [int(i) for b in micro for i in b.sample_ids])
            if layout.tp_rank == layout.pp_rank == 0 else None)
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return [i for _, ids in sorted(e for e in every if e is not None) for i in ids]


class Loop:
    """Sequences the steps; each component decides its own timing (`due`)."""

    def __init__(self, cfg: Config, plan: RunPlan, runner: Any, data: Any, validator: Validator,
                 checkpointer: Checkpointer, metrics: StepMetrics, logger: MetricsLogger, stop: StopRequest,
                 watchdog: Watchdog, rank: int = 0):
        self.cfg, self.plan, self.runner, self.data = cfg, plan, runner, data
        self.validator, self.checkpointer, self.metrics, self.logger = (
            validator, checkpointer, metrics, logger)
        self.stop, self.watchdog, self.rank = stop, watchdog, rank

    def run(self, state: TrainState) -> dict:
        cfg, plan, gbs = self.cfg, self.plan, self.cfg.schedule.global_batch_size
        batches = self.data.batches(state.consumed_samples)
        last_val: dict | None = None
        interrupted: str | None = None
        stop_at = min(plan.total_steps, cfg.run.stop_at_step or plan.total_steps)
        self.watchdog.start()
        while state.step < stop_at and interrupted is None:
            t0 = time.perf_counter()
            # Every rank pulls its micro-batches, middle pipeline stages included: streaming's
            # barriers need all ranks to iterate.
            micro = [next(batches) for _ in range(plan.grad_accum)]
            if state.consumed_samples in state.skipped_batches:  # dropped after a NaN (run.on_nan=skip)
                state.consumed_samples += gbs
                continue
            stall_for_tests(state.step + 1, self.rank)
            lr = self._set_lr(state.step)
            try:
                result = self._step(micro, state.step + 1)
            except DivergenceError as error:
                if cfg.run.on_nan != "skip":
                    raise
                state = self._roll_back(state, error)
                batches.close()  # end this iteration before streaming starts the rewound one
                batches = self.data.batches(state.consumed_samples)
                continue
            state.step += 1
            state.consumed_samples += gbs
            state.tokens_seen += gbs * cfg.data.seq_len
            record = self.metrics.train_record(state, lr, result, time.perf_counter() - t0, micro)
            del micro, result  # the one-time memory reading must see only the model's state
            self.metrics.add_model_state_once(record)
            if self.metrics.log_due(state.step):
                self.logger.log(record)
            if self.validator.due(state.step):
                self.watchdog.beat("validation")
                last_val = self._validate(state)
                self.checkpointer.after_validation(state, last_val["val_loss"])
            self.logger.progress(state.step, {"loss": record["loss"], "epoch": f"{record['epoch']:.2f}",
                                              "tok/s": record["tokens_per_s"],
                                              "val": last_val["val_loss"] if last_val else None})
            self.watchdog.beat(f"the checkpoint (if due) and the stop agreement after step {state.step}")
            self.checkpointer.maybe_save(state)
            interrupted = self.stop.agreed(pdist.device())
            self.watchdog.beat()
        self.watchdog.beat("the final checkpoint")
        self.checkpointer.maybe_save(state, final=True)
        if interrupted and self.rank == 0:
            self.stop.clear_file()
        summary = self.metrics.summary_record(state, interrupted, last_val)
        self.logger.log(summary)
        return summary

    def _set_lr(self, step: int) -> float:
        lr = lr_at(step, self.plan.total_steps, self.cfg.schedule, self.cfg.optim)
        for group in self.runner.engine.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _step(self, micro: list, step: int):
        """One optimizer step over the micro-batches; raises DivergenceError before anything of a
        non-finite step can be saved."""
        cfg = self.cfg
        batch_ids = self._global_batch_ids(micro) if cfg.objective.antithetic_t else None
        batches = [make_batch(cfg.objective, b.tokens, b.sample_ids, b.epoch, cfg.run.seed, self.plan.mask_id,
                              cfg.data.seq_len, train=True, batch_ids=batch_ids) for b in micro]
        _inject_nan_for_tests(batches, micro)
        result = self.runner.train_step(batches, step)
        _stop_if_grad_norm_not_finite(result.grad_norm, step, self.checkpointer.run_dir)
        return result

    def _global_batch_ids(self, micro: list) -> torch.Tensor:
        """The sample ids of this step's global batch (a collective), or this rank's when the loop
        runs without a process group."""
        gather = self.metrics.gather_sample_ids
        ids = gather(micro) if gather is not None else [int(i) for b in micro for i in b.sample_ids]
        return torch.tensor(ids, dtype=torch.int64)

    def _validate(self, state: TrainState) -> dict:
        record = {"kind": "val", "step": state.step, "epoch": self.metrics.epoch(state.consumed_samples),
                  "tokens_seen": state.tokens_seen, **self.validator.run()}
        self.logger.log(record)
        return record

    def _roll_back(self, state: TrainState, error: DivergenceError) -> TrainState:
        bad = state.consumed_samples
        restored = self.checkpointer.roll_back(state, error, self.cfg.run.max_skips)
        self.logger.rewind(restored.step)
        message = (f"step {state.step + 1} diverged ({error}); rolled back to step {restored.step} and will "
                   f"skip the global batch at sample {bad}")
        self.logger.log({"kind": "skip", "step": restored.step, "skipped_batch_at_sample": bad,
                         "message": message})
        if self.rank == 0:
            print(f"megadlm: warning: {message}", file=sys.stderr, flush=True)
        return restored


def _stop_if_grad_norm_not_finite(norm: float | None, step: int, run_dir: str) -> None:
    # Depending on the ZeRO stage DeepSpeed skips or applies an inf/NaN gradient; either way the
    # run has diverged. The norm is already all-reduced, so every rank stops here together,
    # before this step can be saved.
    if norm is not None and not math.isfinite(float(norm)):
        raise DivergenceError(
            f"gradient norm is {float(norm)} at step {step}: training has diverged, so the run stops "
            f"and no checkpoint was written for this step. Lower optim.lr or set optim.grad_clip, then "
            f"resume from the last checkpoint in {checkpoint_root(run_dir)}")


def _inject_nan_for_tests(batches: list[ObjectiveBatch], micro: list) -> None:
    """Fault injection for the tests of run.on_nan: MEGADLM_FAULT_NAN_SAMPLE=ID makes the loss of
    any micro-batch holding that sample id NaN (as a broken sample or a hardware fault would)."""
    target = os.environ.get("MEGADLM_FAULT_NAN_SAMPLE")
    if target is None:
        return
    for batch, raw in zip(batches, micro):
        if int(target) in [int(i) for i in raw.sample_ids]:
            batch.weights.fill_(float("nan"))

