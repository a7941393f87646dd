"""mosaicml-streaming's classes without the example datasets its package imports eagerly.

`import streaming` runs streaming/__init__.py, which imports streaming.text, streaming.vision and
streaming.multimodal for their ready-made datasets (C4, ImageNet, WebVid...). streaming.text.c4 imports
transformers' AutoTokenizer and, through transformers' generation utilities, scikit-learn. We use none
of them, and every rank of every launch paid for them: about 2 s of CPU before the first step
(`python tools/bench_startup.py` measures it).

`defer_streaming_package_init()` registers the `streaming` package without running its __init__, so
`from streaming.base import StreamingDataset` loads only streaming.base. Code elsewhere in the process
that asks the package for a name it does not have yet (`from streaming import LocalDataset`,
`streaming.text`) runs the real __init__ at that moment, so the package behaves as before for it.
"""

from __future__ import annotations

import importlib.util
import sys
import threading

_LOCK = threading.RLock()


def defer_streaming_package_init() -> None:
    """Make `streaming`'s own __init__ run on first use of a top-level name, not on import."""
    with _LOCK:
        if "streaming" in sys.modules:
            return
        spec = importlib.util.find_spec("streaming")
        if spec is None or spec.loader is None or spec.submodule_search_locations is None:
            return  # not installed (or not a package): the caller's import fails with the usual error
        package = importlib.util.module_from_spec(spec)  # __path__ etc. set; __init__ not run

        def __getattr__(name: str):
            # A name only the full package defines: run its __init__ in this module now (once).
            with _LOCK:
                if package.__dict__.pop("__getattr__", None) is not None:
                    spec.loader.exec_module(package)
            return getattr(package, name)

        package.__getattr__ = __getattr__
        sys.modules["streaming"] = package
