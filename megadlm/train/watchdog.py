"""A hang ends: when no step completes within `run.hang_timeout_s`, every rank dumps its Python
stacks to its log and the run exits with EXIT_HUNG.

A stuck collective (a dead peer, a wedged file system, a rank stuck in I/O) otherwise sits forever
with no message: NCCL's and gloo's own timeouts are long and do not say where each rank was. Each
rank runs its own watchdog thread, so the ranks that wait for a stuck peer time out as well and
their stacks show which collective they were in. The job script treats EXIT_HUNG as a failure: it
does not requeue (a hang usually comes back on the same nodes).
"""
from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time

from megadlm.errors import EXIT_HUNG
from megadlm.exit_status import record_exit_code


class Watchdog:
    """`beat()` after every step and around long work (validation, a checkpoint save); the timer
    starts at `start()`. A timeout of 0 disables it."""

    def __init__(self, timeout_s: float, rank: int, log_path: str | None):
        self.timeout_s = timeout_s
        self.rank = rank
        self.log_path = log_path
        self._last = time.monotonic()
        self._what = "the first step"
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.timeout_s <= 0:
            return
        self._last = time.monotonic()
        self._thread = threading.Thread(target=self._watch, name="megadlm-watchdog", daemon=True)
        self._thread.start()

    def beat(self, next_work: str = "the next step") -> None:
        self._last = time.monotonic()
        self._what = next_work

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        poll = min(5.0, max(0.1, self.timeout_s / 10))
        while not self._stopped.wait(poll):
            idle = time.monotonic() - self._last
            if idle >= self.timeout_s:
                self._fire(idle)

    def _fire(self, idle: float) -> None:
        message = (f"megadlm: rank {self.rank}: no progress for {idle:.0f} s (run.hang_timeout_s="
                   f"{self.timeout_s:g}) while waiting for {self._what}; Python stacks of every thread "
                   f"follow{' and are in ' + self.log_path if self.log_path else ''}. Exiting with code "
                   f"{EXIT_HUNG} (a hang is a failure: check the other ranks' logs for the one that stopped)")
        print(message, file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        if self.log_path:
            os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
            with open(self.log_path, "a") as log:
                log.write(message + "\n")
                log.flush()
                faulthandler.dump_traceback(file=log, all_threads=True)
        record_exit_code(EXIT_HUNG)
        # The main thread is blocked in a collective or in I/O: only ending the process frees it.
        os._exit(EXIT_HUNG)


def stall_for_tests(step: int, rank: int) -> None:
    """Fault injection for the watchdog test: MEGADLM_FAULT_STALL_STEP=N makes rank
    MEGADLM_FAULT_STALL_RANK (default 1) stop making progress before step N, as a stuck rank would."""
    target = os.environ.get("MEGADLM_FAULT_STALL_STEP")
    if target is None or step != int(target) or rank != int(os.environ.get("MEGADLM_FAULT_STALL_RANK", "1")):
        return
    while True:
        time.sleep(3600)
