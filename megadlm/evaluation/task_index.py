"""lm-eval's TaskManager with the index of lm-eval's own tasks read from a cache instead of rebuilt.

Constructing `lm_eval.tasks.TaskManager` parses every task YAML lm-eval ships (about 14,000 files in
0.4.13) to index names: about 7 s of CPU on every `megadlm eval`, on every rank of `--nproc`, and
before any refusal ("unknown task") can be printed. That index only changes when lm-eval does, so it is
kept as JSON in $MEGADLM_CACHE/lm_eval/, keyed by lm-eval's version, where it is installed, and a
fingerprint of its task files (count, total size, newest mtime: a reinstall or an edit in place
rebuilds it; an older index of the same install is removed, other installs' are left alone). JSON, not pickle:
the cache may be shared, and reading it must not run code.

The TaskManager itself is lm-eval's, constructed as lm-eval does; only its per-directory index build
is answered from the cache for lm-eval's own directory (TaskIndex.build merges directories in order,
later over earlier, so building them one at a time and merging the same way gives the same index).
--include-path directories are always parsed afresh: they are small and they are what users edit.
An index that cannot be cached exactly (a key JSON cannot keep) is simply rebuilt each time.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from megadlm.atomic_files import write_atomically
from megadlm.data.corpus import cache_root

log = logging.getLogger(__name__)
CACHE_FORMAT = 1


def _defaults_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def _short_hash(value) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


def _install_key(root: Path) -> str:
    """Which lm-eval install: its version and where its tasks are (two venvs may share the cache)."""
    import lm_eval

    return f"{lm_eval.__version__}-{_short_hash([CACHE_FORMAT, str(root.resolve())])}"


def _fingerprint(root: Path) -> str:
    """The install and its task files' state: count, total size and newest mtime of every file but
    Python code (task YAMLs and the extension-less templates they `include:`)."""
    count = size = newest = 0
    for base, _, names in os.walk(root):
        for name in names:
            if not name.endswith((".py", ".pyc")):
                st = os.stat(os.path.join(base, name))
                count, size, newest = count + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return f"{_install_key(root)}-{_short_hash([count, size, newest])}"


def _exactly_json(value: Any) -> bool:
    """Whether json.loads(json.dumps(value)) == value (str keys; lists, not tuples; no other types)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _exactly_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_exactly_json(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def _encode(index: dict) -> dict | None:
    entries = []
    for name, e in index.items():
        record = {"key": name, "name": e.name, "kind": e.kind.name, "tags": sorted(e.tags), "cfg": e.cfg,
                  "yaml_path": None if e.yaml_path is None else str(e.yaml_path)}
        if not _exactly_json(record):
            return None
        entries.append(record)
    return {"format": CACHE_FORMAT, "entries": entries}


def _decode(data: dict) -> dict:
    from lm_eval.tasks._index import Entry, Kind

    return {r["key"]: Entry(name=r["name"], kind=Kind[r["kind"]], cfg=r["cfg"], tags=set(r["tags"]),
                            yaml_path=None if r["yaml_path"] is None else Path(r["yaml_path"]))
            for r in data["entries"]}


def default_task_index(build) -> dict:
    """lm-eval's own tasks' index: from the cache, else `build([dir])` (and cached when exact)."""
    root = _defaults_dir()
    path = cache_root() / "lm_eval" / f"task_index-{_fingerprint(root)}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads(path.read_text())
        if data.get("format") == CACHE_FORMAT:
            return _decode(data)
    index = build([root])
    encoded = _encode(index)
    if encoded is not None:
        with contextlib.suppress(OSError):  # an unwritable cache only means building again next time
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, json.dumps(encoded))
            for stale in path.parent.glob(f"task_index-{_install_key(root)}-*.json"):  # this install's
                if stale != path:
                    stale.unlink(missing_ok=True)
    return index


@contextlib.contextmanager
def _cached_default_index():
    import lm_eval.tasks.manager as manager_module

    original = manager_module.TaskIndex
    root = _defaults_dir()

    class CachedDefaultsTaskIndex(original):
        @staticmethod
        def build(paths, *, resolve_includes=True):
            index: dict = {}
            for path in paths:
                if resolve_includes and Path(path).resolve() == root.resolve():
                    part = default_task_index(lambda p: original.build(p, resolve_includes=True))
                else:
                    part = original.build([path], resolve_includes=resolve_includes)
                for name in part.keys() & index.keys():  # as lm-eval reports an override
                    log.warning("Task '%s' from %s overrides existing task from %s", name,
                                part[name].yaml_path, index[name].yaml_path)
                index.update(part)
            return index

    manager_module.TaskIndex = CachedDefaultsTaskIndex
    try:
        yield
    finally:
        manager_module.TaskIndex = original


def task_manager(include_path: str | None = None):
    """`lm_eval.tasks.TaskManager(include_path=include_path)`, its default index from the cache."""
    from lm_eval.tasks import TaskManager

    with _cached_default_index():
        return TaskManager(include_path=include_path)
