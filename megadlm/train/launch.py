"""Launch a training run: the one entry point of `megadlm train` and `megadlm demo`.

Every check that needs no process group (run directory, config against the data, shard checksums,
whether and from where the run resumes) is done here, once, before any worker starts: a refusal is
one message and exit 2 whatever the process count. With N > 1 processes on this machine the run is
relaunched under torchrun (standalone rendezvous) and the workers' own exit codes are passed
through (`exit_status`), so `--nproc N` exits exactly as `--nproc 1` would.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid

from megadlm.errors import EXIT_INTERRUPTED
from megadlm.exit_status import EXIT_DIR_ENV, combined_exit_code
from megadlm.rundir import ATTEMPT_ENV, attempt_stopped_on_request, has_checkpoint_dirs, resolve_run_dir


def torchrun_command(nproc: int, megadlm_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "megadlm", *megadlm_args]


def run_local_workers(nproc: int, megadlm_args: list[str], env: dict[str, str] | None = None) -> int:
    """Run `megadlm ARGS` in `nproc` torchrun workers on this machine (with `env` added) and return the
    launch's exit code: the workers' own (exit_status), not torchrun's blanket 1 for any failure."""
    with tempfile.TemporaryDirectory(prefix="megadlm-exit-") as exit_dir:
        full_env = {**os.environ, **(env or {}), EXIT_DIR_ENV: exit_dir,
                    # torchrun's own choice for several local workers, made here to spare its banner
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        code = subprocess.call(torchrun_command(nproc, megadlm_args), env=full_env)
        return combined_exit_code(code, exit_dir, nproc)


def train_arguments(config: str, overrides: list[str], run_dir: str, resume: bool, resume_from: str | None,
                    verbose: bool = False) -> list[str]:
    """The `megadlm train ...` arguments that reproduce this launch in a worker."""
    return ["train", config, "--run-dir", run_dir, *sum((["--set", o] for o in overrides), []),
            *([] if resume else ["--no-resume"]), *(["--resume-from", resume_from] if resume_from else []),
            *(["--verbose"] if verbose else [])]


def launch_training(config: str, overrides: list[str], run_dir: str | None = None, nproc: int = 1,
                    resume: bool = True, resume_from: str | None = None, verbose: bool = False) -> int:
    """Check, then train in this process (nproc 1, or already a torchrun worker) or in `nproc`
    local workers; returns the exit code (0 done, 75 stopped on request, 2/3/4 see errors.py).
    Raises UserError for a refused start, before anything is written."""
    from megadlm import preflight
    from megadlm.config.loader import load_config

    cfg = load_config(config, overrides)
    run_dir = resolve_run_dir(cfg, run_dir)
    if nproc <= 1 or "LOCAL_RANK" in os.environ:
        from megadlm.console import route_library_output

        # before torch, megatron and deepspeed are imported: their warnings go to the rank's log
        # file (named once the run directory may be written), the console stays readable
        route_library_output(None, verbose)
        from megadlm.train.trainer import train

        summary = train(cfg, run_dir, resume=resume, resume_from=resume_from)
        return EXIT_INTERRUPTED if summary.get("interrupted") else 0

    preflight.check_run_dir(run_dir)
    checked = preflight.check(cfg, nproc)
    if resume_from or has_checkpoint_dirs(run_dir):  # a fresh run has nothing to refuse (nor torch to import)
        from megadlm.train.checkpointing import resume_point

        resume_point(run_dir, checked.facts, resume, resume_from)  # refuse a resume before any worker starts
    attempt = uuid.uuid4().hex
    args = train_arguments(config, overrides, run_dir, resume, resume_from, verbose)
    code = run_local_workers(nproc, args, {ATTEMPT_ENV: attempt,
                                           preflight.VERIFIED_ENV: os.path.abspath(checked.data_path)})
    if code == EXIT_INTERRUPTED and not attempt_stopped_on_request(run_dir, attempt):
        return 1  # every worker said "stopped", yet this attempt's records do not: never ask for a resume
    return code
