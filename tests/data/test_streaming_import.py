"""The data path imports mosaicml-streaming's classes without its example datasets and DataLoader wrapper
(transformers, scikit-learn), and the package still behaves as before for code that wants the rest of it."""
import json
import subprocess
import sys
from importlib.metadata import version

from tests.conftest import REPO, megadlm_env

DEFERRED_THEN_FULL = r"""
import json, sys
from megadlm.data.streaming_import import defer_streaming_package_init
defer_streaming_package_init()
# first the module megadlm.data.remote needs: streaming's own import circle must still resolve
from streaming.base.storage.download import CloudDownloader
from streaming.base.dataset import StreamingDataset
from streaming.base.format import MDSWriter
from streaming.base.stream import Stream
before = {m: m in sys.modules for m in ("streaming.text", "streaming.vision", "sklearn", "transformers",
                                        "streaming.base.dataloader")}
import streaming
from streaming import LocalDataset, text  # names only the package __init__ defines
from streaming.base import StreamingDataLoader  # and one only streaming.base's __init__ defines
after = {m: m in sys.modules for m in ("streaming.text", "streaming.vision", "streaming.base.dataloader")}
print(json.dumps({"before": before, "after": after, "version": streaming.__version__,
                  "same_class": streaming.StreamingDataset is StreamingDataset,
                  "local": LocalDataset.__module__}))
"""

LOADER = r"""
import json, sys
from megadlm.config.loader import load_config
from megadlm.data.loader import TrainData, ValData
from megadlm.data.manifest import load_manifest
from megadlm.parallel.distributed import _ensure_single_process_env
_ensure_single_process_env()
data_dir, run_dir = sys.argv[1], sys.argv[2]
cfg = load_config("tiny_ar", [f"data.path={data_dir}", "data.seq_len=32", "schedule.global_batch_size=8",
                              "schedule.micro_batch_size=4"])
manifest = load_manifest(data_dir)
train = TrainData(cfg, manifest, run_dir, replication=1, seed=5)
ValData(cfg, manifest, run_dir, dp_rank=0, dp_size=1)
next(train.batches(0))
print(json.dumps({m: m in sys.modules for m in ("streaming.text", "sklearn", "transformers")}))
"""


def run_python(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=megadlm_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_deferred_package_loads_only_streaming_base_until_a_top_level_name_is_asked_for():
    result = run_python(DEFERRED_THEN_FULL)
    assert not any(result["before"].values()), result["before"]
    assert all(result["after"].values()), result["after"]
    assert result["version"] == version("mosaicml-streaming")
    assert result["same_class"] and result["local"] == "streaming.base.local"


def test_training_data_reads_shards_without_streamings_example_datasets(tiny_data, tmp_path):
    imported = run_python(LOADER, str(tiny_data), str(tmp_path / "run"))
    assert imported == {"streaming.text": False, "sklearn": False, "transformers": False}
