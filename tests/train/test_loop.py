"""The loop's timing rules (when to save, validate, log and stop) against a fake engine and fake
data: no DeepSpeed, no process group, real components otherwise (checkpointing, validation,
metrics, stop request), milliseconds per test. The end-to-end runs in test_train.py and
test_stop.py exercise the same components with the real engine."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from megadlm.config.schema import Config
from megadlm.errors import DivergenceError
from megadlm.preflight import RunFacts
from megadlm.rundir import best_checkpoint, read_metrics
from megadlm.train.checkpoint import TrainState
from megadlm.train.checkpointing import Checkpointer
from megadlm.train.metrics import MetricsLogger, StepMetrics
from megadlm.train.runners import EvalSums, StepResult
from megadlm.train.stop import StopRequest
from megadlm.train.trainer import Loop, RunPlan
from megadlm.train.validation import Validator
from megadlm.train.watchdog import Watchdog

SEQ, MICRO, GLOBAL, EPOCH_SAMPLES, MASK_ID = 8, 2, 4, 16, 255  # 4 steps per epoch, grad accum 2


class FakeEngine:
    def __init__(self):
        self.optimizer = type("Opt", (), {"param_groups": [{"lr": 0.0}]})()
        self.saved: list[str] = []

    def save_checkpoint(self, root, tag, client_state, save_latest):
        Path(root, tag).mkdir(parents=True, exist_ok=True)
        Path(root, tag, "engine.json").write_text(json.dumps(client_state["train_state"]))
        self.saved.append(tag)

    def load_checkpoint(self, root, tag):
        return str(Path(root, tag)), {}


class FakeRunner:
    """Loss 1/step; `on_step(step)` lets a test act at a step (touch STOP, diverge)."""

    def __init__(self, on_step=None, val_losses=()):
        self.engine = FakeEngine()
        self.on_step = on_step or (lambda step, batches: None)
        self.steps: list[int] = []
        self.evaluations = 0
        self.val_losses = list(val_losses)  # the validation loss of each evaluation (default 2.0)

    def train_step(self, batches, step):
        self.on_step(step, batches)
        self.steps.append(step)
        return StepResult(loss=1.0 / step, masked_ce_sum=0.0, masked_count=0.0, grad_norm=0.5)

    def evaluate(self, batches):
        self.evaluations += 1
        loss = self.val_losses[self.evaluations - 1] if self.val_losses else 2.0
        return EvalSums(weighted=loss * len(batches), tokens=float(len(batches)), masked_ce_sum=0.0,
                        masked_count=0.0)


@dataclass
class Micro:
    epoch: int
    tokens: torch.Tensor
    sample_ids: torch.Tensor


class FakeData:
    def batches(self, consumed):
        while True:
            ids = torch.arange(consumed, consumed + MICRO)
            yield Micro(consumed // EPOCH_SAMPLES, torch.randint(0, 200, (MICRO, SEQ + 1)), ids)
            consumed += MICRO


class FakeVal:
    available, bytes_per_token = True, 1.0

    def batches(self, batch_size):
        yield torch.zeros(batch_size, SEQ + 1, dtype=torch.int64), torch.arange(batch_size)


def config(**sections) -> Config:
    cfg = Config()
    cfg.objective.type = "ar"
    cfg.data.seq_len = SEQ
    cfg.schedule.global_batch_size, cfg.schedule.micro_batch_size = GLOBAL, MICRO
    cfg.logging.progress_bar = False
    for key, value in sections.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def run_loop(tmp_path, total_steps=7, runner=None, state=None, **settings):
    cfg = config(**settings)
    run_dir = str(tmp_path / "run")
    Path(run_dir).mkdir(exist_ok=True)
    runner = runner or FakeRunner()
    plan = RunPlan(MASK_ID, GLOBAL // MICRO, total_steps, EPOCH_SAMPLES // GLOBAL, EPOCH_SAMPLES)
    facts = RunFacts("ar", {}, {"tp": 1, "pp": 1, "dp": 1, "zero_stage": 1})
    checkpointer = Checkpointer(run_dir, cfg.checkpoint, total_steps, EPOCH_SAMPLES, facts, {}, True)
    checkpointer.bind(runner.engine)
    metrics = StepMetrics(cfg, 1.0, None, 1, EPOCH_SAMPLES, total_steps)
    state = state or TrainState()
    logger = MetricsLogger(cfg, run_dir, True, total_steps, state.step, {})
    validator = Validator(cfg, runner, FakeVal(), plan.steps_per_epoch, total_steps, MASK_ID,
                          torch.device("cpu"))
    stop = StopRequest(run_dir)
    loop = Loop(cfg, plan, runner, FakeData(), validator, checkpointer, metrics, logger, stop,
                Watchdog(0, 0, None))
    try:
        summary = loop.run(state)
    finally:
        stop.close()
        logger.close()
    return summary, runner, read_metrics(run_dir)


def steps_of(records, kind):
    return [r["step"] for r in records if r["kind"] == kind]


def test_saves_every_interval_and_once_at_the_end(tmp_path):
    _, runner, _ = run_loop(tmp_path, checkpoint__interval=3)
    assert runner.engine.saved == [f".incomplete_step_{s:08d}" for s in (3, 6, 7)]


def test_the_last_step_on_an_interval_is_saved_once(tmp_path):
    _, runner, _ = run_loop(tmp_path, total_steps=6, checkpoint__interval=3)
    assert [t[-2:] for t in runner.engine.saved] == ["03", "06"]


def test_no_final_save_when_finished_without_save_final(tmp_path):
    _, runner, _ = run_loop(tmp_path, checkpoint__interval=3, checkpoint__save_final=False)
    assert [t[-2:] for t in runner.engine.saved] == ["03", "06"]


def test_a_run_stopped_early_always_saves_to_resume(tmp_path):
    summary, runner, _ = run_loop(tmp_path, checkpoint__interval=3, checkpoint__save_final=False,
                                  run__stop_at_step=5)
    assert [t[-2:] for t in runner.engine.saved] == ["03", "05"]
    assert summary["step"] == 5 and not summary["finished"] and not summary["interrupted"]


def test_validates_once_per_epoch_and_at_the_last_step(tmp_path):
    _, runner, records = run_loop(tmp_path, total_steps=10)
    assert steps_of(records, "val") == [4, 8, 10]
    assert runner.evaluations == 3


def test_validates_at_eval_interval(tmp_path):
    _, _, records = run_loop(tmp_path, total_steps=7, logging__eval_interval=3)
    assert steps_of(records, "val") == [3, 6, 7]


def test_logs_every_log_interval_and_the_last_step(tmp_path, capsys):
    _, _, records = run_loop(tmp_path, total_steps=7, logging__log_interval=3)
    assert steps_of(records, "train") == [3, 6, 7]
    assert [r["kind"] for r in records][-1] == "summary"
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    # progress_bar: false -> one plain line per log interval, with the throughput
    assert [line.split()[1] for line in lines] == ["3/7", "6/7", "7/7"]
    assert all("tok/s" in line and "loss" in line for line in lines)


def test_records_carry_epoch_repetition_and_throughput(tmp_path):
    _, _, records = run_loop(tmp_path, total_steps=5)
    train = [r for r in records if r["kind"] == "train"]
    assert [r["repetition"] for r in train] == [1, 1, 1, 1, 2]
    assert [r["epoch"] for r in train] == [0.25, 0.5, 0.75, 1.0, 1.25]
    assert all(r["tokens_per_s"] > 0 and r["lr"] is not None for r in train)


def test_a_stop_request_stops_after_that_step_saves_and_clears_the_file(tmp_path):
    stop_file = tmp_path / "run" / "STOP"
    runner = FakeRunner(on_step=lambda step, _: step == 2 and stop_file.write_text(""))
    summary, runner, records = run_loop(tmp_path, runner=runner)
    assert runner.steps == [1, 2]
    assert summary["interrupted"] == "STOP" and summary["step"] == 2 and not summary["finished"]
    assert [t[-2:] for t in runner.engine.saved] == ["02"]
    assert not stop_file.exists()


def test_nan_skip_rolls_back_to_the_checkpoint_and_skips_that_batch(tmp_path):
    diverged = []

    def diverge_once(step, batches):
        if step == 4 and not diverged:
            diverged.append(step)
            raise DivergenceError("loss is NaN")

    summary, runner, records = run_loop(tmp_path, runner=FakeRunner(diverge_once), total_steps=6,
                                        checkpoint__interval=2, run__on_nan="skip")
    # step 4 failed on samples 12-15; step 3 is replayed from step 2's checkpoint, then step 4
    # trains on the next batch (samples 16-19)
    assert runner.steps == [1, 2, 3, 3, 4, 5, 6]
    skip = [r for r in records if r["kind"] == "skip"]
    assert skip and skip[0]["step"] == 2 and skip[0]["skipped_batch_at_sample"] == 12
    assert summary["finished"] and summary["step"] == 6
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]  # each step once, after the rewind
    assert train[3]["consumed_samples"] == 20


def test_nan_stops_the_run_by_default(tmp_path):
    def diverge(step, batches):
        if step == 2:
            raise DivergenceError("loss is NaN")

    with pytest.raises(DivergenceError):
        run_loop(tmp_path, runner=FakeRunner(diverge))


def test_resume_continues_from_the_state_it_is_given(tmp_path):
    summary, runner, records = run_loop(tmp_path,
                                        state=TrainState(step=5, consumed_samples=20, tokens_seen=160))
    assert runner.steps == [6, 7]
    assert steps_of(records, "train") == [6, 7]
    assert summary["tokens_seen"] == 160 + 2 * GLOBAL * SEQ


def test_only_the_rank_that_reads_the_stop_file_sees_it(tmp_path):
    """Rank 0 alone stats RUN_DIR/STOP; the step's all-reduce tells every other rank."""
    (tmp_path / "STOP").write_text("")
    reader, other = StopRequest(str(tmp_path)), StopRequest(str(tmp_path), reads_stop_file=False)
    try:
        assert reader.agreed(torch.device("cpu")) == "STOP"
        assert other.agreed(torch.device("cpu")) is None  # without a process group: nobody told it
    finally:
        reader.close()
        other.close()


