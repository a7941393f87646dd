"""`megadlm sweep GRID.yaml`: a grid over config keys as one Slurm job array.

GRID.yaml:

    name: paper_cpu                 # sweep name (default: the file's stem)
    out: runs/sweeps/paper_cpu      # sweep directory (default runs/sweeps/<name>); must not exist
    base: tiny_ar                   # config file or preset every point starts from
    set: {data.path: data/}         # overrides common to all points
    arms:                           # optional named alternatives, each a set of overrides
      mdm: {objective.type: mdm}
      ar: {objective.type: ar}
      ar_wd0.5: {objective.type: ar, optim.weight_decay: 0.5}
    grid:                           # further axes: key -> values (cartesian product)
      run.seed: [1, 2]
    resources: {nodes: 1, gpus_per_node: 8, time: "2-00:00:00", partition: gpu, max_restarts: 5}
    max_parallel: 4                 # array throttle (%4); with --local, runs trained at once

Every point is validated before anything is written. SWEEP_DIR gets sweep.json (the manifest: each
point's index, name, run directory and overrides), sweep.sbatch, logs/ and runs/<point>/ with the
resolved config; array task i trains point i.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
from dataclasses import fields
from pathlib import Path

import yaml

from megadlm.atomic_files import write_atomically
from megadlm.errors import ConfigError, UserError
from megadlm.slurm.submit import (
    Resources,
    record_job,
    render,
    sbatch,
    sbatch_test_only,
)

MANIFEST = "sweep.json"
SCRIPT = "sweep.sbatch"
LOCAL_RECORDS = "local.jsonl"
GRID_KEYS = {"name", "out", "base", "set", "arms", "grid", "resources", "max_parallel"}


def _as_overrides(mapping, where: str) -> list[str]:
    if mapping is None:
        return []
    if isinstance(mapping, list) and all(isinstance(x, str) and "=" in x for x in mapping):
        return list(mapping)
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where} must map config keys to values, e.g. {{optim.lr: 1e-3}}")
    return [f"{key}={_yaml_value(value)}" for key, value in mapping.items()]


def _yaml_value(value) -> str:
    """`value` as --set parses it back (YAML 1.1: 1e30 must be written 1.0e+30 to stay a float)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
    return text[:-3].strip() if text.endswith("\n...") else text


def _point_name(arm: str | None, combo: dict) -> str:
    parts = [arm] if arm else []
    parts += [f"{key.split('.')[-1]}{value}" for key, value in combo.items()]
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", "-".join(parts) or "point")


def load_grid(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"sweep file {path} does not exist")
    try:
        grid = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"sweep file {path} is not valid YAML: {e}") from None
    unknown = set(grid) - GRID_KEYS
    if unknown:
        raise ConfigError(f"sweep file {path}: unknown key(s) {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(sorted(GRID_KEYS))}")
    if "base" not in grid:
        raise ConfigError(f"sweep file {path}: `base:` (the config every point starts from) is required")
    axes = grid.get("grid") or {}
    if not isinstance(axes, dict) or any(not isinstance(v, list) or not v for v in axes.values()):
        raise ConfigError(f"sweep file {path}: `grid:` must map config keys to non-empty lists of values")
    limit = grid.get("max_parallel")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"sweep file {path}: `max_parallel:` must be a whole number >= 1 (got {limit!r})")
    return grid


def expand(grid: dict) -> list[dict]:
    """The points: arms x cartesian product of the grid axes, in a stable order."""
    common = _as_overrides(grid.get("set"), "set")
    arms = grid.get("arms") or {None: {}}
    if not isinstance(arms, dict):
        raise ConfigError("`arms:` must map arm names to override mappings")
    axes = grid.get("grid") or {}
    points = []
    for arm, arm_overrides in arms.items():
        for values in itertools.product(*axes.values()):
            combo = dict(zip(axes, values))
            overrides = common + _as_overrides(arm_overrides, f"arms.{arm}") + _as_overrides(combo, "grid")
            points.append({"index": len(points), "name": _point_name(arm, combo), "arm": arm,
                           "grid": combo, "overrides": overrides})
    names = [p["name"] for p in points]
    if len(set(names)) != len(names):
        raise ConfigError("two sweep points have the same name; give the arms distinct names")
    return points


def _resources(grid: dict) -> Resources:
    spec = dict(grid.get("resources") or {})
    allowed = {f.name for f in fields(Resources)}
    unknown = set(spec) - allowed
    if unknown:
        raise ConfigError(f"resources: unknown key(s) {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(sorted(allowed))}")
    return Resources(**spec)


def _array_block(points: list[dict]) -> str:
    run_dirs = " ".join(shlex.quote(p["run_dir"]) for p in points)
    configs = " ".join(shlex.quote(p["config"]) for p in points)
    return (f"RUN_DIRS=({run_dirs})\nCONFIGS=({configs})\n"
            'RUN_DIR=${RUN_DIRS[$SLURM_ARRAY_TASK_ID]}\nCONFIG=${CONFIGS[$SLURM_ARRAY_TASK_ID]}')


