"""`python tools/bench_step.py --head`: the MDM output head at vocabulary 50k, seq 512 — the
scored, chunked head (parallel/output_head.py) against today's full head (megatron-style projection
of every position, then the cross-entropy over fp32 logits) — forward + backward, in one process.

The two sides alternate, round by round, so a background load hits both; the speed-up is the ratio
of the medians. Peak logits bytes count every vocabulary-wide tensor (last dimension = vocabulary:
logits, their softmax, their gradient) that the head's forward and backward create, by a dispatch
mode that follows each storage until it is freed; the weight gradient, the same for both, is not one.
"""
from __future__ import annotations

import statistics
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode

HEAD_SHAPE = dict(vocab=50_304, seq=512, micro=4, hidden=512)
QUICK_HEAD_SHAPE = dict(vocab=2_048, seq=64, micro=2, hidden=64)


class PeakLiveBytes(TorchDispatchMode):
    """Peak bytes of the storages of [..., width] tensors that ops create while active (freed ones
    are subtracted)."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _freed(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # views and in-place results share an input's storage: no new memory
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if (isinstance(t, torch.Tensor) and t.dim() >= 2 and t.size(-1) == self.width
                    and t.untyped_storage().data_ptr() not in self._seen | inputs):
                key, nbytes = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
                self._seen.add(key)
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._freed, key, nbytes)
        return out


def _inputs(shape: dict, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s, b, h, v = shape["seq"], shape["micro"], shape["hidden"], shape["vocab"]
    hidden = torch.randn(s, b, h, generator=g).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.02).requires_grad_()
    targets = torch.randint(0, v, (b, s), generator=g)
    t = torch.rand(b, 1, generator=g)  # MDM: each sequence masked at its own rate t ~ U(0, 1)
    masked = torch.rand(b, s, generator=g) < t
    weights = masked.float() / t
    return hidden, weight, targets, masked, weights


def full_head(hidden, weight, targets, masked, weights):
    from megadlm.parallel.cross_entropy import sharded_cross_entropy

    logits = torch.nn.functional.linear(hidden, weight)  # every position: [s, b, v]
    ce = sharded_cross_entropy(logits, targets.t().contiguous()).t()
    return (ce * weights).sum()


def scored_head(hidden, weight, targets, masked, weights):
    from megadlm.parallel.output_head import IGNORE, scored_cross_entropy

    ce = scored_cross_entropy(hidden, weight, targets.masked_fill(~masked, IGNORE))
    return (ce * weights).sum()


def _step(head, inputs) -> float:
    hidden, weight = inputs[0], inputs[1]
    hidden.grad = weight.grad = None
    start = time.perf_counter()
    head(*inputs).backward()
    return time.perf_counter() - start


def _peak(head, inputs) -> int:
    inputs[0].grad = inputs[1].grad = None
    with PeakLiveBytes(width=inputs[1].size(0)) as meter:
        head(*inputs).backward()
    return meter.peak


def bench_head(rounds: int, quick: bool) -> dict:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    shape = QUICK_HEAD_SHAPE if quick else HEAD_SHAPE
    store = f"/tmp/megadlm-bench-head-{time.time_ns()}"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    ps.initialize_model_parallel(1, 1)
    try:
        inputs = _inputs(shape)
        # the two heads compute the same loss and gradients (tests/parallel/test_output_head.py)
        _step(full_head, inputs)
        reference = [t.grad.clone() for t in inputs[:2]]
        _step(scored_head, inputs)
        agree = max(float((t.grad - r).abs().max() / r.abs().max()) for t, r in zip(inputs[:2], reference))
        full_times, scored_times = [], []
        for _ in range(rounds):  # interleaved A/B
            full_times.append(_step(full_head, inputs))
            scored_times.append(_step(scored_head, inputs))
        full_peak, scored_peak = _peak(full_head, inputs), _peak(scored_head, inputs)
    finally:
        ps.destroy_model_parallel()
        dist.destroy_process_group()
    full_ms, scored_ms = statistics.median(full_times) * 1e3, statistics.median(scored_times) * 1e3
    return {"mode": "head", **shape, "scored_fraction": round(float(inputs[3].float().mean()), 3),
            "full_ms": round(full_ms, 1), "scored_ms": round(scored_ms, 1),
            "masked_head_speedup": round(full_ms / scored_ms, 3),
            "full_logits_peak_bytes": full_peak, "scored_logits_peak_bytes": scored_peak,
            "logits_peak_bytes_ratio": round(scored_peak / full_peak, 3),
            "max_relative_grad_difference": agree, "rounds": rounds}
