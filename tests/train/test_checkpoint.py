"""Checkpoints are complete and verified or not used: manifest checksums, fallback past corrupt or
unfinished saves, --resume-from, retention, refusal of incompatible resumes (changing nothing),
weights_only-loadable files of our own. Every run is a real `megadlm train`."""
import json
import os
import shutil

import pytest
import torch

from megadlm.train.checkpoint import MANIFEST, Retention, _prune
from tests.conftest import TINY, run_cli, sets, snapshot, train_records

pytestmark = pytest.mark.slow

EVERY_2 = ["checkpoint.interval=2", "checkpoint.keep_last=0"]


def train(tiny_data, run_dir, *extra, config="tiny_ar", check=True, args=()):
    return run_cli("train", config, "--run-dir", str(run_dir), *args,
                   *sets(*TINY, f"data.path={tiny_data}", "objective.mlp_dropout=0.1", *extra), check=check)


def losses(run_dir):
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in train_records(run_dir)}


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("ckpt") / "full"
    train(tiny_data, run, "schedule.max_steps=8", *EVERY_2)
    return run


@pytest.fixture(scope="module")
def stopped(tiny_data, tmp_path_factory):
    """The same run stopped after step 6: checkpoints at steps 2, 4 and 6."""
    run = tmp_path_factory.mktemp("ckpt") / "stopped"
    train(tiny_data, run, "schedule.max_steps=8", "run.stop_at_step=6", *EVERY_2)
    return run


def copy_of(run, tmp_path):
    """A private copy of a shared run directory (a run directory holds no absolute paths)."""
    return shutil.copytree(run, tmp_path / "run")


def test_manifest_lists_every_file_with_its_checksum(uninterrupted):
    step = uninterrupted / "checkpoints" / "step_00000008"
    manifest = json.loads((step / MANIFEST).read_text())
    on_disk = sorted(str(p.relative_to(step)) for p in step.rglob("*") if p.is_file() and p.name != MANIFEST)
    assert sorted(manifest["files"]) == on_disk
    assert manifest["train_state"] == {"step": 8, "consumed_samples": 64, "tokens_seen": 64 * 32,
                                       "skipped_batches": []}
    assert manifest["facts"]["objective"] == "ar" and manifest["facts"]["layout"]["dp"] == 1
    assert not list((uninterrupted / "checkpoints").glob(".incomplete_*"))
    # our own files need no unpickling of arbitrary objects
    state = torch.load(step / "rng_rank00000.pt", weights_only=True)
    assert set(state) >= {"torch", "numpy", "python"}


def test_plan_predicts_the_checkpoint_size(tiny_data, uninterrupted):
    from megadlm.config.loader import load_config
    from megadlm.model.inventory import count_parameters
    from megadlm.plan import checkpoint_bytes

    step = uninterrupted / "checkpoints" / "step_00000008"
    on_disk = sum(p.stat().st_size for p in step.rglob("*") if p.is_file())
    cfg = load_config("tiny_ar", [*TINY, f"data.path={tiny_data}"])
    vocab = json.loads((step / MANIFEST).read_text())["facts"]["model"]["padded_vocab_size"]
    predicted = checkpoint_bytes(count_parameters(cfg, vocab)["total"], zero_stage=1, precision="fp32")
    print(f"checkpoint: predicted {predicted:,.0f} B, on disk {on_disk:,} B")
    assert abs(predicted - on_disk) <= 0.10 * on_disk


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete_manifest"])
def test_damaged_newest_checkpoint_falls_back_and_resumes_exactly(tiny_data, tmp_path, uninterrupted, stopped,
                                                                  damage):
    run = copy_of(stopped, tmp_path)
    newest = run / "checkpoints" / "step_00000006"
    victim = newest / "mp_rank_00_model_states.pt"
    if damage == "flip_byte":
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0x01
        victim.write_bytes(bytes(data))
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:100])
    else:
        (newest / MANIFEST).unlink()
    proc = train(tiny_data, run, "schedule.max_steps=8", *EVERY_2)
    assert f"checkpoint {newest} is unusable" in proc.stderr
    assert "resuming from the older" in proc.stderr and "step_00000004" in proc.stderr
    assert losses(run) == losses(uninterrupted)  # steps 5..8 recomputed bit-identically


