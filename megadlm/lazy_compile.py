"""megatron-core's and DeepSpeed's torch.compile'd helpers, handed to torch.compile on their first call.

Two libraries decorate functions with torch.compile when their modules are imported:
- megatron/core/jit.py sets `jit_fuser = torch.compile`, and about thirty functions in
  megatron.core.fusions are decorated with it during `import megatron.core`;
- deepspeed/runtime/compiler.py's `compile()` returns torch.compile, and the Muon optimizer's kernels
  are decorated with it; ZeRO-1/2 import that module on their first gradient reduction.
Decorating is already enough for torch.compile to import TorchInductor's compiler
(torch._inductor.compile_fx, its lowerings and autotuning): about 1.4 s of CPU in every rank of every
launch and in `megadlm eval` and `megadlm export`, while megadlm calls none of those functions (our
attention, MLP and dropout paths are unfused; our optimizer is AdamW). `python tools/bench_startup.py`
measures it.

`install()` (run when the megadlm package is imported) makes those two decorators
`compile_on_first_call`: the function reaches torch.compile the first time it is called, which is when
torch.compile would have compiled it anyway, so a fused function behaves as before once used. Only the
two names above in the two modules above are touched, and only while they still are torch.compile (a
later release that chooses otherwise is left alone). Nothing is imported until those modules are.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys
import threading
from typing import Callable


def compile_on_first_call(fn: Callable | None = None, *, compile: Callable | None = None, **options):
    """`torch.compile(fn, **options)` (also as `@decorator` or `decorator(**options)`) that calls
    torch.compile (or `compile`) only when the function is first called."""
    if fn is None:
        return functools.partial(compile_on_first_call, compile=compile, **options)
    lock = threading.Lock()
    compiled: list[Callable] = []

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if not compiled:
            with lock:
                if not compiled:
                    compile_fn = compile if compile is not None else sys.modules["torch"].compile
                    compiled.append(compile_fn(fn, **options))
        return compiled[0](*args, **kwargs)

    return call


def _megatron_jit(module) -> None:
    if getattr(module, "jit_fuser", None) is _torch_compile():
        module.jit_fuser = compile_on_first_call


def _deepspeed_compiler(module) -> None:
    original = getattr(module, "compile", None)
    if callable(original) and original() is _torch_compile():
        module.compile = lambda: compile_on_first_call


# module name -> what to change once the module has run
PATCHES: dict[str, Callable] = {"megatron.core.jit": _megatron_jit,
                                "deepspeed.runtime.compiler": _deepspeed_compiler}


def _torch_compile():
    torch = sys.modules.get("torch")
    return getattr(torch, "compile", None) if torch is not None else None


class _PatchAfterExec(importlib.abc.Loader):
    """Runs a module as its own loader would, then applies its patch."""

    def __init__(self, inner: importlib.abc.Loader, patch: Callable):
        self.inner, self.patch = inner, patch

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        self.patch(module)

    def __getattr__(self, name):  # get_source, get_filename...: for tracebacks and inspect
        return getattr(self.inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        patch = PATCHES.get(name)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchAfterExec(spec.loader, patch)
        return spec


_FINDER = _Finder()


def install() -> None:
    """Defer the two libraries' torch.compile decorations from now on (idempotent; modules imported
    before this call keep theirs)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
