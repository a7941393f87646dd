"""Stopping a run cleanly on request: SIGTERM (preemption), SIGUSR1 (Slurm's time-limit warning,
`--signal=B:USR1@margin`) or a `STOP` file in the run directory.

Handlers only set a flag; at the end of every step all ranks all-reduce it, so they agree on the
same step (only rank 0 looks for the STOP file: on a shared file system thousands of ranks would
otherwise stat it after every step), save one checkpoint together and exit with EXIT_INTERRUPTED,
which a launcher can read as "resume me" (re-running `megadlm train` on the run directory
continues from that checkpoint).
"""
from __future__ import annotations

import os
import signal

import torch
import torch.distributed as dist

from megadlm.rundir import STOP as STOP_FILE
from megadlm.rundir import stop_path

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    def __init__(self, run_dir: str, reads_stop_file: bool = True):
        self.stop_file = stop_path(run_dir)
        self.reads_stop_file = reads_stop_file
        self.reason: str | None = None
        self._previous = {}
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.reason = signal.Signals(signum).name

    def agreed(self, device) -> str | None:
        """The stop reason if any rank was asked to stop (a collective: call it on every rank)."""
        asked = self.reads_stop_file and os.path.exists(self.stop_file)
        local = self.reason or (STOP_FILE if asked else None)
        flag = torch.tensor([1.0 if local else 0.0], device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            return local or "another rank"
        return None

    def clear_file(self) -> None:
        """Remove a consumed STOP file so that resuming does not stop again at once."""
        if os.path.exists(self.stop_file):
            os.remove(self.stop_file)

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