CURVE = [3.0, 2.0, 2.5, 1.5, 1.8, 1.9, 2.0]  # one validation per step: the best is step 4's


def checkpoint_dirs(tmp_path):
    return sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*"))


def test_keep_best_saves_each_new_best_and_keeps_it_beyond_retention(tmp_path):
    _, runner, _ = run_loop(tmp_path, runner=FakeRunner(val_losses=CURVE), logging__eval_interval=1,
                            checkpoint__keep_best="val_loss", checkpoint__keep_last=1)
    assert [t[-2:] for t in runner.engine.saved] == ["01", "02", "04", "07"]  # new bests, then the end
    assert checkpoint_dirs(tmp_path) == ["step_00000004", "step_00000007"]  # keep_last=1, plus the best
    path, mark = best_checkpoint(str(tmp_path / "run"))
    assert path.endswith("step_00000004") and mark == {"metric": "val_loss", "value": 1.5, "step": 4}
    manifest = json.loads((tmp_path / "run" / "checkpoints" / "step_00000007" / "megadlm_manifest.json")
                          .read_text())
    assert "best" not in manifest  # only the best is marked


def test_keep_best_and_the_interval_never_save_one_step_twice(tmp_path):
    _, runner, _ = run_loop(tmp_path, runner=FakeRunner(val_losses=CURVE), logging__eval_interval=1,
                            checkpoint__keep_best="val_loss", checkpoint__interval=2, checkpoint__keep_last=1)
    assert [t[-2:] for t in runner.engine.saved] == ["01", "02", "04", "06", "07"]
    assert checkpoint_dirs(tmp_path) == ["step_00000004", "step_00000007"]


