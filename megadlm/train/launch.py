"""Launch N local processes with torchrun (standalone rendezvous) running `megadlm` again."""
from __future__ import annotations

import subprocess
import sys


def torchrun_command(nproc: int, megadlm_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "megadlm", *megadlm_args]


def relaunch_with_torchrun(nproc: int, megadlm_args: list[str]) -> int:
    """Run and wait; torchrun's exit code is the worst rank's, which we pass through."""
    return subprocess.call(torchrun_command(nproc, megadlm_args))
