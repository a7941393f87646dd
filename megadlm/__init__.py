"""megadlm: masked-diffusion and autoregressive LM pretraining on megatron-core + DeepSpeed.

Importing the package is cheap; torch, deepspeed and megatron are imported lazily by the modules
that need them so `megadlm --help` stays fast.
"""

from megadlm import lazy_compile

__version__ = "0.1.0"

# megatron-core's and DeepSpeed's import-time torch.compile decorations cost every process ~1.4 s:
# defer them to first use (see megadlm/lazy_compile.py). Installs an import hook, imports nothing.
lazy_compile.install()
