"""Tiny trained AR and MDM checkpoints, and the shipped local lm-eval tasks with absolute paths."""
import os
from pathlib import Path

import pytest

from tests.conftest import OFFLINE_HF, TINY, restore_env, run_cli, sets

TASKS_DIR = Path(__file__).with_name("tasks")
TASKS = "megadlm_tiny_mc,megadlm_tiny_text,megadlm_tiny_gen"


@pytest.fixture(scope="session", autouse=True)
def offline_hub(tmp_path_factory):
    """In-process lm-eval/transformers calls stay offline and cache remote code under a temp HF_HOME."""
    saved = {k: os.environ.get(k) for k in [*OFFLINE_HF, "HF_HOME"]}
    os.environ.update(OFFLINE_HF)
    os.environ.setdefault("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
    yield
    restore_env(saved)


@pytest.fixture(scope="session")
def local_tasks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tasks")
    for src in TASKS_DIR.iterdir():
        text = src.read_text()
        (out / src.name).write_text(text.replace("__TASKS__", str(out)) if src.suffix == ".yaml" else text)
    return out


@pytest.fixture(scope="session")
def trained(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """objective -> run directory of a 20-step tiny run (checkpoints at steps 10 and 20)."""
    root = tmp_path_factory.mktemp("eval_runs")
    runs = {}
    for objective in ("ar", "mdm"):
        run = root / objective
        run_cli("train", f"tiny_{objective}", "--run-dir", str(run),
                *sets(*TINY, f"data.path={tiny_data}", "schedule.max_steps=20", "checkpoint.interval=10"))
        runs[objective] = run
    return runs
