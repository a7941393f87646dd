"""Sweep files without a cluster: expansion, validation before writing, and `--local` runs with
`megadlm status` reading their results."""
import json
import os
import shutil
import time

import pytest
import yaml

from megadlm.errors import ConfigError
from megadlm.slurm.sweep import expand, load_grid, local_threads
from tests.conftest import TINY, run_cli, snapshot


def write(tmp_path, grid) -> str:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return str(path)


def test_points_are_arms_times_grid_with_values_that_round_trip(tmp_path):
    grid = load_grid(write(tmp_path, {
        "base": "tiny_ar", "set": {"data.path": "d", "optim.lr": 1.0e-3},
        "arms": {"mdm": {"objective.type": "mdm"},
                 "ar_wd": {"objective.type": "ar", "optim.weight_decay": 0.5}},
        "grid": {"run.seed": [1, 2], "data.unique_tokens": [100000, 1.0e30]}}))
    points = expand(grid)
    assert len(points) == 8 and [p["index"] for p in points] == list(range(8))
    assert points[0]["name"] == "mdm-seed1-unique_tokens100000"
    assert points[-1]["overrides"][-2:] == ["run.seed=2", "data.unique_tokens=1.0e+30"]
    from megadlm.config.loader import parse_override

    assert parse_override(points[-1]["overrides"][-1])[1] == 1e30  # a float, not the string '1e+30'
    assert "optim.weight_decay=0.5" in points[-1]["overrides"]


@pytest.mark.parametrize("grid, message", [
    ({"base": "tiny_ar", "grids": {}}, "unknown key(s) grids"),
    ({"set": {}}, "`base:`"),
    ({"base": "tiny_ar", "grid": {"run.seed": []}}, "non-empty lists"),
    ({"base": "tiny_ar", "max_parallel": 0}, "`max_parallel:` must be a whole number >= 1 (got 0)"),
    ({"base": "tiny_ar", "max_parallel": "2"}, "`max_parallel:` must be a whole number"),
])
def test_bad_sweep_files_are_refused(tmp_path, grid, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_grid(write(tmp_path, grid))


def test_a_bad_point_is_refused_before_anything_is_written(tiny_data, tmp_path):
    path = write(tmp_path, {"base": "tiny_ar", "out": str(tmp_path / "sweep"),
                            "set": [*TINY, f"data.path={tiny_data}"],
                            "arms": {"ok": {}, "bad": {"model.num_attention_heads": 5}}})
    before = snapshot(tmp_path)
    proc = run_cli("sweep", path, "--local", check=False)
    assert proc.returncode == 2 and "sweep point bad:" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(tmp_path) == before


def test_a_grid_on_one_data_directory_verifies_its_shards_once(tiny_data, tmp_path):
    path = write(tmp_path, {"base": "tiny_ar", "out": str(tmp_path / "sweep"),
                            "set": [*TINY, f"data.path={tiny_data}"],
                            "arms": {"ar": {}, "mdm": {"objective.type": "mdm"}},
                            "grid": {"run.seed": [1, 2]}})
    proc = run_cli("sweep", path, "--dry-run")
    verified = [line for line in proc.stderr.splitlines() if "verified the checksums" in line]
    assert len(verified) == 1 and str(tiny_data) in verified[0], proc.stderr[-2000:]
    assert len([line for line in proc.stdout.splitlines() if line.startswith("  [")]) == 4
    assert "checkpoint storage once every point has finished" in proc.stdout  # the grid's total on disk


def test_a_second_sweep_on_unchanged_data_does_not_hash_its_shards_again(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MEGADLM_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    an_hour_ago = time.time_ns() - 3600 * 10**9
    for shard in data.glob("*/*.mds*"):
        os.utime(shard, ns=(an_hour_ago, an_hour_ago))
    path = write(tmp_path, {"base": "tiny_ar", "out": str(tmp_path / "sweep"),
                            "set": [*TINY, f"data.path={data}"], "arms": {"ar": {}}})
    lines = []
    for _ in range(2):
        proc = run_cli("sweep", path, "--dry-run")
        lines += [line for line in proc.stderr.splitlines() if "verified the checksums" in line]
    shards = len(list(data.glob("*/*.mds*")))
    assert lines[0].endswith(f"{shards} shards in {data}"), lines
    assert lines[1].endswith(f"{shards} shards in {data} ({shards} unchanged since an earlier check, "
                             "not re-hashed)"), lines


def test_parallel_needs_local_and_a_positive_count(tmp_path):
    path = write(tmp_path, {"base": "tiny_ar", "out": str(tmp_path / "sweep")})
    for args in (["--parallel", "2"], ["--local", "--parallel", "0"]):
        proc = run_cli("sweep", path, *args, check=False)
        assert proc.returncode == 2 and "--parallel" in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_local_sweep_runs_every_point_and_status_reads_it(tiny_data, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    path = write(tmp_path, {"base": "tiny_mdm", "out": str(tmp_path / "sweep"),
                            "set": [*TINY, f"data.path={tiny_data}", "schedule.max_steps=2"],
                            "arms": {"mdm": {"objective.type": "mdm"}, "ar": {"objective.type": "ar"}}})
    proc = run_cli("sweep", path, "--local", "--parallel", "2")
    assert "ran 2 points locally" in proc.stdout
    rows = json.loads(run_cli("status", str(tmp_path / "sweep"), "--json").stdout)
    assert ([(r["name"], r["state"], r["step"]) for r in rows]
            == [("mdm", "COMPLETED", 2), ("ar", "COMPLETED", 2)])
    # both trained at once, each with its share of the cores
    for name in ("mdm", "ar"):
        records = [json.loads(line) for line in (tmp_path / "sweep" / "runs" / name / "metrics.jsonl").open()]
        assert next(r for r in records if r["kind"] == "start")["cpu_threads"] == local_threads(2, 1)
    spans = [json.loads(line) for line in (tmp_path / "sweep" / "local.jsonl").open()]
    assert max(s["started"] for s in spans) < min(s["ended"] for s in spans)
    again = run_cli("sweep", path, "--local")  # finished points are not trained again
    assert "ran 2 points locally" in again.stdout and "->" not in again.stdout