def submit_sweep(grid_path: str, dry_run: bool, local: bool = False, parallel: int | None = None) -> dict:
    """Validate every point, then write the sweep directory and submit it as one array (or, with
    `local`, train the points on this machine, `parallel` at a time; rerunning continues unfinished ones)."""
    from megadlm import preflight
    from megadlm.config.loader import config_to_dict, load_config
    from megadlm.plan import checkpoint_storage

    if parallel is not None and (not local or parallel < 1):
        raise ConfigError(f"--parallel {parallel}: give a count of at least 1, and only with --local "
                          "(on Slurm, the grid's max_parallel throttles the array)")
    grid = load_grid(grid_path)
    name = grid.get("name") or Path(grid_path).stem
    sweep_dir = Path(os.path.abspath(grid.get("out") or os.path.join("runs", "sweeps", name)))
    if local and (sweep_dir / MANIFEST).is_file():
        return run_local(sweep_dir, parallel)
    if sweep_dir.exists():
        raise ConfigError(f"sweep directory {sweep_dir} already exists: set another `out:` "
                          f"(`megadlm status {sweep_dir}` shows that sweep)")
    res = _resources(grid)
    res.check()
    points = expand(grid)
    configs, data_dirs = {}, []
    for p in points:  # validate every point before writing anything
        try:
            cfg = load_config(grid["base"], p["overrides"])
            checked = preflight.check(cfg, res.world_size, verify_data=False)
        except UserError as e:
            raise type(e)(f"sweep point {p['name']}: {e}") from None
        if not cfg.data.remote:
            data_dirs.append(checked.data_path)
        p["run_dir"] = str(sweep_dir / "runs" / p["name"])
        p["config"] = str(sweep_dir / "runs" / p["name"] / "slurm" / "config.yaml")
        configs[p["name"]] = config_to_dict(cfg)
        available = checked.manifest.get("splits", {}).get("train", {}).get("samples")
        p["checkpoint_storage_bytes"] = checkpoint_storage(
            cfg, checked.padded_vocab_size, None if available is None else int(available))
    # the points of a grid share their data: hash each directory's shards once, not once per point
    preflight.verify_data_dirs(data_dirs, quiet=False)
    throttle = f"%{grid['max_parallel']}" if grid.get("max_parallel") else ""
    script = render(res, _array_block(points), str(sweep_dir / "logs" / "%x-%A_%a.out"),
                    job_name=f"megadlm-{name}", array=f"0-{len(points) - 1}{throttle}")
    manifest = {"name": name, "grid_file": os.path.abspath(grid_path), "base": grid["base"],
                "points": points, "resources": {f.name: getattr(res, f.name) for f in fields(Resources)},
                "max_parallel": grid.get("max_parallel")}
    if dry_run:
        return {"script": script, "sweep_dir": str(sweep_dir), "points": points, "job_id": None}
    if not local:
        sbatch_test_only(script)
    staging = sweep_dir.with_name(f".{sweep_dir.name}.incomplete")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / "logs").mkdir(parents=True)
        for p in points:
            slurm_dir = staging / "runs" / p["name"] / "slurm"
            slurm_dir.mkdir(parents=True)
            (slurm_dir / "config.yaml").write_text(yaml.safe_dump(configs[p["name"]], sort_keys=False))
        write_atomically(staging / SCRIPT, script)
        write_atomically(staging / MANIFEST, json.dumps(manifest, indent=2))
        os.rename(staging, sweep_dir)
        if local:
            return run_local(sweep_dir, parallel)
        job_id = sbatch(str(sweep_dir / SCRIPT))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if not local:
            shutil.rmtree(sweep_dir, ignore_errors=True)
        raise
    record = record_job(sweep_dir, job_id, res, sweep_dir / SCRIPT, array_size=len(points))
    return {"script": script, "sweep_dir": str(sweep_dir), "points": points, **record}


def local_threads(parallel: int, nproc: int) -> int:
    """CPU threads for each process when `parallel` runs of `nproc` processes share this machine.
    Small models scale poorly over threads, so on 2 cores two 1-thread runs trained 1.23x faster in total
    than two 2-thread runs one after the other (tools/bench_local_sweep.py measures it)."""
    return max(1, (os.cpu_count() or 1) // (parallel * nproc))


def run_local(sweep_dir: Path, parallel: int | None = None) -> dict:
    """Train every unfinished point on this machine, `parallel` at a time (default: the grid's
    max_parallel, else 1), each with procs_per_node processes and an equal share of the CPU threads;
    each point's exit code and log go to SWEEP_DIR/local.jsonl, which `megadlm status` reads."""
    import subprocess
    import sys
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from megadlm.rundir import progress as run_progress

    manifest = json.loads((sweep_dir / MANIFEST).read_text())
    nproc = max(1, int(manifest["resources"].get("procs_per_node") or 1))
    parallel = int(parallel or manifest.get("max_parallel") or 1)
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # a user's explicit choice wins
        env["OMP_NUM_THREADS"] = str(local_threads(parallel, nproc))
    todo = [p for p in manifest["points"] if not run_progress(p["run_dir"])["finished"]]
    codes = {p["name"]: 0 for p in manifest["points"]}  # manifest order; finished points stay 0
    records_lock = threading.Lock()

    def train(p: dict) -> None:
        log = sweep_dir / "logs" / f"local_{p['index']}_{p['name']}.out"
        print(f"[{p['index'] + 1}/{len(manifest['points'])}] {p['name']} -> {log}", flush=True)
        started = time.time()
        with open(log, "a") as out:
            code = subprocess.call([sys.executable, "-m", "megadlm", "train", p["config"],
                                    "--run-dir", p["run_dir"], "--nproc", str(nproc)],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
        record = {"index": p["index"], "name": p["name"], "exit_code": code, "log": str(log),
                  "started": started, "ended": time.time()}
        with records_lock:
            codes[p["name"]] = code
            with open(sweep_dir / LOCAL_RECORDS, "a") as f:
                f.write(json.dumps(record) + "\n")

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for future in [pool.submit(train, p) for p in todo]:
            future.result()
    return {"script": None, "sweep_dir": str(sweep_dir), "points": manifest["points"], "job_id": None,
            "local_exit_codes": codes}
