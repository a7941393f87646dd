"""Shared fixtures: a small prepared dataset (from Python's own pydoc topics, no network) and
helpers to run the real `megadlm` CLI in subprocesses, as users do."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Small model and batch for CPU tests; every override is a real --set a user could type.
TINY = ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128",
        "model.num_attention_heads=4", "model.num_query_groups=2", "data.seq_len=32",
        "schedule.global_batch_size=8", "schedule.micro_batch_size=2", "schedule.warmup_steps=2",
        "logging.progress_bar=false", "data.val_max_samples=32", "optim.lr=3e-3"]


# Tests never reach the Hugging Face Hub: models and lm-eval tasks are local files.
OFFLINE_HF = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


# DeepSpeed's CPU backend JIT-builds a C++ op (its shared-memory allreduce) in every process's group
# setup. Built here, in this checkout's own directory, before any test process needs it: a build inside
# a test would count against the test (30-45 s on 2 cores), fail under a test's file-size limit
# (test_disk_full_during_save...) and, in the shared ~/.cache, be rebuilt whenever another checkout of
# the repository (another venv path, so other build flags) has built it since.
TORCH_EXTENSIONS_DIR = REPO / ".torch_extensions"
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(TORCH_EXTENSIONS_DIR))  # also for in-process tests
# Only where DeepSpeed itself would build it (its compatibility check: Linux, a working compiler).
BUILD_DEEPSPEED_OPS = (
    "import deepspeed.ops\n"
    "from deepspeed.accelerator import get_accelerator\n"
    "builder = get_accelerator().create_op_builder('ShareMemCommBuilder')\n"
    "if builder is not None and deepspeed.ops.__compatible_ops__.get(builder.NAME, False):\n"
    "    builder.load(verbose=False)\n")
_ops_checked = False


def _build_deepspeed_ops(env: dict) -> None:
    global _ops_checked
    if _ops_checked:  # once per test process; concurrent builders wait on torch's own lock file
        return
    _ops_checked = True
    proc = subprocess.run([sys.executable, "-c", BUILD_DEEPSPEED_OPS], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:  # the tests that need it will show DeepSpeed's own error
        print(f"tests/conftest.py: DeepSpeed's CPU op did not build:\n{proc.stderr[-2000:]}", file=sys.stderr)


def pytest_collection_modifyitems(items):
    """Files with a `longest` test first (otherwise in collection order). `pytest -n 2 --dist loadfile`
    hands files to the two workers in this order: the 7-minute demo starting last would leave one
    worker idle while the other runs it; starting first, the rest of the suite fills the other worker."""
    longest = {item.path for item in items if item.get_closest_marker("longest")}
    items.sort(key=lambda item: item.path not in longest)  # stable: the order within stays


def megadlm_env() -> dict:
    """The environment of a fresh user shell: no process-group variables left by in-process tests."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("WANDB_MODE", "disabled")
    # The suite runs two tests at a time on 2 cores (`pytest -n 2`): one OpenMP thread per process
    # keeps two single-process runs from oversubscribing the cores (torchrun already sets 1 for
    # its workers). A value the developer set wins.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(OFFLINE_HF)
    _build_deepspeed_ops(env)
    return env


def run_cli(*args: str, timeout: int = 600, check: bool = True,
            nproc: int = 0) -> subprocess.CompletedProcess:
    """Run `python -m megadlm ARGS` (or under torchrun with nproc ranks) and return the result."""
    if nproc:
        from megadlm.train.launch import torchrun_command

        cmd = torchrun_command(nproc, list(args))
    else:
        cmd = [sys.executable, "-m", "megadlm", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=megadlm_env(), cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def restore_env(saved: dict) -> None:
    """Put environment variables back as `saved` ({name: value or None}) recorded them."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def sets(*overrides: str) -> list[str]:
    out: list[str] = []
    for o in overrides:
        out += ["--set", o]
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def train_records(run_dir: Path, kind: str = "train") -> list[dict]:
    return [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if r["kind"] == kind]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Byte-level shards of 32-token sequences from the stdlib pydoc topics (~3k train samples)."""
    from megadlm.data.corpus import write_pydoc_corpus
    from megadlm.data.prepare import prepare

    root = tmp_path_factory.mktemp("tiny_data")
    corpus = write_pydoc_corpus(root / "corpus")
    out = root / "data"
    prepare([str(corpus)], str(out), tokenizer="bytes", seq_len=32, val_fraction=0.1,
            max_tokens=100_000, progress=False)
    return out


@pytest.fixture
def single_rank_groups(tmp_path):
    """A real one-process gloo world with megatron-core's groups (TP = PP = DP = 1)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    ps.initialize_model_parallel(1, 1)
    yield
    ps.destroy_model_parallel()
    dist.destroy_process_group()


def snapshot(*roots) -> dict[str, bytes]:
    """Every file under `roots` with its bytes: to prove a refused command changed nothing."""
    out = {}
    for root in roots:
        for base, _, names in os.walk(root):
            for name in names:
                path = os.path.join(base, name)
                with open(path, "rb") as f:
                    out[path] = f.read()
    return out
