"""megadlm.data.manifest: loading and checking manifest.json, importable alone, no import circles in data."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from megadlm.data.manifest import FORMAT, MANIFEST, build_manifest, load_manifest
from megadlm.data.tokenizer import ByteTokenizer
from megadlm.errors import DataError
from tests.conftest import REPO, megadlm_env

DATA_PACKAGE = REPO / "megadlm" / "data"


def test_missing_or_bad_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no manifest.json in .*is this a directory written by `megadlm"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{truncated")
    with pytest.raises(DataError, match=r"manifest.json is unreadable .*re-run `megadlm prepare`"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps([FORMAT]))
    with pytest.raises(DataError, match=r"manifest.json holds a JSON list, not an object: re-run `megadlm"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match=r"has format 'other', expected 'megadlm-mds-v1'"):
        load_manifest(tmp_path)


def test_built_manifest_loads_back(tmp_path: Path) -> None:
    tok = ByteTokenizer()
    manifest = build_manifest(
        tok=tok, tok_file=None, seq_len=8, dtype="uint16", splits={"train": {"samples": 1}},
        train_files=[tmp_path / "a.txt"], val_files=[], val_method="none", val_fraction=0.0, max_tokens=None,
        skip_bad_documents=True, skipped_documents=2,
        skipped_details={"/x/a.jsonl": {"documents": 2, "examples": ["line 3: ...", "line 9: ..."]}})
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    loaded = load_manifest(tmp_path)
    assert loaded == manifest and loaded["format"] == FORMAT and loaded["sample_len"] == 9
    assert loaded["tokenizer"] == {**tok.identity(), "file": None}
    assert (loaded["skip_bad_documents"], loaded["skipped_documents"]) == (True, 2)


def test_prepare_still_exports_load_manifest() -> None:
    # The trainer, the CLI and the demo import it from megadlm.data.prepare.
    from megadlm.data import prepare

    assert prepare.load_manifest is load_manifest and prepare.MANIFEST == MANIFEST


def test_manifest_module_imports_neither_torch_nor_numpy() -> None:
    code = ("import sys, megadlm.data.manifest; "
            "heavy = sorted(m for m in ('torch', 'numpy', 'streaming') if m in sys.modules); "
            "print(heavy); assert not heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=megadlm_env(),
                          cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _data_imports(path: Path) -> set[str]:
    """The megadlm.data modules `path` imports anywhere, also inside functions (lazy imports)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from megadlm.data import corpus` names a module too.
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found.update(n.split(".")[2] for n in names if n.startswith("megadlm.data.") and n.count(".") >= 2)
    return found - {path.stem}


def test_no_import_circles_in_the_data_package() -> None:
    modules = {p.stem for p in DATA_PACKAGE.glob("*.py")} - {"__init__"}
    graph = {m: _data_imports(DATA_PACKAGE / f"{m}.py") & modules for m in modules}
    assert graph["tokenizer"] == {"manifest"} and "manifest" in graph["prepare"]

    def circle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    return [*path, start]
                if nxt not in path:
                    stack.append((nxt, [*path, nxt]))
        return None

    circles = [c for m in sorted(modules) if (c := circle_from(m))]
    assert not circles, f"import circles: {[' -> '.join(c) for c in circles]}"
