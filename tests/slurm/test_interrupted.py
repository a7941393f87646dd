"""The job script's "was this attempt interrupted?" check, on metrics files as the trainer writes them."""
import json

from megadlm.slurm.interrupted import main


def write(tmp_path, *records):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return [str(tmp_path)]


def test_only_this_attempts_interrupted_summary_counts(tmp_path, monkeypatch):
    start = {"kind": "start", "step": 0}
    stopped = {"kind": "summary", "interrupted": "USR1", "finished": False, "restarts": 0}
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert main(write(tmp_path, start, {"kind": "train", "step": 1}, stopped)) == 0
    assert main(write(tmp_path, start, {**stopped, "interrupted": False, "finished": True})) == 1
    # the next attempt crashed
    assert main(write(tmp_path, start, stopped, {"kind": "start", "step": 5})) == 1
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert main(write(tmp_path, start, stopped)) == 1  # attempt 1 crashed before logging: old summary
    assert main(write(tmp_path, start, stopped, start, {**stopped, "restarts": 1})) == 0
    assert main([str(tmp_path / "nothing")]) == 1
