"""mosaicml-streaming's classes without the example datasets and integrations its packages import eagerly.

`import streaming` runs streaming/__init__.py, which imports streaming.text, streaming.vision and
streaming.multimodal for their ready-made datasets (C4, ImageNet, WebVid...); streaming.text.c4 imports
transformers' AutoTokenizer and, through transformers' generation utilities, scikit-learn. And
streaming/base/__init__.py imports its DataLoader wrapper, which imports transformers for two batch
types. We use none of them, and every rank of every launch (and every `megadlm prepare`) paid for them:
about 2 s of CPU before the first step (`python tools/bench_startup.py` measures it).

`defer_streaming_package_init()` registers the `streaming` and `streaming.base` packages without running
their __init__, so `from streaming.base.dataset import StreamingDataset` loads only what that module
needs. Code elsewhere in the process that asks either package for a name it does not have yet
(`from streaming import LocalDataset`, `streaming.text`, `streaming.base.StreamingDataLoader`) runs the
real __init__ at that moment, so the packages behave as before for it.
"""

from __future__ import annotations

import importlib.util
import sys
import threading

_LOCK = threading.RLock()
DEFERRED_PACKAGES = ("streaming", "streaming.base")  # parents first


def defer_streaming_package_init() -> None:
    """Make the `streaming` and `streaming.base` __init__s run on first use of a name they define."""
    with _LOCK:
        for name in DEFERRED_PACKAGES:
            if name in sys.modules:
                continue
            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None or spec.submodule_search_locations is None:
                return  # not installed (or not a package): the caller's import fails with the usual error
            _register_deferred(name, spec)
        # streaming's modules import each other in a circle (util -> format -> ... -> util) that only
        # resolves in the order its own __init__ imports them: streaming.base.dataset first, which is
        # the first module the DataLoader wrapper (the first import there) imports.
        importlib.import_module("streaming.base.dataset")


def _register_deferred(name: str, spec) -> None:
    package = importlib.util.module_from_spec(spec)  # __path__ etc. set; __init__ not run

    def __getattr__(attr: str):
        # `from streaming.base import distributed` asks for the submodule as an attribute first: load
        # just that submodule, as the import system would have without this hook.
        if not attr.startswith("__") and importlib.util.find_spec(f"{name}.{attr}") is not None:
            return importlib.import_module(f"{name}.{attr}")
        # A name only the full package defines: run its __init__ in this module now (once).
        with _LOCK:
            if package.__dict__.pop("__getattr__", None) is not None:
                spec.loader.exec_module(package)
        return getattr(package, attr)

    package.__getattr__ = __getattr__
    sys.modules[name] = package
    parent, _, child = name.rpartition(".")
    if parent:  # what the import system does for a submodule it loads itself
        setattr(sys.modules[parent], child, package)
