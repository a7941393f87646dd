"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""


class UserError(Exception):
    """A problem with the user's input that they can fix; the message names the problem and the fix."""

    exit_code = 2


class ConfigError(UserError):
    """Bad YAML, unknown keys, wrong types or inconsistent sizes in a run configuration."""


class DataError(UserError):
    """Missing, empty, corrupt or mismatched data, tokenizer or manifest."""


class TrainingError(UserError):
    """A run that cannot continue (NaN loss, unusable run directory)."""

    exit_code = 3


class CheckpointError(UserError):
    """No usable checkpoint, or one that does not fit this run (shape, objective, layout)."""


class RunDirError(UserError):
    """A run directory that cannot be used as asked (not a directory, not writable, already used)."""


class DivergenceError(TrainingError):
    """NaN/inf loss or gradient norm: the step must not be saved (stop, or roll back and skip)."""