def test_unfinished_save_is_ignored_and_resume_from_picks_a_checkpoint(tiny_data, tmp_path, uninterrupted,
                                                                       stopped):
    run = copy_of(stopped, tmp_path)
    ckpts = run / "checkpoints"
    # what a crash during a save leaves: a temporary directory without a manifest
    shutil.copytree(ckpts / "step_00000006", ckpts / ".incomplete_step_00000008")
    (ckpts / ".incomplete_step_00000008" / MANIFEST).unlink()
    train(tiny_data, run, "schedule.max_steps=8", *EVERY_2,
          args=["--resume-from", str(ckpts / "step_00000002")])
    assert losses(run) == losses(uninterrupted)
    starts = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "start"]
    assert starts[-1]["step"] == 2


def test_every_checkpoint_damaged_is_refused_without_changes(tiny_data, tmp_path, stopped):
    run = copy_of(stopped, tmp_path)
    for step in (2, 4, 6):
        (run / "checkpoints" / f"step_{step:08d}" / "rng_rank00000.pt").write_bytes(b"garbage")
    before = snapshot(run)
    proc = train(tiny_data, run, "schedule.max_steps=8", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no usable checkpoint" in proc.stderr and "rng_rank00000.pt has 7 bytes" in proc.stderr
    assert snapshot(run) == before


@pytest.mark.parametrize("change,words", [
    (["--set", "objective.type=mdm"], ["objective.type=ar", "this config says mdm"]),
    (["--set", "model.hidden_size=96"], ["model.hidden_size was 64", "96"]),
    (["--set", "parallel.zero_stage=3"], ["ZeRO 0, 1/2 and 3"]),
])
def test_incompatible_resume_is_refused_without_changes(tiny_data, tmp_path, stopped, change, words):
    run = copy_of(stopped, tmp_path)
    before = snapshot(run)
    proc = run_cli("train", "tiny_ar", "--run-dir", str(run),
                   *sets(*TINY, f"data.path={tiny_data}", "objective.mlp_dropout=0.1",
                         "schedule.max_steps=8"),
                   *change, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot resume from" in proc.stderr and "Nothing in the run directory was changed" in proc.stderr
    for w in words:
        assert w in proc.stderr
    assert snapshot(run) == before


def test_retention_keeps_the_newest_and_every_kth(tmp_path):
    root = tmp_path / "checkpoints"
    for step in range(1, 13):
        (root / f"step_{step:08d}").mkdir(parents=True)
    _prune(str(root), Retention(keep_last=2, keep_every=5), keep="step_00000012")
    assert sorted(p.name for p in root.iterdir()) == ["step_00000005", "step_00000010", "step_00000011",
                                                      "step_00000012"]


def test_exports_beside_checkpoints_are_not_checkpoints(tmp_path):
    """`megadlm eval CKPT` exports to CKPT.hf beside it: retention, resume and `eval --checkpoints` must
    not take step_N.hf for a checkpoint (int("00000003.hf") used to crash the next save's pruning)."""
    from megadlm.train.checkpoint import candidate_paths

    root = tmp_path / "run" / "checkpoints"
    for step in range(1, 5):
        (root / f"step_{step:08d}").mkdir(parents=True)
    (root / "step_00000003.hf").mkdir()
    _prune(str(root), Retention(keep_last=2, keep_every=0), keep="step_00000004")
    assert sorted(p.name for p in root.iterdir()) == ["step_00000003", "step_00000003.hf", "step_00000004"]
    assert [os.path.basename(p) for p in candidate_paths(str(tmp_path / "run"))] == ["step_00000004",
                                                                                     "step_00000003"]
