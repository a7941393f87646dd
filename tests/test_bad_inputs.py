"""Bad input, through the real CLI: one clear error that names the problem and the fix, a non-zero
exit, and nothing existing overwritten or deleted (an existing run directory and the prepared data
are compared byte for byte before and after every case).

Elsewhere, with the same guarantees: a checkpoint from another model shape and a resume with a
changed objective or ZeRO layout (tests/train/test_checkpoint.py), damaged checkpoints
(ibid.), NaN/inf loss (tests/train/test_train.py::test_inf_gradient_stops_and_never_becomes_a_checkpoint).
"""
import json
import resource
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY, megadlm_env, run_cli, sets, snapshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def existing(tiny_data, tmp_path_factory):
    """A finished 2-step run and its data, which no failing command may change."""
    root = tmp_path_factory.mktemp("bad_inputs")
    data = root / "data"
    shutil.copytree(tiny_data, data)
    run = root / "run"
    run_cli("train", "tiny_ar", "--run-dir", str(run),
            *sets(*TINY, f"data.path={data}", "schedule.max_steps=2"))
    return {"root": root, "data": data, "run": run}


def train_args(existing, *overrides, data=None, run=None):
    return ["train", "tiny_ar", "--run-dir", str(run or existing["run"]),
            *sets(*TINY, f"data.path={data or existing['data']}", "schedule.max_steps=4", *overrides)]


def damaged_data(existing, tmp_path, damage):
    data = tmp_path / "data"
    shutil.copytree(existing["data"], data)
    shard = next((data / "train").glob("shard.*"))
    if damage == "delete":
        shard.unlink()
    else:
        raw = bytearray(shard.read_bytes())
        for i in range(1000, 1100):
            raw[i] ^= 0xFF
        shard.write_bytes(bytes(raw))
    return data


def case_args(name, existing, tmp_path):
    """The command line of each case (built lazily: some need files)."""
    if name == "malformed_yaml":
        bad = tmp_path / "bad.yaml"
        bad.write_text("extends: tiny_ar\nmodel:\n  num_layers: [2\n")
        return ["train", str(bad), "--run-dir", str(existing["run"])]
    if name == "unknown_key":
        return train_args(existing, "model.hidden_sise=64")
    if name == "wrong_type":
        return train_args(existing, "model.num_layers=two")
    if name == "batch_does_not_divide":
        return train_args(existing, "schedule.global_batch_size=6", "schedule.micro_batch_size=4")
    if name == "heads_do_not_divide_tp":
        return train_args(existing, "parallel.tp=3")
    if name == "zero3_with_pp":
        return [*train_args(existing, "parallel.pp=2", "parallel.zero_stage=3"), "--nproc", "2"]
    if name == "missing_data_dir":
        return train_args(existing, data=tmp_path / "nowhere")
    if name == "missing_shard":
        return train_args(existing, data=damaged_data(existing, tmp_path, "delete"))
    if name == "corrupt_shard":
        return train_args(existing, data=damaged_data(existing, tmp_path, "flip"))
    if name == "vocab_smaller_than_tokenizer":
        return train_args(existing, "model.vocab_size=100")
    if name == "tokenizer_missing":
        (tmp_path / "doc.txt").write_text("some text " * 500)
        return ["prepare", "--input", str(tmp_path / "doc.txt"), "--out", str(tmp_path / "out"),
                "--tokenizer", str(tmp_path / "no_such_tokenizer.json"), "--no-progress"]
    if name == "empty_corpus":
        (tmp_path / "empty.txt").write_text("  \n")
        return ["prepare", "--input", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "out"),
                "--no-progress"]
    if name == "run_dir_is_a_file":
        (tmp_path / "a_file").write_text("not a directory")
        return train_args(existing, run=tmp_path / "a_file" / "run")
    if name == "resume_from_missing_checkpoint":
        return [*train_args(existing), "--resume-from", str(tmp_path / "no_ckpt")]
    if name == "no_resume_on_existing_run":
        return [*train_args(existing), "--no-resume"]
    if name == "incompatible_resume_2_procs":  # refused before any worker starts: exit 2, said once
        return [*train_args(existing, "objective.type=mdm"), "--nproc", "2"]
    raise KeyError(name)


CASES = {  # name: words the error must contain
    "malformed_yaml": ["bad.yaml", "line"],
    "unknown_key": ["model.hidden_sise", "hidden_size"],
    "wrong_type": ["model.num_layers", "two"],
    "batch_does_not_divide": ["schedule.global_batch_size=6", "micro_batch_size"],
    "heads_do_not_divide_tp": ["parallel.tp=3"],
    "zero3_with_pp": ["parallel.zero_stage=3 with parallel.pp=2", "parallel.zero_stage=1"],
    "missing_data_dir": ["no manifest.json", "megadlm prepare"],
    "missing_shard": ["shard", "is missing", "megadlm prepare"],
    "corrupt_shard": ["fails its xxh64 checksum", "megadlm prepare"],
    "vocab_smaller_than_tokenizer": ["vocab"],
    "tokenizer_missing": ["no_such_tokenizer.json"],
    "empty_corpus": ["empty corpus"],
    "run_dir_is_a_file": ["is not a directory", "--run-dir"],
    "resume_from_missing_checkpoint": ["--resume-from", "no megadlm_manifest.json"],
    "no_resume_on_existing_run": ["--no-resume", "choose another --run-dir"],
    "incompatible_resume_2_procs": ["cannot resume from", "objective.type=ar", "this config says mdm"],
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_clearly_and_changes_nothing(existing, tmp_path, name):
    args = case_args(name, existing, tmp_path)
    before = snapshot(existing["run"], existing["data"])
    proc = run_cli(*args, check=False, timeout=300)
    lines = proc.stderr.strip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("megadlm ")]
    assert proc.returncode == 2, (name, proc.returncode, proc.stderr[-3000:])
    assert starts, (name, proc.stderr[-3000:])
    message = "\n".join(lines[starts[-1]:])  # the error block is the end of stderr
    assert "Traceback" not in proc.stderr, (name, proc.stderr[-3000:])
    assert len(starts) == 1, (name, proc.stderr[-3000:])  # one message, whatever the process count
    for word in CASES[name]:
        assert word in message, (name, word, message)
    assert snapshot(existing["run"], existing["data"]) == before, name
    assert not (tmp_path / "out").exists()  # prepare leaves no half-written output


def test_disk_full_during_save_keeps_the_previous_checkpoint(existing, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(existing["run"], run)
    before = snapshot(run / "checkpoints" / "step_00000002")

    def small_files():  # ~600 kB per file: data and metrics fit, the optimizer state does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))

    proc = subprocess.run([sys.executable, "-m", "megadlm", *train_args(existing, run=run)], cwd=REPO,
                          env=megadlm_env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=small_files)
    assert proc.returncode == 3, proc.stderr[-3000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert "writing checkpoint step_00000004 failed" in message and "disk full" in message
    assert "the previous checkpoint step_00000002 is untouched" in message
    assert (run / "checkpoints" / "latest").read_text() == "step_00000002"
    assert snapshot(run / "checkpoints" / "step_00000002") == before
    # with space again, the same command resumes from step 2 and finishes
    run_cli(*train_args(existing, run=run))
    assert (run / "checkpoints" / "latest").read_text() == "step_00000004"
    starts = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
              if '"start"' in line]
    assert starts[-1]["step"] == 2
