"""Library noise off the console: third-party warnings and log records go to a per-process log file.

megatron-core warns at import that Transformer Engine and Apex are missing (`warnings.warn`, once per
module and per rank), torch emits FutureWarnings and logs through its own stderr handler, DeepSpeed
logs to stdout through its own handler; on a multi-rank run that is hundreds of console lines that
hide our own `megadlm:` messages. They are all kept, in the file, for whoever needs them.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator

# Library records at this level and above are real errors: they stay on the console (and the file).
CONSOLE_LEVEL = logging.ERROR
# Loggers that are ours, not a library's: never rerouted.
OWN_LOGGERS = ("megadlm", "__main__")
# Lines kept in memory while no log file is named yet; later ones are counted, not kept.
BUFFER_LIMIT = 10_000

_FILE_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s [pid %(process)d]: %(message)s")


class _Router:
    """Where rerouted lines go: the log file, or a bounded buffer until one is named."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.verbose = False
        self.path: str | None = None
        self.file = None
        self.buffer: list[str] = []
        self.dropped = 0
        self.original_showwarning = None

    def open(self, path: str) -> None:
        path = os.path.abspath(path)
        if path == self.path:
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        new = open(path, "a", buffering=1, encoding="utf-8")  # line-buffered: a crash loses nothing
        with self.lock:
            old, self.file, self.path = self.file, new, path
            if self.dropped:
                self.buffer.append(f"megadlm.console: {self.dropped} earlier lines were not kept "
                                   f"(more than {BUFFER_LIMIT} before the log file was named)\n")
            new.writelines(self.buffer)
            self.buffer, self.dropped = [], 0
        if old is not None:
            old.close()

    def write(self, text: str) -> None:
        if not text.endswith("\n"):
            text += "\n"
        with self.lock:
            if self.file is not None:
                self.file.write(text)
            elif len(self.buffer) < BUFFER_LIMIT:
                self.buffer.append(text)
            else:
                self.dropped += 1


_ROUTER = _Router()
# a fork (DataLoader workers) while another thread writes would leave the child's copy locked forever
os.register_at_fork(after_in_child=lambda: setattr(_ROUTER, "lock", threading.Lock()))


def _is_ours(logger_name: str) -> bool:
    return any(logger_name == own or logger_name.startswith(own + ".") for own in OWN_LOGGERS)


class _RoutedLogger(logging.Logger):
    """A logger whose library records go to the log file; the console sees them only when verbose or
    at CONSOLE_LEVEL and above. Decided in the logger that creates the record, because torch and
    DeepSpeed give their loggers their own console handlers and turn propagation off: a handler on
    the root logger would never see their records."""

    def callHandlers(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        if _is_ours(self.name):
            super().callHandlers(record)
            return
        try:
            _ROUTER.write(_FILE_FORMAT.format(record))
        except Exception:  # a record whose message cannot be formatted: what logging itself would print
            _ROUTER.write(f"{record.levelname} {record.name}: {record.msg!r} % {record.args!r}")
        if _ROUTER.verbose or record.levelno >= CONSOLE_LEVEL:
            super().callHandlers(record)


def _showwarning(message, category, filename, lineno, file=None, line=None) -> None:
    if file is not None:  # someone asked for this warning on a particular stream: respect that
        _ROUTER.original_showwarning(message, category, filename, lineno, file, line)
        return
    text = warnings.formatwarning(message, category, filename, lineno, line).rstrip("\n")
    _ROUTER.write(_FILE_FORMAT.format(logging.LogRecord("py.warnings", logging.WARNING, filename, lineno,
                                                        text, None, None)))
    if _ROUTER.verbose:
        _ROUTER.original_showwarning(message, category, filename, lineno, file, line)


def route_library_output(log_path: str | None, verbose: bool) -> None:
    """Send Python warnings and library loggers' records to `log_path` instead of the console.

    Call it first thing in a process (each torchrun worker), before megatron, deepspeed, torch or
    transformers are imported: megatron-core's Transformer Engine / Apex warnings are emitted at
    import time. Calling it later still reroutes everything emitted afterwards.

    What goes where, from the call on:
    - Python warnings (`warnings.warn`: megatron's UserWarnings, torch's FutureWarnings, ...):
      to the file only; with verbose=True also to stderr as usual. Warning filters still apply
      (each warning once per location by default); a warning explicitly shown on a given stream
      (`warnings.showwarning(..., file=f)`) goes there untouched.
    - Records of library loggers (any logger not named `megadlm[.*]` or `__main__`: torch.*,
      DeepSpeed, megatron.*, transformers, ...): every record that passes the logger's own level goes
      to the file; the console (the library's own handlers, as before) gets it only when verbose=True
      or at CONSOLE_LEVEL (ERROR) and above, so real errors stay visible.
    - Unchanged: our own loggers, anything printed (our `megadlm: ...` messages, tracebacks of
      uncaught exceptions) and output written by C/C++ code straight to the file descriptors.

    `log_path`: a file, opened for appending (parent directories are created; line-buffered), e.g.
    RUN_DIR/logs/rank00000.log; the caller chooses the name. Each record starts a line with time,
    level, logger name (`py.warnings` for warnings) and pid. None means no file is known yet (before
    the run directory exists): lines are kept in memory (at most BUFFER_LIMIT) and written, in
    order, to the file named by a later call; if the process ends first they are lost (run with
    verbose=True to see them live).

    Safe to call again: a later call changes `verbose` and, given a new path, moves to that file.
    The process-wide changes it makes are `warnings.showwarning` and the logger class
    (`logging.setLoggerClass`; loggers that already exist are switched too).
    """
    _ROUTER.verbose = verbose
    if log_path is not None:
        _ROUTER.open(log_path)
    if warnings.showwarning is not _showwarning:
        _ROUTER.original_showwarning = warnings.showwarning
        warnings.showwarning = _showwarning
    logging.setLoggerClass(_RoutedLogger)
    for existing in list(logging.Logger.manager.loggerDict.values()):
        if type(existing) is logging.Logger:  # created before this call (placeholders are not loggers)
            existing.__class__ = _RoutedLogger


def log_library_output_to(log_path: str) -> None:
    """Name the log file once it may be written (after the run's pre-flight checks): what was
    buffered so far goes there first. No-op unless `route_library_output` was called."""
    if warnings.showwarning is _showwarning:
        _ROUTER.open(log_path)


class _PrintsToLog:
    """A stdout stand-in for one library call: whole lines go to the log file as `print` records."""

    def __init__(self, library: str):
        self.library, self.pending = library, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.strip():
                _ROUTER.write(_FILE_FORMAT.format(logging.LogRecord(
                    f"{self.library}.print", logging.INFO, "", 0, line, None, None)))
        return len(text)

    def flush(self) -> None:
        if self.pending.strip():
            self.write("\n")


@contextlib.contextmanager
def library_prints_to_log(library: str) -> Iterator[None]:
    """What `library` prints to stdout during the block goes to the log file (DeepSpeed prints "DeepSpeed
    deepspeed.ops.comm.deepspeed_shm_comm_op built successfully" from every CPU rank's process group
    setup). sys.stdout is replaced process-wide for the block, so keep it around one library call
    (another thread's prints in that window go to the file too); output C code writes to the file
    descriptor is not caught. A no-op unless `route_library_output` was called, and when it was
    called with verbose=True."""
    if warnings.showwarning is not _showwarning or _ROUTER.verbose:
        yield
        return
    stream = _PrintsToLog(library)
    with contextlib.redirect_stdout(stream):
        try:
            yield
        finally:
            stream.flush()
            sys.stdout.flush()