def test_without_keep_best_a_best_is_neither_saved_nor_kept(tmp_path):
    _, runner, _ = run_loop(tmp_path, runner=FakeRunner(val_losses=CURVE), logging__eval_interval=1,
                            checkpoint__keep_last=1)
    assert [t[-2:] for t in runner.engine.saved] == ["07"]
    assert best_checkpoint(str(tmp_path / "run")) is None


def test_a_resumed_run_only_replaces_the_best_with_a_better_one(tmp_path):
    run_loop(tmp_path, runner=FakeRunner(val_losses=CURVE[:4]), total_steps=7, run__stop_at_step=4,
             logging__eval_interval=1, checkpoint__keep_best="val_loss", checkpoint__keep_last=1)
    # the second attempt's validations (steps 5-7) are all worse than step 4's 1.5, but for the last
    _, runner, _ = run_loop(tmp_path, runner=FakeRunner(val_losses=[1.6, 1.7, 1.4]),
                            state=TrainState(step=4, consumed_samples=16, tokens_seen=128),
                            logging__eval_interval=1, checkpoint__keep_best="val_loss",
                            checkpoint__keep_last=1)
    assert [t[-2:] for t in runner.engine.saved] == ["07"]
    path, mark = best_checkpoint(str(tmp_path / "run"))
    assert path.endswith("step_00000007") and mark["value"] == 1.4
    assert checkpoint_dirs(tmp_path) == ["step_00000007"]
