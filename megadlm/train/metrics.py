"""Training numbers: the records (`StepMetrics`: throughput, MFU, memory, sample ids) and where
they go (`MetricsLogger`: RUN_DIR/metrics.jsonl always, wandb by config, a progress bar or plain
progress lines).

Only the global rank 0 writes. Every record carries `kind` ("start", "train", "val", "skip" or
"summary"); start and summary records carry the attempt id (rundir.ATTEMPT_ENV).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

from megadlm.atomic_files import atomic_writer
from megadlm.config.schema import Config
from megadlm.rundir import ATTEMPT_ENV, metrics_path

MFU_CONVENTION = "6*N(non-embedding + output matmul) + 12*L*h*s (full attention)"

# Dense bf16 peak TFLOP/s by the name torch.cuda.get_device_name() reports, for MFU when
# logging.peak_tflops is not given. Form factors of one chip differ in clocks and power: the first
# pattern that matches wins, so the PCIe and NVL cards come before their SXM siblings.
PEAK_TFLOPS_BY_DEVICE = [
    (r"H100.*PCIe", 756.0), (r"H100 NVL", 835.0), (r"H100", 989.0),  # "NVIDIA H100 80GB HBM3" is SXM
    (r"H800.*PCIe", 756.0), (r"H800", 989.0),
    (r"H200 NVL", 835.0), (r"H200", 989.0),  # "NVIDIA H200", "NVIDIA GH200 480GB"
    (r"A100", 312.0),  # SXM4 and PCIe alike
    (r"B200", 2250.0),
    (r"L40S", 362.0),
]


def peak_tflops_for(device_name: str) -> float | None:
    """Dense bf16 peak of a device by its CUDA name; None for a device not in the table."""
    import re

    for pattern, peak in PEAK_TFLOPS_BY_DEVICE:
        if re.search(pattern, device_name):
            return peak
    return None


def detect_peak_tflops(cfg: Config) -> float | None:
    if cfg.logging.peak_tflops:
        return cfg.logging.peak_tflops
    from megadlm.parallel.distributed import use_cuda

    if use_cuda():
        import torch

        return peak_tflops_for(torch.cuda.get_device_name())
    return None


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


class MetricsLogger:
    def __init__(self, cfg: Config, run_dir: str, enabled: bool, total_steps: int, start_step: int,
                 resolved_config: dict):
        self.enabled = enabled
        self.path = metrics_path(run_dir)
        self.plain_interval = 0 if cfg.logging.progress_bar else cfg.logging.log_interval
        self.total_steps = total_steps
        self.bar = None
        self.wandb_run = None
        if not enabled:
            return
        _truncate_after(self.path, start_step)
        self.file = open(self.path, "a", buffering=1)
        if cfg.logging.progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc=cfg.run.name, unit="step",
                            dynamic_ncols=True, mininterval=1.0)
        if cfg.logging.wandb_mode != "disabled":
            self.wandb_run = _start_wandb(cfg, run_dir, resolved_config)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {k: _clean(v) for k, v in record.items()}
        self.file.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            kind = record.get("kind", "train")
            self.wandb_run.log({f"{kind}/{k}": v for k, v in record.items()
                                if isinstance(v, (int, float)) and k != "step"},
                               step=int(record["step"]))

    def rewind(self, step: int) -> None:
        """Forget records after `step` (a roll-back to that step's checkpoint)."""
        if not self.enabled:
            return
        self.file.close()
        _truncate_after(self.path, step)
        self.file = open(self.path, "a", buffering=1)

    def progress(self, step: int, postfix: dict) -> None:
        """The bar's position and figures, or (progress_bar: false) a plain line every
        log_interval steps for logs that are files."""
        shown = {k: (f"{v:,.0f}" if k == "tok/s" else f"{v:.4g}" if isinstance(v, float) else v)
                 for k, v in postfix.items() if v is not None}
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(shown, refresh=True)
        elif self.enabled and self.plain_interval and (step % self.plain_interval == 0
                                                       or step == self.total_steps):
            print(f"step {step}/{self.total_steps} " + " ".join(f"{k} {v}" for k, v in shown.items()),
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.file.close()
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.finish()
            wandb.teardown()


def _start_wandb(cfg: Config, run_dir: str, resolved_config: dict):
    import wandb

    # Keep every wandb file inside the run directory (not $HOME or /tmp).
    wandb_dir = os.path.join(run_dir, "wandb_files")
    os.makedirs(wandb_dir, exist_ok=True)
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        os.environ.setdefault(var, wandb_dir)
    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(project=cfg.logging.wandb_project, name=cfg.logging.wandb_name or cfg.run.name,
                      mode=cfg.logging.wandb_mode, dir=wandb_dir, config=resolved_config,
                      settings=wandb.Settings(x_disable_stats=True, console="off"))


def _truncate_after(path: str, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop their old records so every step
    appears once (the file is rewritten atomically)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        with atomic_writer(path) as f:
            f.writelines(kept)


def slurm_restarts() -> int:
    """How many times Slurm has requeued this job (0 outside Slurm): recorded in the metrics."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


class StepMetrics:
    """Builds the records of a run: throughput and MFU of each step, the model state's memory
    once, the global batch's sample ids on request, and the start and summary records."""

    def __init__(self, cfg: Config, flops_per_token: float, peak_tflops: float | None, world_size: int,
                 epoch_samples: int, total_steps: int, gather_sample_ids=None, live_bytes=None,
                 bytes_before: int | None = None):
        self.cfg = cfg
        self.flops_per_token = flops_per_token
        self.peak_tflops = peak_tflops
        self.world_size = world_size
        self.epoch_samples = epoch_samples
        self.total_steps = total_steps
        self.tokens_per_step = cfg.schedule.global_batch_size * cfg.data.seq_len
        self.gather_sample_ids = gather_sample_ids  # micro-batches -> the global batch's ids (a collective)
        # () -> live tensor bytes (rank 0 only); `bytes_before` was read before the model existed
        self.live_bytes = live_bytes
        self.bytes_before = bytes_before
        self.model_state_measured = False

    def epoch(self, consumed_samples: int) -> float:
        return consumed_samples / self.epoch_samples

    def log_due(self, step: int) -> bool:
        return step % self.cfg.logging.log_interval == 0 or step == self.total_steps

    def train_record(self, state, lr: float, result, elapsed: float, micro: list) -> dict:
        """Collective when logging.sample_ids is on. `result` is the runner's StepResult."""
        tokens_per_s = self.tokens_per_step / elapsed if elapsed > 0 else float("nan")
        tflops = self.flops_per_token * tokens_per_s / 1e12 / self.world_size
        grad_norm = result.grad_norm
        record = {"kind": "train", "step": state.step, "epoch": self.epoch(state.consumed_samples),
                  # the repetition this step's data came from: where the step started
                  "repetition": (state.consumed_samples - self.cfg.schedule.global_batch_size)
                  // self.epoch_samples + 1,
                  "loss": result.loss, "lr": lr,
                  "grad_norm": float(grad_norm) if grad_norm is not None else None,
                  "tokens_seen": state.tokens_seen, "consumed_samples": state.consumed_samples,
                  "restarts": slurm_restarts(), "tokens_per_s": tokens_per_s, "step_time_s": elapsed,
                  "tflops_per_device": tflops, "mfu": tflops / self.peak_tflops if self.peak_tflops else None}
        if self.cfg.objective.type == "mdm" or result.masked_count > 0:
            record["masked_ce"] = result.masked_ce_sum / result.masked_count if result.masked_count else None
        if self.cfg.logging.sample_ids and self.gather_sample_ids is not None:
            record["sample_ids"] = self.gather_sample_ids(micro)
        return record

    def add_model_state_once(self, record: dict) -> None:
        """Measured once, between steps (the caller has dropped the step's tensors): what rank 0
        holds for parameters and optimizer state, what `megadlm plan` estimates as model state."""
        if self.model_state_measured or self.bytes_before is None:
            return
        record["model_state_bytes_rank0"] = self.live_bytes() - self.bytes_before
        self.model_state_measured = True

    def start_record(self, state, **facts: Any) -> dict:
        return {"kind": "start", "step": state.step, "total_steps": self.total_steps,
                "steps_per_epoch": self.epoch_samples // self.cfg.schedule.global_batch_size,
                "epoch_samples": self.epoch_samples,
                "epochs": self.total_steps / (self.epoch_samples // self.cfg.schedule.global_batch_size),
                "world_size": self.world_size, **facts, "objective": self.cfg.objective.type,
                "resumed": state.step > 0, "restarts": slurm_restarts(),
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "attempt": os.environ.get(ATTEMPT_ENV),
                "flops_per_token": self.flops_per_token, "time": time.time(),
                "mfu_convention": MFU_CONVENTION}

    def summary_record(self, state, interrupted: str | None, last_val: dict | None) -> dict:
        return {"kind": "summary", "step": state.step, "finished": state.step >= self.total_steps,
                "interrupted": interrupted, "restarts": slurm_restarts(),
                "attempt": os.environ.get(ATTEMPT_ENV),
                "epoch": self.epoch(state.consumed_samples), "tokens_seen": state.tokens_seen,
                "final_val": last_val, "time": time.time()}
