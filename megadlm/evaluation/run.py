"""`megadlm eval` and `megadlm generate`: lm-eval on a checkpoint, run or HF export of either family.

MDM models go through the `megadlm_mdm` lm-eval model type (ELBO likelihoods, diffusion sampling);
AR models through lm-eval's own `hf` model on the export, so AR scores are what the community's tools
report for the same weights.
"""
from __future__ import annotations

import datetime
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from megadlm.atomic_files import atomic_writer, write_atomically
from megadlm.evaluation.models import (
    EvalError,
    find_model,
    hf_dir_for,
    model_objective,
    objective_of,
    resolve_hf_dir,
)
from megadlm.evaluation.quiet_git import lm_eval_without_git_noise

RESULTS_FILE = "results.json"
SAMPLES_FILE = "samples.jsonl"
# Named task suites for `--tasks` (alone or among other names). paper6: the downstream tasks of the
# data-constrained MDM-vs-AR comparison (arXiv 2510.04071), by their lm-eval names.
SUITES = {"paper6": ["hellaswag", "piqa", "social_iqa", "winogrande", "lambada_openai", "arc_easy"]}


def expand_tasks(names: list[str]) -> list[str]:
    """Task names with suites replaced by their tasks, in order, each task once."""
    out: list[str] = []
    for name in names:
        for task in SUITES.get(name, [name]):
            if task not in out:
                out.append(task)
    return out


@dataclass
class EvalRequest:
    model: str
    tasks: list[str]
    out: str
    limit: float | None = None
    include_path: str | None = None
    estimator: str = "mc_elbo"
    mc_num: int = 128
    seed: int = 1234
    device: str = "cpu"
    batch_size: int = 8
    export_dir: str | None = None
    generation: dict = field(default_factory=dict)  # gen_length, steps, block_length, temperature, remasking
    log_samples: bool = False  # also write every request's scores and metrics to OUT/samples.jsonl


def _task_manager(include_path: str | None):
    from megadlm.evaluation.task_index import task_manager

    if include_path and not Path(include_path).is_dir():
        raise EvalError(f"--include-path {include_path} is not a directory of task YAML files")
    return task_manager(include_path)


def _check_tasks(manager, tasks: list[str]) -> None:
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise EvalError(f"unknown lm-eval task(s) {', '.join(unknown)}: "
                        f"check the names (`lm_eval ls tasks`) or "
                        f"pass --include-path DIR with their YAML files")


def _build_model(hf_dir: Path, req: EvalRequest):
    if objective_of(hf_dir) == "mdm":
        from megadlm.evaluation.harness import MegadlmDiffusionLM

        model = MegadlmDiffusionLM(pretrained=str(hf_dir), estimator=req.estimator, mc_num=req.mc_num,
                                   seed=req.seed, device=req.device, **req.generation)
        return model, {"model_type": "megadlm_mdm", **model.estimator_record()}
    import lm_eval.models  # noqa: F401  (fills the registry with `hf`)
    from lm_eval.models.huggingface import HFLM

    model = HFLM(pretrained=str(hf_dir), dtype="float32", device=req.device, batch_size=req.batch_size)
    return model, {"model_type": "hf", "estimator": "autoregressive_exact", "mc_num": None, "seed": req.seed}


def check_request(req: EvalRequest, nproc: int = 1):
    """Every refusal that needs no model loaded (exit 2 before any worker starts); exports a
    checkpoint once, here, so several ranks never export it at the same time. Returns the task
    manager, the HF directory and where it came from."""
    if not req.tasks:
        raise EvalError("--tasks is empty: name at least one lm-eval task")
    if nproc < 1:
        raise EvalError(f"--nproc must be at least 1, got {nproc}")
    out = Path(req.out)
    if (out / RESULTS_FILE).exists():
        raise EvalError(f"{out / RESULTS_FILE} already exists: "
                        f"choose another --out (nothing was overwritten)")
    manager = _task_manager(req.include_path)
    _check_tasks(manager, req.tasks)
    found = find_model(req.model)
    if nproc > 1 and model_objective(found) != "mdm":  # before exporting anything
        raise EvalError("--nproc applies to MDM models: AR models run lm-eval's own `hf` model in one "
                        "process (drop --nproc, or use lm-eval's accelerate launch on the export)")
    hf_dir, source = hf_dir_for(found, req.export_dir)
    return manager, hf_dir, source


