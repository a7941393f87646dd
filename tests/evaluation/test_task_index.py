"""megadlm.evaluation.task_index: lm-eval's TaskManager, its own tasks' index served from a JSON cache."""
import json
import os
import time
from pathlib import Path

import pytest

from megadlm.evaluation import task_index
from megadlm.evaluation.task_index import default_task_index, task_manager

TASKS = Path(__file__).parent / "tasks"


def _entry(name, cfg):
    from lm_eval.tasks._index import Entry, Kind

    return Entry(name=name, kind=Kind.TASK, yaml_path=Path(f"/x/{name}.yaml"), cfg=cfg, tags={"t"})


def test_a_corrupt_cache_is_rebuilt_and_an_inexact_index_is_never_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGADLM_CACHE", str(tmp_path))
    monkeypatch.setattr(task_index, "_fingerprint", lambda root: "v-test")
    path = tmp_path / "lm_eval" / "task_index-v-test.json"
    path.parent.mkdir()
    path.write_text("{not json")
    built = {"a": _entry("a", {"task": "a", "num_fewshot": 0, "metric_list": [{"metric": "acc"}]})}
    calls = []
    assert default_task_index(lambda roots: calls.append(roots) or built) == built and len(calls) == 1
    assert default_task_index(lambda roots: calls.append(roots) or {}) == built and len(calls) == 1  # cached
    path.unlink()
    inexact = {"b": _entry("b", {"task": "b", "doc_to_choice": {0: "no", 1: "yes"}})}  # int keys
    assert default_task_index(lambda roots: inexact) == inexact and not path.exists()


def test_the_fingerprint_follows_the_task_files(tmp_path, monkeypatch):
    (tmp_path / "a.yaml").write_text("task: a\n")
    first = task_index._fingerprint(tmp_path)
    assert task_index._fingerprint(tmp_path) == first
    (tmp_path / "b.yaml").write_text("task: b\n")
    second = task_index._fingerprint(tmp_path)
    os.utime(tmp_path / "a.yaml", ns=(time.time_ns() + 10**9,) * 2)
    third = task_index._fingerprint(tmp_path)
    (tmp_path / "_base_yaml").write_text("output_type: multiple_choice\n")  # a template tasks include
    fourth = task_index._fingerprint(tmp_path)
    (tmp_path / "utils.py").write_text("x = 1\n")  # code is not part of the index
    assert len({first, second, third, fourth}) == 4 and task_index._fingerprint(tmp_path) == fourth


@pytest.mark.slow  # lm-eval's own index build, twice (about 7 s each)
def test_the_cached_manager_is_lm_evals_own(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import TaskIndex

    monkeypatch.setenv("MEGADLM_CACHE", str(tmp_path))
    theirs = TaskManager(include_path=str(TASKS))
    cold = task_manager(str(TASKS))  # builds lm-eval's directory and writes the cache
    assert len(list((tmp_path / "lm_eval").glob("task_index-*.json"))) == 1
    defaults = Path(task_index._defaults_dir()).resolve()
    original = TaskIndex.build

    def only_include_paths(paths, **kwargs):
        assert all(Path(p).resolve() != defaults for p in paths), "lm-eval's tasks were parsed again"
        return original(paths, **kwargs)

    monkeypatch.setattr(TaskIndex, "build", staticmethod(only_include_paths))
    warm = task_manager(str(TASKS))
    for ours in (cold, warm):
        assert ours.task_index == theirs.task_index
        for names in ("all_tasks", "all_subtasks", "all_groups", "all_tags"):
            assert getattr(ours, names) == getattr(theirs, names), names
    assert "megadlm_tiny_mc" in warm.all_tasks and "hellaswag" in warm.all_tasks
    assert json.loads(next((tmp_path / "lm_eval").glob("*.json")).read_text())["format"] == 1
