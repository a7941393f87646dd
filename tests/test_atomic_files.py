"""megadlm.atomic_files: a reader sees the old file or the whole new one, never part, and nothing is left."""
import os
import stat
import threading

import pytest

from megadlm.atomic_files import atomic_writer, write_atomically


def test_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    write_atomically(target, "new", durable=True)
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["results.json"]


def test_an_exception_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "samples.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as f:
            f.write("half of the new\n")
            raise RuntimeError("the writer failed midway")
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["samples.jsonl"]


def test_permissions_follow_the_umask_like_any_file(tmp_path):
    old = os.umask(0o027)
    try:
        write_atomically(tmp_path / "a", "x")
        (tmp_path / "b").write_text("x")
    finally:
        os.umask(old)
    modes = {stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("a", "b")}
    assert modes == {0o640}


def test_concurrent_writers_of_one_file_leave_one_whole_version(tmp_path):
    target = tmp_path / "verified.json"
    texts = [str(i) * 100_000 for i in range(8)]
    start = threading.Barrier(len(texts))
    errors = []

    def write(text):
        start.wait()
        try:
            write_atomically(target, text)
        except OSError as e:  # a shared temporary would be renamed away under another writer
            errors.append(e)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and target.read_text() in texts and os.listdir(tmp_path) == ["verified.json"]
