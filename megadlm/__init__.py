"""megadlm: masked-diffusion and autoregressive LM pretraining on megatron-core + DeepSpeed.

Importing the package is cheap; torch, deepspeed and megatron are imported lazily by the modules
that need them so `megadlm --help` stays fast.
"""

__version__ = "0.1.0"
