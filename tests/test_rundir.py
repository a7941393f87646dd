"""The run-directory readers every caller shares, and how a launch's exit code is combined from
its workers' (both torch-free, so plain unit tests on files as the trainer writes them)."""
import json

from megadlm.errors import EXIT_HUNG, EXIT_INTERRUPTED
from megadlm.exit_status import combined_exit_code
from megadlm.rundir import attempt_stopped_on_request, has_checkpoint_dirs, last_attempt, progress


def write(run_dir, *records):
    run_dir.mkdir(exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(run_dir)


START = {"kind": "start", "step": 0, "total_steps": 8, "attempt": "a"}
STOPPED = {"kind": "summary", "step": 3, "interrupted": "STOP", "finished": False, "attempt": "a"}


def test_a_summary_belongs_to_the_newest_start_only(tmp_path):
    run = write(tmp_path / "r", START, {"kind": "train", "step": 3, "loss": 1.5}, STOPPED)
    assert last_attempt(run).stopped_on_request and attempt_stopped_on_request(run, "a")
    assert not attempt_stopped_on_request(run, "b")  # another launch's outcome is not this one's
    # a resumed attempt that crashed: its start has no summary, whatever the previous one said
    run = write(tmp_path / "r", START, STOPPED, {**START, "step": 3, "attempt": "b"})
    assert last_attempt(run).summary is None
    assert not attempt_stopped_on_request(run) and not progress(run)["interrupted"]
    assert last_attempt(str(tmp_path / "none")) is None


def test_progress_reads_the_last_records_even_while_a_line_is_being_written(tmp_path):
    run = write(tmp_path / "r", START, {"kind": "train", "step": 2, "epoch": 0.5, "loss": 2.0},
                {"kind": "val", "step": 2, "val_loss": 2.5})
    with open(f"{run}/metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')
    got = progress(run)
    assert (got["step"], got["total_steps"], got["loss"], got["val_loss"]) == (2, 8, 2.0, 2.5)
    assert not got["finished"] and not got["interrupted"]


def test_checkpoint_dirs_are_seen_without_reading_them(tmp_path):
    assert not has_checkpoint_dirs(str(tmp_path))
    (tmp_path / "checkpoints" / "step_00000002").mkdir(parents=True)
    assert has_checkpoint_dirs(str(tmp_path))


def codes(tmp_path, **by_rank):
    for rank, code in by_rank.items():
        (tmp_path / rank).write_text(str(code))
    return str(tmp_path)


def test_the_launch_exits_with_the_workers_code_not_torchruns(tmp_path):
    (tmp_path / "a").mkdir()
    assert combined_exit_code(0, codes(tmp_path / "a", rank0=0, rank1=0), 2) == 0
    (tmp_path / "b").mkdir()
    # torchrun says 1 for any failure; the workers say what it was
    assert combined_exit_code(1, codes(tmp_path / "b", rank0=2, rank1=2), 2) == 2
    (tmp_path / "c").mkdir()
    hung = codes(tmp_path / "c", rank0=EXIT_INTERRUPTED, rank1=EXIT_HUNG)
    assert combined_exit_code(1, hung, 2) == EXIT_HUNG
    (tmp_path / "d").mkdir()
    stopped = codes(tmp_path / "d", rank0=EXIT_INTERRUPTED, rank1=EXIT_INTERRUPTED)
    assert combined_exit_code(1, stopped, 2) == EXIT_INTERRUPTED
    (tmp_path / "e").mkdir()
    # a rank killed by a signal records nothing: "stopped" is only believed from every rank
    assert combined_exit_code(1, codes(tmp_path / "e", rank0=EXIT_INTERRUPTED), 2) == 1
