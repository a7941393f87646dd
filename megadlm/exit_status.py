"""Exit codes through torchrun: torchrun reports any failed worker as exit 1, which would turn a
refused resume (2), a divergence (3), a hang (4) or a requested stop (75) into one meaningless code.
A launcher that starts workers under torchrun sets EXIT_DIR_ENV to an empty directory; each worker
records its own exit code there (`record_exit_code`), and the launcher combines them
(`combined_exit_code`), so `megadlm train --nproc N` exits with the same code as `--nproc 1`."""
from __future__ import annotations

import os

from megadlm.atomic_files import write_atomically
from megadlm.errors import EXIT_INTERRUPTED

EXIT_DIR_ENV = "MEGADLM_EXIT_DIR"


def record_exit_code(code: int) -> None:
    """Write this worker's exit code where its launcher looks (no-op outside such a launch)."""
    directory, rank = os.environ.get(EXIT_DIR_ENV), os.environ.get("RANK")
    if not directory or rank is None:
        return
    write_atomically(os.path.join(directory, f"rank{rank}"), str(int(code)))


def recorded_exit_codes(directory: str) -> dict[int, int]:
    codes = {}
    for name in os.listdir(directory):
        if name.startswith("rank") and name[4:].isdigit():
            with open(os.path.join(directory, name)) as f:
                codes[int(name[4:])] = int(f.read().strip() or 1)
    return codes


def combined_exit_code(launcher_code: int, directory: str, nproc: int) -> int:
    """The code of the launch as a whole: the lowest rank's failure code if any rank failed with one;
    EXIT_INTERRUPTED when every rank stopped on request; otherwise torchrun's own code (a worker
    killed by a signal records nothing)."""
    codes = recorded_exit_codes(directory)
    failures = [code for _, code in sorted(codes.items()) if code not in (0, EXIT_INTERRUPTED)]
    if failures:
        return failures[0]
    if launcher_code == 0:
        return 0
    if len(codes) == nproc and all(code == EXIT_INTERRUPTED for code in codes.values()):
        return EXIT_INTERRUPTED
    return launcher_code
