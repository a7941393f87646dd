"""Learning-rate schedules as pure functions of the optimizer step (so resume needs no state)."""
from __future__ import annotations

import math

from megadlm.config.schema import OptimConfig, ScheduleConfig


def lr_at(step: int, total_steps: int, sched: ScheduleConfig, optim: OptimConfig) -> float:
    """LR for optimizer step `step` (0-based): linear warm-up, then cosine / constant / WSD."""
    peak, floor = optim.lr, optim.min_lr
    if sched.warmup_steps > 0 and step < sched.warmup_steps:
        return peak * (step + 1) / sched.warmup_steps
    if sched.type == "constant":
        return peak
    if sched.type == "cosine":
        span = max(1, total_steps - sched.warmup_steps)
        progress = min(1.0, (step - sched.warmup_steps) / span)
        return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
    if sched.type == "wsd":  # warm-up, stable, then linear decay over the last decay_fraction
        decay_steps = max(1, int(round(total_steps * sched.decay_fraction)))
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return peak
        return peak + (floor - peak) * min(1.0, (step - decay_start + 1) / decay_steps)
    raise ValueError(f"unknown schedule.type {sched.type!r}")
