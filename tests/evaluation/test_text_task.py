"""tools/make_text_task.py: held-out text becomes an lm-eval perplexity task whose documents are
consecutive, character-safe byte chunks of the source."""
import json
import subprocess
import sys

import yaml

from tests.conftest import REPO, megadlm_env


def make(*args, cwd):
    return subprocess.run([sys.executable, str(REPO / "tools" / "make_text_task.py"), *args], cwd=cwd,
                          env=megadlm_env(), capture_output=True, text=True, timeout=120)


def test_chunks_are_consecutive_and_never_split_a_character(tmp_path):
    text = "Ophélie — «être» " * 40  # multi-byte characters at every offset
    (tmp_path / "held_out.txt").write_text(text, encoding="utf-8")
    proc = make("held_out.txt", "--name", "t", "--docs", "5", "--bytes", "16", "--out", "tasks", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    docs = [json.loads(line)["text"] for line in (tmp_path / "tasks" / "t.jsonl").open()]
    assert len(docs) == 5 and "".join(docs) == text[:len("".join(docs))]
    assert all(13 <= len(d.encode()) <= 16 for d in docs)  # cut back by at most one 3-byte character
    task = yaml.safe_load((tmp_path / "tasks" / "t.yaml").read_text())
    assert task["task"] == "t" and task["output_type"] == "loglikelihood_rolling"
    assert task["dataset_kwargs"]["data_files"]["test"] == "tasks/t.jsonl"


def test_asking_for_more_text_than_there_is_fails_and_writes_nothing(tmp_path):
    (tmp_path / "short.txt").write_text("too short")
    proc = make("short.txt", "--name", "t", "--docs", "3", "--bytes", "8", "--out", "tasks", cwd=tmp_path)
    assert proc.returncode == 2 and "only 2 chunks" in proc.stderr and not (tmp_path / "tasks").exists()


def test_sizes_that_cannot_make_a_task_are_refused(tmp_path):
    (tmp_path / "t.txt").write_text("é" * 100)
    for args in (["--docs", "0", "--bytes", "8"], ["--docs", "2", "--bytes", "1"]):
        proc = make("t.txt", "--name", "t", *args, "--out", "tasks", cwd=tmp_path)
        assert proc.returncode == 2 and "--bytes >= 4" in proc.stderr and not (tmp_path / "tasks").exists()
