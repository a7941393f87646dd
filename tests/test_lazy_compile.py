"""megatron-core's and DeepSpeed's torch.compile decorators compile on first call (megadlm/lazy_compile.py):
no TorchInductor at import, the same functions and results once called."""
import json
import subprocess
import sys
import threading

import pytest

from megadlm.lazy_compile import compile_on_first_call
from tests.conftest import REPO, megadlm_env


def test_compile_happens_once_on_the_first_call_not_at_decoration():
    calls = []

    def fake_compile(fn, **options):
        calls.append(options)
        return lambda *a, **k: ("compiled", fn(*a, **k))

    def double(x):
        """Doubles."""
        return 2 * x

    wrapped = compile_on_first_call(double, compile=fake_compile, dynamic=False)
    assert calls == []  # decorating compiles nothing
    assert wrapped.__wrapped__ is double and wrapped.__name__ == "double" and wrapped.__doc__ == "Doubles."
    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrapped(3) == ("compiled", 6)
    assert calls == [{"dynamic": False}]  # once, with the options, whichever thread came first


def test_decorator_factory_form_passes_options():
    calls = []

    def fake_compile(fn, **options):
        calls.append(options)
        return fn

    @compile_on_first_call(compile=fake_compile, fullgraph=True)
    def add(a, b):
        return a + b

    assert calls == [] and add(1, 2) == 3 and calls == [{"fullgraph": True}]


LIBRARIES = r"""
import json, sys
import torch
import megadlm  # installs the hook
import megatron.core, megatron.core.jit
from megatron.core.fusions.fused_bias_geglu import geglu
from deepspeed.runtime import compiler
from deepspeed.runtime.zero.muon import original_muon
inductor_at_import = "torch._inductor.compile_fx" in sys.modules
# torch.compile's result runs the function as it is: the call below needs no C++ build (18 s here);
# what is tested is that the call goes through torch.compile to the same result
import torch._dynamo
torch._dynamo.config.disable = True
y = torch.randn(4, 8, dtype=torch.float64)
y1, y2 = torch.chunk(y, 2, -1)
expected = (y1 * 0.5 * (1.0 + torch.tanh(0.79788456 * y1 * (1 + 0.044715 * y1 * y1)))) * y2
print(json.dumps({"inductor_at_import": inductor_at_import,
                  "jit_fuser": megatron.core.jit.jit_fuser.__name__,
                  "deepspeed_compile": compiler.compile().__name__,
                  "muon_wraps_original": hasattr(original_muon.zeropower_via_newtonschulz5, "__wrapped__"),
                  "geglu_equal": bool(torch.equal(geglu(y), expected))}))
"""


def libraries() -> dict:
    env = {**megadlm_env(), "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run([sys.executable, "-c", LIBRARIES], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_libraries_imported_after_megadlm_do_not_import_inductor_and_still_compute_the_same():
    deferred = libraries()
    assert deferred == {"inductor_at_import": False, "jit_fuser": "compile_on_first_call",
                        "deepspeed_compile": "compile_on_first_call", "muon_wraps_original": True,
                        "geglu_equal": True}
    # the libraries' own behaviour, for contrast (TorchInductor imported, jit_fuser = torch.compile), is
    # the eager side of tools/bench_startup.py --part compile; its smoke test asserts it
