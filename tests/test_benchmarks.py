"""The benchmark scripts keep working: each runs its real code path in a tiny CPU mode."""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, megadlm_env

pytestmark = pytest.mark.slow


def test_bench_gpu_tiny_mode_runs_every_shape_and_objective(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "tools/bench_gpu.py", "--tiny", "--steps", "2", "--warmup", "1",
                           "--out", str(out)], cwd=REPO, env=megadlm_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["matmul_ceiling_tflops"] > 0
    runs = {(r["shape"], r["objective"]) for r in result["results"]}
    assert runs == {(s, o) for s in ("presets/qwen3-0.6b", "presets/qwen3-1.7b") for o in ("mdm", "ar")}
    for r in result["results"]:
        assert r["tokens_per_s"] > 0 and r["tflops"] > 0 and 0 < r["mfu"] < 1 and r["loss"] > 0
    assert "MFU" in proc.stdout and "matmul ceiling" in proc.stdout


def test_bench_step_quick_mode(tmp_path):
    proc = subprocess.run([sys.executable, "tools/bench_step.py", "--quick", "--steps", "6", "--warmup", "2"],
                          cwd=REPO, env=megadlm_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    assert result["step_time_ratio"] > 0 and result["loader_over_trainer"] > 0


def test_bench_step_head_mode_compares_the_two_heads(tmp_path):
    proc = subprocess.run([sys.executable, "tools/bench_step.py", "--head", "--quick", "--rounds", "2"],
                          cwd=REPO, env=megadlm_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    assert result["masked_head_speedup"] > 0 and 0 < result["scored_fraction"] < 1
    # one chunk of the scored rows' logits against the full head's logits and softmax
    assert 0 < result["logits_peak_bytes_ratio"] < 1 and result["max_relative_grad_difference"] < 1e-5


def test_bench_local_sweep_smoke_mode(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "tools/bench_local_sweep.py", "--steps", "4", "--out", str(out)],
                          cwd=REPO, env=megadlm_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["serial_s"] > 0 and result["parallel2_s"] > 0 and result["speedup"] > 0
    assert result["max_final_val_loss_diff"] < 1e-3  # same configs, same seeds: at most reduction-order noise
    assert "two at once" in proc.stdout


def test_bench_startup_smoke_mode():
    proc = subprocess.run([sys.executable, "tools/bench_startup.py", "--trials", "1", "--torch-only"],
                          cwd=REPO, env=megadlm_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fields = dict(line.split(None, 1) for line in proc.stdout.splitlines())
    assert float(fields["eager_s"]) > 0 and float(fields["deferred_s"]) > 0
    assert fields["deferred_imports_sklearn"] == "False"
    assert fields["deferred_imports_transformers"] == "False"
    assert float(fields["compile_eager_s"]) > 0 and float(fields["compile_deferred_s"]) > 0
    assert fields["eager_imports_inductor"] == "True" and fields["deferred_imports_inductor"] == "False"


def test_bench_prepare_tiny_mode_compares_one_and_two_workers():
    proc = subprocess.run([sys.executable, "tools/bench_prepare.py", "--tiny"], cwd=REPO, env=megadlm_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["tokens_per_s_1"] > 0 and result["tokens_per_s_2"] > 0 and result["workers2_speedup"] > 0
    assert result["tokens_per_s_1_one_thread"] > 0 and result["workers2_over_one_thread"] > 0
    assert result["identical_shards"] is True and result["tokenizer"] == "gpt2" and result["tokens"] > 0
