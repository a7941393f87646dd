"""megadlm.console: library warnings and log records go to the log file, not the console; verbose
shows them too; our own messages and real errors stay on the console. Each case is a fresh Python
process, so megatron-core's import-time warnings are the real ones."""
import subprocess
import sys
import textwrap

from tests.conftest import REPO, megadlm_env

MEGATRON_WARNING = "Transformer Engine and Apex are not installed"
TORCH_FUTURE_WARNING = "`torch.distributed.reduce_op` is deprecated"

# Everything a worker process does that puts library output on the console, in order.
WORKER = """
import logging, sys
from megadlm.console import route_library_output
early = logging.getLogger("library.made.before")  # a logger that existed before the call
route_library_output({log!r}, verbose={verbose})
import megatron.core.optimizer  # warns at import that Transformer Engine and Apex are missing
import torch.distributed
torch.distributed.reduce_op.SUM  # a real torch FutureWarning (the deprecated attribute lookup)
logging.getLogger("megatron.core.fake_module").warning("library record below ERROR")
early.warning("record of a logger made before the call")
logging.getLogger("DeepSpeed").error("library error record")
logging.getLogger("megadlm.train").warning("our own logger")
print("megadlm: our own message", file=sys.stderr)
from megadlm.console import library_prints_to_log
with library_prints_to_log("deepspeed"):  # as DeepSpeed prints from its process-group setup
    print("DeepSpeed shm op built successfully")
    print("an unfinished line", end="")
print("megadlm: printed after the block")
"""


def run_worker(log, verbose: bool) -> subprocess.CompletedProcess:
    code = textwrap.dedent(WORKER.format(log=str(log), verbose=verbose))
    # -W default: show each warning once per location whatever the calling test runner's filters say
    proc = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True,
                          env=megadlm_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_library_warnings_and_records_go_to_the_file_not_the_console(tmp_path):
    log = tmp_path / "logs" / "rank00000.log"  # its directory does not exist yet
    proc = run_worker(log, verbose=False)
    console, written = proc.stdout + proc.stderr, log.read_text()
    for noise in (MEGATRON_WARNING, TORCH_FUTURE_WARNING, "FutureWarning", "library record below ERROR",
                  "record of a logger made before the call"):
        assert noise in written, noise
        assert noise not in console, noise
    assert "WARNING megatron.core.fake_module" in written
    assert "library error record" in console and "library error record" in written  # a real error
    assert "our own logger" in console and "megadlm: our own message" in console
    assert "our own" not in written
    assert "INFO deepspeed.print" in written and "built successfully" not in console
    assert "an unfinished line" in written and "megadlm: printed after the block" in proc.stdout


def test_verbose_shows_them_on_the_console_as_well(tmp_path):
    log = tmp_path / "rank00000.log"
    proc = run_worker(log, verbose=True)
    for noise in (MEGATRON_WARNING, TORCH_FUTURE_WARNING, "library record below ERROR"):
        assert noise in proc.stderr, noise
        assert noise in log.read_text(), noise
    assert "built successfully" in proc.stdout


def test_lines_from_before_the_log_file_is_named_are_written_to_it(tmp_path):
    log = tmp_path / "rank00001.log"
    log.write_text("an earlier attempt's line\n")
    code = textwrap.dedent(f"""
        import logging, warnings
        from megadlm.console import route_library_output
        route_library_output(None, verbose=False)  # the run directory is not known yet
        warnings.warn("emitted before the file is named", FutureWarning)
        logging.getLogger("torch.somewhere").warning("a record before the file is named")
        route_library_output({str(log)!r}, verbose=False)
        warnings.warn("emitted after", UserWarning)
    """)
    proc = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True,
                          env=megadlm_env(), cwd=REPO, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = log.read_text().splitlines()
    assert lines[0] == "an earlier attempt's line"  # appended, not overwritten
    assert [i for i, line in enumerate(lines) if "before the file is named" in line] == [1, 2]
    assert "FutureWarning: emitted before the file is named" in lines[1]
    assert "UserWarning: emitted after" in "\n".join(lines[3:])
