"""Slurm: `megadlm submit` (sbatch scripts rendered from slurm/*.sbatch), auto-requeue, sweeps as
job arrays and `megadlm status`."""
