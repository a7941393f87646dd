"""Pre-flight: the checks a run needs before any process starts, torch-free, without changing the
caller's config."""
import subprocess
import sys

import pytest

from megadlm import preflight
from megadlm.config.loader import load_config
from megadlm.errors import ConfigError
from tests.conftest import REPO, TINY


def test_check_returns_what_it_found_and_leaves_the_config_alone(tiny_data):
    cfg = load_config("tiny_mdm", [*TINY, f"data.path={tiny_data}"])
    checked = preflight.check(cfg, world_size=2)
    assert checked.data_path == str(tiny_data) and cfg.data.path == str(tiny_data)
    assert checked.padded_vocab_size % 128 == 0
    assert checked.manifest["vocab_size"] <= checked.padded_vocab_size
    assert checked.facts.layout == {"tp": 1, "pp": 1, "dp": 2, "zero_stage": 1}
    assert checked.facts.data["seq_len"] == 32 and checked.facts.objective == "mdm"


def test_no_data_is_one_clear_error():
    with pytest.raises(ConfigError, match="data.path is not set"):
        preflight.check(load_config("tiny_mdm", TINY), world_size=1)


def test_the_preflight_and_rundir_modules_import_no_torch():
    code = ("import sys, megadlm.preflight, megadlm.rundir, megadlm.exit_status, megadlm.train.launch; "
            "print(sorted(m for m in ('torch', 'deepspeed', 'megatron', 'streaming') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
