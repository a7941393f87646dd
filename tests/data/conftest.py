from __future__ import annotations

from pathlib import Path

import pytest

from megadlm.data.corpus import write_pydoc_corpus


@pytest.fixture(scope="session")
def pydoc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline pydoc-topics corpus (~80 .txt documents, ~470 KB), written once per session."""
    return write_pydoc_corpus(tmp_path_factory.mktemp("pydoc") / "topics")


@pytest.fixture(scope="session")
def small_pydoc_dir(tmp_path_factory: pytest.TempPathFactory, pydoc_dir: Path) -> Path:
    """The first 12 pydoc topics: enough text for several samples, fast to tokenize with BPE."""
    out = tmp_path_factory.mktemp("pydoc_small")
    for f in sorted(pydoc_dir.glob("*.txt"))[:12]:
        (out / f.name).write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
    return out


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's ~/.cache/megadlm, never hit the network from the demo corpus."""
    monkeypatch.setenv("MEGADLM_CACHE", str(tmp_path / "megadlm-cache"))
