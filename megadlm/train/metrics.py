"""Where training numbers go: RUN_DIR/metrics.jsonl (always), wandb (by config), a progress bar.

Only the global rank 0 writes. Every record carries `kind` ("train", "val" or "summary").
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

from megadlm.config.schema import Config

# Peak dense bf16 TFLOP/s per device, for MFU when logging.peak_tflops is not given.
KNOWN_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "B200": 2250.0}


def detect_peak_tflops(cfg: Config) -> float | None:
    if cfg.logging.peak_tflops:
        return cfg.logging.peak_tflops
    from megadlm.parallel.distributed import use_cuda

    if use_cuda():
        import torch

        name = torch.cuda.get_device_name()
        for key, peak in KNOWN_PEAK_TFLOPS.items():
            if key in name:
                return peak
    return None


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


class MetricsLogger:
    def __init__(self, cfg: Config, run_dir: str, enabled: bool, total_steps: int, start_step: int,
                 resolved_config: dict):
        self.enabled = enabled
        self.path = os.path.join(run_dir, "metrics.jsonl")
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
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                                 refresh=True)

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
        with open(path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)


def read_jsonl(path: str, partial_ok: bool = False) -> list[dict]:
    """The records of a JSONL file ([] if it does not exist). `partial_ok` skips lines that do not
    parse: a file another process is appending to may end in half a line."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if not partial_ok:
                    raise
    return records


def read_metrics(run_dir: str, partial_ok: bool = False) -> list[dict]:
    return read_jsonl(os.path.join(run_dir, "metrics.jsonl"), partial_ok)
