"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""


class UserError(Exception):
    """A problem with the user's input that they can fix; the message names the problem and the fix."""

    exit_code = 2
    # Whether every rank of a run meets this error alike (then only rank 0 prints it). Refusals are
    # found before workers start; in a worker, a file can vanish for one rank only.
    same_on_every_rank = False


class ConfigError(UserError):
    """Bad YAML, unknown keys, wrong types or inconsistent sizes in a run configuration."""


class DataError(UserError):
    """Missing, empty, corrupt or mismatched data, tokenizer or manifest."""


class TrainingError(UserError):
    """A run that cannot continue (a failed checkpoint write on one rank, a NaN loss)."""

    exit_code = 3


class CheckpointError(UserError):
    """No usable checkpoint, or one that does not fit this run (shape, objective, layout)."""


class RunDirError(UserError):
    """A run directory that cannot be used as asked (not a directory, not writable, already used)."""


class DivergenceError(TrainingError):
    """NaN/inf loss or gradient norm: the step must not be saved (stop, or roll back and skip)."""

    same_on_every_rank = True  # the loss and the norm are all-reduced: every rank stops together


# What `megadlm train` exits with (documented in the README and `megadlm train --help`).
EXIT_BAD_INPUT = 2  # a UserError: the message names the problem and the fix; nothing was changed
EXIT_DIVERGED = 3  # NaN/inf loss or gradient norm: the step was never saved
EXIT_HUNG = 4  # no step completed within run.hang_timeout_s: stacks dumped to RUN_DIR/logs; a failure
# sysexits.h EX_TEMPFAIL, "temporary failure; the user is invited to retry": stopped on request
# after saving a checkpoint; the same command resumes (a Slurm job requeues itself on it)
EXIT_INTERRUPTED = 75
