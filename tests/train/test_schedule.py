"""LR schedules are pure functions of the step: warm-up, then cosine / constant / WSD."""
import math

import pytest

from megadlm.config.schema import OptimConfig, ScheduleConfig
from megadlm.train.schedule import lr_at

OPT = OptimConfig(lr=1.0, min_lr=0.1)


def lrs(kind, total=100, warmup=10, **kw):
    sched = ScheduleConfig(type=kind, warmup_steps=warmup, **kw)
    return [lr_at(s, total, sched, OPT) for s in range(total)]


@pytest.mark.parametrize("kind", ["cosine", "constant", "wsd"])
def test_linear_warmup_reaches_the_peak(kind):
    values = lrs(kind)
    assert values[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert values[10] == pytest.approx(1.0)


def test_cosine_decays_to_min_lr():
    values = lrs("cosine")
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert values[55] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 45 / 90)))
    assert values[-1] == pytest.approx(0.1, abs=1e-3)


def test_constant_stays_at_peak():
    assert set(lrs("constant")[10:]) == {1.0}


def test_wsd_is_stable_then_decays_linearly_over_the_last_fraction():
    values = lrs("wsd", decay_fraction=0.2)
    assert set(values[10:80]) == {1.0}
    assert values[80] == pytest.approx(1.0 - 0.9 / 20) and values[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(values[80:], values[81:]))
