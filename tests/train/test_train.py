"""End-to-end training through the real CLI: one process, 2 gloo ranks under torchrun, resume,
ZeRO stages, wandb offline files, NaN stop. Every run is a real DeepSpeed engine on MDS shards.
(DP2 against one process, for both objectives, is the parity matrix's dp2_zero1 case in
tests/parallel/test_layouts.py, with the same loss, grad-norm and validation-token checks.)"""
import pytest

from tests.conftest import TINY, read_jsonl, run_cli, sets, train_records

pytestmark = pytest.mark.slow


def train(tiny_data, run_dir, *extra, nproc=0, config="tiny_mdm", check=True, args=()):
    return run_cli("train", config, "--run-dir", str(run_dir), *args,
                   *sets(*TINY, f"data.path={tiny_data}", *extra), nproc=nproc, check=check)


def test_single_process_run_writes_everything_and_resumes(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(tiny_data, run, "schedule.max_steps=6", "logging.eval_interval=3", "checkpoint.interval=3")
    recs = read_jsonl(run / "metrics.jsonl")
    start = recs[0]
    assert start["kind"] == "start" and start["objective"] == "mdm" and not start["resumed"]
    steps = train_records(run)
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    for key in ("step", "epoch", "repetition", "loss", "lr", "grad_norm", "tokens_seen", "tokens_per_s",
                "mfu", "masked_ce", "tflops_per_device"):
        assert key in steps[-1], key
    assert steps[-1]["tokens_seen"] == 6 * 8 * 32
    val = train_records(run, "val")
    assert [r["step"] for r in val] == [3, 6] and all(r["val_bits_per_byte"] > 0 for r in val)
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "latest").read_text() == "step_00000006"
    # Resume the same run directory with a longer schedule: continues from step 6.
    train(tiny_data, run, "schedule.max_steps=9", "logging.eval_interval=3", "checkpoint.interval=3")
    recs = read_jsonl(run / "metrics.jsonl")
    starts = [r for r in recs if r["kind"] == "start"]
    assert starts[-1]["resumed"] and starts[-1]["step"] == 6
    assert [r["step"] for r in train_records(run)] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    # --no-resume refuses to touch it, and leaves it as it was.
    before = (run / "metrics.jsonl").read_text()
    proc = run_cli("train", "tiny_mdm", "--run-dir", str(run), "--no-resume",
                *sets(*TINY, f"data.path={tiny_data}", "schedule.max_steps=12"), check=False)
    assert proc.returncode != 0 and "--no-resume" in proc.stderr
    assert (run / "metrics.jsonl").read_text() == before


def test_inf_gradient_stops_and_never_becomes_a_checkpoint(tiny_data, tmp_path):
    # lr 1e30 without clipping: step 1 is finite but moves weights to ~1e30, so step 2's backward
    # overflows fp32 and the gradient norm is inf. Step 1's checkpoint must stay the newest one.
    run = tmp_path / "nan"
    proc = train(tiny_data, run, "schedule.max_steps=30", "optim.lr=1e30", "optim.grad_clip=0.0",
                 "schedule.warmup_steps=0", "checkpoint.interval=1", config="tiny_ar", check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "gradient norm is inf at step 2" in proc.stderr and "no checkpoint was written" in proc.stderr
    assert (run / "checkpoints" / "latest").read_text() == "step_00000001"
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000001"]


def test_nan_loss_stops_and_is_never_saved(tiny_data, tmp_path):
    # Initial weights of std 1e38 overflow fp32 logits in the first forward: the loss is NaN at step 1.
    run = tmp_path / "nan"
    proc = train(tiny_data, run, "schedule.max_steps=5", "model.init_std=1e38", config="tiny_ar", check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "loss is NaN/inf at step 1" in proc.stderr and "the step was not saved" in proc.stderr
    assert not (run / "checkpoints" / "latest").exists()


def test_wandb_offline_files_are_written(tiny_data, tmp_path):
    run = tmp_path / "wb"
    train(tiny_data, run, "schedule.max_steps=3", "logging.wandb_mode=offline", "checkpoint.save_final=false")
    files = list(run.rglob("run-*.wandb"))
    assert len(files) == 1, list(run.rglob("*"))
    from tests.wandb_reader import read_history

    history = read_history(files[0])
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    assert losses == pytest.approx([r["loss"] for r in train_records(run)], rel=1e-6)


@pytest.mark.parametrize("objective,extra,nproc", [
    ("mdm", [], 0),
    ("ar", ["objective.token_dropout=0.2", "objective.mlp_dropout=0.1", "objective.attention_dropout=0.1"],
     2),
    # per-TP-rank attention dropout streams are saved and restored too
    ("mdm", ["parallel.tp=2", "parallel.pp=2", "objective.mlp_dropout=0.1",
             "objective.attention_dropout=0.1"], 4),
    # 512 unique tokens = 16 samples = 2 steps per epoch: the checkpoint lands mid-epoch 2 and the
    # resumed run crosses two more epoch boundaries (reshuffles, new masks per epoch)
    ("ar", ["data.unique_tokens=512", "objective.token_dropout=0.3"], 0),
])
def test_resume_continues_exactly(tiny_data, tmp_path, objective, extra, nproc):
    """A run resumed from the step-3 checkpoint of a 6-step run computes that run's steps 4-6 exactly.
    (Stopping a run at a step and resuming it in the same run directory: test_checkpoint, test_stop.)"""
    common = ["schedule.max_steps=6", "logging.eval_interval=3", "checkpoint.interval=3", *extra]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    train(tiny_data, full, *common, config=f"tiny_{objective}", nproc=nproc)
    train(tiny_data, resumed, *common, config=f"tiny_{objective}", nproc=nproc,
          args=["--resume-from", str(full / "checkpoints" / "step_00000003")])
    start = [r for r in read_jsonl(resumed / "metrics.jsonl") if r["kind"] == "start"][-1]
    assert start["step"] == 3
    got, want = train_records(resumed), train_records(full)[3:]
    assert [r["step"] for r in got] == [4, 5, 6]
    assert [r["loss"] for r in got] == [r["loss"] for r in want]  # bit-identical on CPU
    assert [r["grad_norm"] for r in got] == [r["grad_norm"] for r in want]
    assert train_records(resumed, "val")[-1]["val_loss"] == train_records(full, "val")[-1]["val_loss"]


def test_gradient_accumulation_matches_one_big_micro_batch(tiny_data, tmp_path):
    """Global batch 8 as 4 micro-batches of 2 or as one of 8: the same optimisation."""
    train(tiny_data, tmp_path / "gas4", "schedule.max_steps=5", "checkpoint.save_final=false")
    train(tiny_data, tmp_path / "gas1", "schedule.max_steps=5", "schedule.micro_batch_size=8",
          "checkpoint.save_final=false")
    a, b = train_records(tmp_path / "gas4"), train_records(tmp_path / "gas1")
    assert max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b)) <= 1e-5
    assert max(abs(x["grad_norm"] - y["grad_norm"]) for x, y in zip(a, b)) <= 1e-4