def run_eval(req: EvalRequest) -> dict:
    """Evaluate, write OUT/results.json (atomically) and return its content. Under torchrun every rank
    calls this; rank 0 alone writes and returns the record, the others return {}."""
    import lm_eval
    from lm_eval import simple_evaluate

    from megadlm.evaluation.ranks import leave_ranks

    manager, hf_dir, source = check_request(req)
    model, estimator = _build_model(hf_dir, req)
    started = time.perf_counter()
    with lm_eval_without_git_noise():
        results = simple_evaluate(model=model, tasks=req.tasks, limit=req.limit, task_manager=manager,
                                  random_seed=req.seed, numpy_random_seed=req.seed,
                                  torch_random_seed=req.seed, fewshot_random_seed=req.seed,
                                  log_samples=req.log_samples, bootstrap_iters=1000)
    seconds = time.perf_counter() - started  # on rank 0 this includes waiting for the other ranks
    leave_ranks()
    if results is None:  # not rank 0: lm-eval gathered this rank's metrics there
        return {}
    out = Path(req.out)
    if getattr(model, "schedules_run", None):  # what generate_until actually ran, per length
        estimator["schedules_run"] = [dict(zip(("gen_length", "steps", "block_length"), s))
                                      for s in sorted(model.schedules_run)]
    record = {
        "model": source, "objective": objective_of(hf_dir), "evaluator": estimator,
        "tasks": results["results"], "n_samples": results.get("n-samples", {}),
        "versions": results.get("versions", {}), "limit": req.limit, "lm_eval_version": lm_eval.__version__,
        "evaluation_seconds": round(seconds, 3),  # lm-eval's part, the model already loaded
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    out.mkdir(parents=True, exist_ok=True)
    if req.log_samples:
        _write_samples(out / SAMPLES_FILE, results.get("samples", {}))
    write_atomically(out / RESULTS_FILE, json.dumps(record, indent=2, default=str))
    return record


def _write_samples(path: Path, samples: dict) -> None:
    """One line per (task, document): its scores as the model returned them and its metrics."""
    with atomic_writer(path) as f:
        for task in sorted(samples):
            for sample in sorted(samples[task], key=lambda s: (s["doc_id"], s["filter"])):
                kept = {k: sample[k] for k in ("doc_id", "filter", "resps", "filtered_resps")}
                metrics = {m: sample.get(m) for m in sample.get("metrics", [])}
                line = {"task": task, **kept, "metrics": metrics}
                f.write(json.dumps(line, default=str) + "\n")


def _without_nproc(args: list[str]) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch_eval(req: EvalRequest, nproc: int, cli_args: list[str]) -> int:
    """`megadlm eval --nproc N`: check here (refusals exit 2 once), then run the same command in N
    torchrun workers, each scoring its share; returns the launch's exit code."""
    from megadlm.train.launch import run_local_workers

    check_request(req, nproc)
    # a worker knows it is one (LOCAL_RANK); torchrun's own parser would also take `--nproc` for an
    # abbreviation of its --nproc-per-node
    return run_local_workers(nproc, _without_nproc(cli_args))


def summary_lines(record: dict) -> list[str]:
    """One line per task: its metrics with standard errors, sample count and the estimator."""
    ev = record["evaluator"]
    how = ev["estimator"] + (f" mc_num={ev['mc_num']} seed={ev['seed']}" if ev.get("mc_num") else "")
    lines = []
    for task, metrics in record["tasks"].items():
        parts = []
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            name = key.split(",")[0]
            err = metrics.get(f"{name}_stderr,{key.split(',', 1)[1]}")
            parts.append(f"{name}={value:.4f}" + (f"±{err:.4f}" if isinstance(err, (int, float)) else ""))
        n = record["n_samples"].get(task, {}).get("effective", "?")
        lines.append(f"{task}: {' '.join(parts)} (n={n}, {how})")
    return lines


def generate_text(model_path: str, prompt: str, max_new_tokens: int | None, temperature: float, seed: int,
                  steps: int | None, block_length: int | None, remasking: str) -> str:
    """Continue `prompt` with either family; checkpoints are exported to a temporary directory."""
    import torch

    with tempfile.TemporaryDirectory(prefix="megadlm_generate_") as tmp:
        hf_dir, _ = resolve_hf_dir(model_path, Path(tmp) / "hf")
        if objective_of(hf_dir) == "mdm":
            from megadlm.evaluation.harness import MegadlmDiffusionLM

            lm = MegadlmDiffusionLM(pretrained=str(hf_dir), seed=seed, gen_length=max_new_tokens,
                                    steps=steps, block_length=block_length, temperature=temperature,
                                    remasking=remasking)
            return lm.generate(prompt)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
        max_new_tokens = max_new_tokens or max(1, model.config.max_position_embeddings // 2)
        tok = AutoTokenizer.from_pretrained(str(hf_dir))
        ids = tok(prompt or tok.eos_token, return_tensors="pt", add_special_tokens=False).input_ids
        ids = ids[:, -max(1, model.config.max_position_embeddings - max_new_tokens):]
        torch.manual_seed(seed)
        vocab = len(tok)
        banned = [[i] for i in range(vocab, model.config.vocab_size)]
        sampling = ({"do_sample": True, "temperature": temperature} if temperature > 0
                    else {"do_sample": False})
        new = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             pad_token_id=tok.eos_token_id,
                             bad_words_ids=banned or None, **sampling)[0, ids.size(1):]
        return tok.decode(new, skip_special_tokens=True)
