"""lm-eval records the git commit of the current directory by running `git describe` with stderr
inherited: from anywhere that is not a git checkout, every `megadlm eval` printed
`fatal: not a git repository`. We keep lm-eval's lookup and only silence git."""
from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator


def quiet_git_commit_hash() -> str | None:
    """lm_eval.loggers.utils.get_git_commit_hash with git's stderr discarded."""
    from lm_eval.loggers.utils import get_commit_from_path

    try:
        out = subprocess.run(["git", "describe", "--always"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, check=True)
        return out.stdout.decode().strip()
    except (subprocess.CalledProcessError, FileNotFoundError):  # not a checkout / no git installed
        return get_commit_from_path(os.getcwd())


@contextlib.contextmanager
def lm_eval_without_git_noise() -> Iterator[None]:
    """While open, lm-eval's simple_evaluate looks the commit up quietly (it calls the function by the
    name it imported into lm_eval.evaluator, so that is the name replaced, and restored afterwards)."""
    from lm_eval import evaluator

    original = getattr(evaluator, "get_git_commit_hash", None)
    if original is None:  # an lm-eval that no longer runs git this way: nothing to silence
        yield
        return
    evaluator.get_git_commit_hash = quiet_git_commit_hash
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original
