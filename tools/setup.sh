#!/usr/bin/env bash
# Create (or reuse) .venv in the repository and install megadlm with its test extra.
# torch/torchvision are pinned to the releases mosaicml-streaming's torchvision needs, so pip takes
# them from the local wheel cache where one exists instead of resolving a newer CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import megadlm, deepspeed, megatron.core, streaming, pytest" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.megadlm-installed ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install --quiet -e ".[test]"
  touch .venv/.megadlm-installed
fi
# DeepSpeed's CPU backend JIT-builds a C++ op (shared-memory allreduce) the first time a process group
# starts: build it now, where the tests look for it (tests/conftest.py), so that no test pays for it.
TORCH_EXTENSIONS_DIR="$(pwd)/.torch_extensions" .venv/bin/python -c "
import deepspeed.ops
from deepspeed.accelerator import get_accelerator
builder = get_accelerator().create_op_builder('ShareMemCommBuilder')
if builder is not None and deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
    builder.load(verbose=False)" >/dev/null 2>&1 || echo "note: DeepSpeed's CPU op did not build now; tests will try again"
echo "megadlm environment ready: $(pwd)/.venv"
