"""Written model files get the permissions of normal files (0666 less the umask: 0644 under umask 022).

safetensors writes through a private temporary file that it renames, so its files come out 0600:
nobody else in a group could read an exported model, unlike every other output of a run."""
from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells (os.umask can only set it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:  # not Linux: set and restore
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def follow_umask(directory: str | Path) -> None:
    """Give every file under `directory` the mode a newly created normal file would have."""
    mode = 0o666 & ~current_umask()
    for base, _, names in os.walk(directory):
        for name in names:
            os.chmod(os.path.join(base, name), mode)
