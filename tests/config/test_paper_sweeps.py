"""The paper-grid sweep files stay runnable: every point is a valid config for its layout, fits 8x80 GB
nodes by `megadlm plan`, and all arms share one data budget."""
import dataclasses
from pathlib import Path

import pytest

from megadlm.config.loader import load_config
from megadlm.config.validate import validate_config
from megadlm.plan import make_plan
from megadlm.slurm.sweep import _resources, expand, load_grid

SWEEPS = sorted((Path(__file__).resolve().parents[2] / "yaml_configs" / "sweeps").glob("paper_*.yaml"))
ARMS = ["mdm", "ar", "ar_tokdrop0.1", "ar_tokdrop0.3", "ar_tokdrop0.5", "ar_tokdrop_uniform",
        "ar_attndrop0.1", "ar_attndrop0.3", "ar_attndrop0.5",
        "ar_mlpdrop0.1", "ar_mlpdrop0.3", "ar_mlpdrop0.5",
        "ar_wd0.1", "ar_wd0.3", "ar_wd0.5", "ar_wd0.8"]


def test_the_three_shapes_are_there():
    assert [p.stem for p in SWEEPS] == ["paper_qwen3-0.6b", "paper_qwen3-1.7b", "paper_qwen3-8b"]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_point_is_valid_fits_and_shares_the_budget(path):
    grid = load_grid(str(path))
    res = _resources(grid)
    points = expand(grid)
    assert [p["arm"] for p in points] == ARMS
    budgets = set()
    for p in points:
        cfg = load_config(grid["base"], p["overrides"])
        validate_config(cfg, world_size=res.world_size)
        plan = make_plan(cfg, 151669, res.nodes, res.gpus_per_node, 80.0)
        assert plan.fits, (p["name"], plan)
        budgets.add((cfg.data.unique_tokens, cfg.data.epochs, cfg.data.seq_len,
                     cfg.schedule.global_batch_size))
    assert budgets == {(3_000_000_000, 120, 4096, 2048)}


@pytest.mark.parametrize("name", ["cpu_repro", "cpu_repro_followup"])
def test_the_cpu_scale_sweeps_are_valid_and_train_on_the_same_token_count(name):
    path = SWEEPS[0].parent / f"{name}.yaml"
    grid = load_grid(str(path))
    res = _resources(grid)
    total_tokens = {}
    for p in expand(grid):
        cfg = load_config(grid["base"], p["overrides"])
        validate_config(cfg, world_size=res.world_size)
        total_tokens[p["name"]] = cfg.data.unique_tokens * cfg.data.epochs
    # every arm sees 64 KiB x 60 epochs worth of tokens, except the one MDM arm run 4x longer on purpose
    assert {n: t for n, t in total_tokens.items() if not n.startswith("mdm_240ep")} \
        == dict.fromkeys([n for n in total_tokens if not n.startswith("mdm_240ep")], 65536 * 60)
    assert all(t == 4 * 65536 * 60 for n, t in total_tokens.items() if n.startswith("mdm_240ep"))


def _parameters(cfg) -> int:
    from megadlm.plan import stage_parameters

    return sum(p.numel for stage in stage_parameters(cfg, 258, 1, 1) for p in stage)


def test_the_crossover_sweeps_are_valid_and_the_larger_model_has_about_4x_the_parameters():
    configs = {}
    for name in ("cpu_repro_crossover", "cpu_repro_crossover_seed2", "cpu_repro_crossover_4x_seed2",
                 "cpu_repro_crossover_ar"):
        grid = load_grid(str(SWEEPS[0].parent / f"{name}.yaml"))
        res = _resources(grid)
        for p in expand(grid):
            cfg = load_config(grid["base"], p["overrides"])
            validate_config(cfg, world_size=res.world_size)
            assert cfg.data.unique_tokens == 16384 and cfg.checkpoint.keep_best == "val_loss"
            configs[f"{name}/{p['name']}"] = cfg
    ratio = (_parameters(configs["cpu_repro_crossover/mdm_4x-seed1"])
             / _parameters(configs["cpu_repro_crossover/mdm_960ep-seed1"]))
    assert 3.5 < ratio < 4.5, ratio
    # the second seed is the same run but for its seed
    one = configs["cpu_repro_crossover/mdm_960ep-seed1"]
    two = configs["cpu_repro_crossover_seed2/mdm_960ep-seed2"]
    assert two.run.seed == 2 and dataclasses.replace(two, run=one.run) == one
    for arm in ("ar_4x", "mdm_4x"):  # the 4x pair's second seed: the same but for the seed (and a stop)
        one = configs[f"cpu_repro_crossover/{arm}-seed1"]
        two = configs[f"cpu_repro_crossover_4x_seed2/{arm}-seed2"]
        assert two.run.seed == 2 and dataclasses.replace(two, run=one.run) == one
