"""The `megadlm` command line. Heavy libraries are imported inside each command, never at module
import, so `megadlm --help` answers instantly."""
from __future__ import annotations

import argparse
import os
import sys

from megadlm.errors import UserError


def _add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file or preset name (e.g. tiny_mdm, presets/qwen3-0.6b)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)")


def _add_sampling_arguments(p: argparse.ArgumentParser, length_flag: str) -> None:
    g = p.add_argument_group("sampling (MDM: iterative unmasking)")
    g.add_argument(length_flag, dest="gen_length", type=int,
                   help="tokens to generate (default: half the model's trained length)")
    g.add_argument("--steps", type=int, help="unmasking steps (default: one per token)")
    g.add_argument("--block-length", type=int, help="semi-autoregressive block length (default: all at once)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--remasking", choices=["low_confidence", "random"], default="low_confidence")


def _add_slurm_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Slurm resources")
    g.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    g.add_argument("--gpus-per-node", type=int, default=0,
                   help="GPUs per node = ranks per node (default 0: CPU)")
    g.add_argument("--procs-per-node", type=int, help="ranks per node on CPU nodes (default 1)")
    g.add_argument("--cpus-per-task", type=int,
                   help="CPUs for each node's launcher (default 4 per GPU or 1 per rank)")
    g.add_argument("--time", help="time limit, e.g. 2-00:00:00 or 60 (minutes)")
    g.add_argument("--partition")
    g.add_argument("--account")
    g.add_argument("--qos")
    g.add_argument("--signal-margin", type=int, default=120,
                   help="seconds before the time limit at which the run checkpoints (default 120)")
    g.add_argument("--max-restarts", type=int, default=5, help="automatic requeues per job (default 5)")
    g.add_argument("--sbatch", dest="sbatch_extra", action="append", default=[], metavar="OPTION",
                   help="another sbatch option, e.g. --sbatch=--constraint=h100 (repeatable)")
    g.add_argument("--launcher-wrapper", default="", metavar="CMD",
                   help="run each node's torchrun under CMD, e.g. 'apptainer exec --nv image.sif'")
    g.add_argument("--dry-run", action="store_true", help="print the sbatch script; write and submit nothing")


def _slurm_resources(args):
    from megadlm.slurm.submit import Resources

    return Resources(nodes=args.nodes, gpus_per_node=args.gpus_per_node, procs_per_node=args.procs_per_node,
                     cpus_per_task=args.cpus_per_task, time=args.time, partition=args.partition,
                     account=args.account, qos=args.qos, signal_margin_s=args.signal_margin,
                     max_restarts=args.max_restarts, extra=args.sbatch_extra,
                     launcher_wrapper=args.launcher_wrapper)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megadlm",
        description="Train masked-diffusion (MDM) and autoregressive (AR) language models on "
                    "megatron-core + DeepSpeed from MDS shards.")
    from megadlm import __version__

    parser.add_argument("--version", action="version", version=f"megadlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("prepare", help="tokenize text/JSONL/parquet into MDS shards with a manifest",
                       description="Tokenize documents, join them with EOS and pack fixed-length "
                                   "sequences into zstd MDS shards (train/val) plus manifest.json.")
    from megadlm.data.cli_prepare import add_prepare_arguments

    add_prepare_arguments(p)

    p = sub.add_parser("train", help="train a model from a YAML config",
                       description="Train (or resume) a run. With --nproc N > 1 the command relaunches "
                                   "itself under torchrun; `torchrun ... -m megadlm train` works too.")
    _add_config_arguments(p)
    p.add_argument("--run-dir", help="run directory (default: run.run_dir or runs/<run.name>)")
    p.add_argument("--nproc", type=int, default=1, help="processes to launch on this machine (default 1)")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--no-resume", action="store_true",
                        help="refuse to continue a run directory that already holds checkpoints")
    resume.add_argument("--resume-from", metavar="CKPT_DIR",
                        help="resume from this checkpoint directory (default: the newest complete one "
                             "in RUN_DIR/checkpoints whose checksums verify)")
    p.add_argument("--verbose", action="store_true",
                   help="also show library warnings on the console (always in RUN_DIR/logs/rank*.log)")
    p.epilog = ("SIGTERM, SIGUSR1 or a file RUN_DIR/STOP make every rank stop after the current step, "
                "save a checkpoint and exit with code 75 (run the same command again to resume). "
                "Exit code 2: bad input (nothing changed); 3: NaN/inf loss or gradient; 4: no progress "
                "within run.hang_timeout_s (stacks in RUN_DIR/logs).")

    p = sub.add_parser("config", help="print the resolved config (after extends and --set) as YAML",
                       description="Load, validate and print a config exactly as a run would use it.")
    _add_config_arguments(p)
    p.add_argument("--world-size", type=int, default=1, help="validate for this many processes")

    p = sub.add_parser("demo", help="the finding on a laptop: AR overfits a small data budget, MDM does not",
                       description="Fetch a public-domain corpus (Shakespeare), prepare byte-level shards "
                                   "and train a tiny AR, AR + token dropout and MDM model for 80 epochs over "
                                   "8 KiB of unique text, all at once as one local sweep (yaml_configs/"
                                   "sweeps/demo.yaml). Each arm's best checkpoint is scored on held-out text "
                                   "on equal terms (AR exact NLL, MDM chain rule, bits/byte); OUT/report "
                                   "gets the validation curves (best epoch and the epoch validation turned "
                                   "up marked) and tables. A few minutes on 2 CPU cores; a rerun continues "
                                   "where it stopped.")
    p.add_argument("--out", default="runs/demo", help="working directory (default runs/demo)")
    p.add_argument("--nproc", type=int, default=1, help="processes per training run (default 1)")
    p.add_argument("--offline", action="store_true",
                   help="skip the download and use Python's own pydoc topics as the corpus")
    p.add_argument("--seeds", type=int, nargs="+", default=[1], metavar="SEED",
                   help="train every arm once per seed (default 1); the report pools them")
    p.add_argument("--parallel", type=int, default=None,
                   help="runs trained at once (default 3, the grid's max_parallel)")
    p.add_argument("--epochs", type=float, default=None, help="epochs per run (default from demo config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of every demo run's config (repeatable)")

    p = sub.add_parser("plan", help="per-GPU memory, fit and step-time estimate for a cluster layout",
                       description="Estimate per-GPU memory (parameters, gradients, optimizer state by "
                                   "ZeRO stage/TP/PP, activations) and step time for CONFIG on N nodes "
                                   "x G GPUs.")
    _add_config_arguments(p)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, required=True)
    p.add_argument("--gpu-mem", type=float, default=80.0, help="GiB per GPU (default 80)")
    p.add_argument("--vocab", type=int, help="tokenizer vocabulary (default: model.vocab_size or the "
                                              "data manifest)")
    p.add_argument("--mfu", type=float, default=0.40, help="assumed MFU for the step time (default 0.40)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="per-GPU peak (default H100 bf16 989)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")

    p = sub.add_parser("reshard", help="convert a checkpoint so it resumes at another TP/PP/DP/ZeRO layout",
                       description="Write the DeepSpeed universal form of CKPT (full fp32 weights and Adam "
                                   "moments per parameter) to OUT, named for a target with --pp stages. Then "
                                   "`megadlm train CONFIG --resume-from OUT` with any parallel.tp, process "
                                   "count and parallel.zero_stage 1/2 (and that --pp).")
    p.add_argument("checkpoint",
                   help="a complete checkpoint directory, e.g. RUN_DIR/checkpoints/step_00000100")
    p.add_argument("--out", required=True, help="new directory for the universal checkpoint")
    p.add_argument("--pp", type=int, default=1,
                   help="pipeline stages of the run that will resume (default 1)")
    p.add_argument("--workers", type=int, default=1, help="converter processes (default 1)")

    p = sub.add_parser("export", help="write a checkpoint as a Hugging Face model directory",
                       description="Export CKPT (any TP/PP/DP/ZeRO 1-2 layout) to OUT: config.json, "
                                   "model.safetensors and tokenizer files. AR models load with "
                                   "AutoModelForCausalLM (Qwen3 or Llama); MDM models add "
                                   "modeling_megadlm_mdm.py (load with trust_remote_code=True).")
    p.add_argument("checkpoint",
                   help="a complete checkpoint directory, e.g. RUN_DIR/checkpoints/step_00000100")
    p.add_argument("--format", choices=["hf"], default="hf")
    p.add_argument("--out", required=True, help="new output directory")

    p = sub.add_parser("import", help="turn a Hugging Face model into weights a run starts from",
                       description="Convert HF_DIR (Qwen3/Llama, or a megadlm MDM export) to "
                                   "OUT/weights.safetensors "
                                   "(full tensors by megadlm name) and OUT/model.yaml (the matching model "
                                   "section, with model.init_from set). Any TP/PP layout can start from it, "
                                   "with either objective (e.g. AR -> MDM adaptation).")
    p.add_argument("hf_dir", help="a Hugging Face model directory with config.json and *.safetensors")
    p.add_argument("--out", required=True, help="new output directory")

    p = sub.add_parser("eval", help="run lm-eval tasks on a checkpoint, run directory or HF export",
                       description="Evaluate MODEL (a checkpoint, a run directory's newest verified "
                                   "checkpoint, or an HF export) with lm-evaluation-harness. Checkpoints "
                                   "are exported first (beside the checkpoint, or to --export-dir). MDM "
                                   "models are scored by the "
                                   "Monte-Carlo ELBO (or the exact left-to-right chain rule) and sampled by "
                                   "iterative unmasking; AR models use lm-eval's own `hf` model. Writes "
                                   "OUT/results.json recording the estimator, mc_num and seeds.")
    p.add_argument("model", help="checkpoint directory, run directory or Hugging Face export directory")
    p.add_argument("--tasks", required=True,
                   help="comma-separated lm-eval task names, or suites: paper6 = hellaswag, piqa, "
                        "social_iqa, winogrande, lambada_openai, arc_easy")
    p.add_argument("--out", required=True, help="directory for results.json")
    p.add_argument("--limit", type=float, help="examples per task (a fraction if < 1)")
    p.add_argument("--include-path", help="directory of extra task YAML files (local tasks)")
    p.add_argument("--estimator", choices=["mc_elbo", "chain_rule"], default="mc_elbo",
                   help="MDM likelihood estimator (default mc_elbo)")
    p.add_argument("--mc-num", type=int, default=128,
                   help="Monte-Carlo samples per MDM likelihood (default 128)")
    p.add_argument("--seed", type=int, default=1234,
                   help="seed of the estimator, sampler and lm-eval (default 1234)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--batch-size", type=int, default=8, help="AR batch size (default 8)")
    p.add_argument("--export-dir", help="where a checkpoint is exported (default: CKPT.hf beside it)")
    p.add_argument("--nproc", type=int, default=1,
                   help="MDM: share the requests between N local processes (torchrun; lm-eval splits and "
                        "gathers them); scores equal one process's")
    p.add_argument("--log-samples", action="store_true",
                   help="also write each request's scores and metrics to OUT/samples.jsonl")
    p.add_argument("--checkpoints", choices=["all", "best", "final"],
                   help="MODEL is a run directory: score each of its verified checkpoints (all), the one "
                        "checkpoint.keep_best marked (best) or the newest (final) into OUT/<checkpoint>/, "
                        "skipping those already scored; `megadlm report` plots them by epoch")
    _add_sampling_arguments(p, length_flag="--gen-length")

    p = sub.add_parser("generate", help="continue a prompt with an MDM or AR checkpoint or export",
                       description="Generate text after PROMPT. MDM: iterative low-confidence unmasking of "
                                   "--max-new-tokens masks; AR: greedy or sampled decoding.")
    p.add_argument("model", help="checkpoint directory, run directory or Hugging Face export directory")
    p.add_argument("--prompt", required=True)
    p.add_argument("--seed", type=int, default=0)
    _add_sampling_arguments(p, length_flag="--max-new-tokens")

    p = sub.add_parser("submit", help="submit a training run to Slurm (multi-node, auto-requeue)",
                       description="Render an sbatch script from slurm/train.sbatch (one torchrun per node, "
                                   "static rendezvous on the first node), write it and the resolved config "
                                   "into RUN_DIR/slurm/, submit it and print the job id. Before the time "
                                   "limit (--signal=B:USR1@margin) or on preemption (SIGTERM) the trainer "
                                   "checkpoints and stops; the job requeues itself and resumes, up to "
                                   "--max-restarts times.")
    _add_config_arguments(p)
    _add_slurm_arguments(p)
    p.add_argument("--run-dir", help="run directory (default: run.run_dir or runs/<run.name>)")

    p = sub.add_parser("sweep",
                       help="submit a grid of runs (objective x regulariser x budget x seed) as a job array",
                       description="Expand GRID.yaml (base config, common `set`, named `arms`, `grid` axes, "
                                   "`resources`) into one run directory per point under the sweep directory, "
                                   "with sweep.json as manifest, and submit one Slurm job array (task i = "
                                   "point i). See megadlm/slurm/sweep.py for the file format.")
    p.add_argument("grid", help="sweep YAML file")
    p.add_argument("--dry-run", action="store_true",
                   help="list the points and print the script; submit nothing")
    p.add_argument("--local", action="store_true",
                   help="no Slurm: train the points on this machine (run again to continue)")
    p.add_argument("--parallel", type=int, default=None,
                   help="with --local: points trained at once, sharing the CPU threads "
                        "(default: the grid's max_parallel, else 1)")

    p = sub.add_parser("status", help="state, step, epoch and last losses of a sweep's or a run's jobs",
                       description="Show each run of SWEEP_OR_RUN_DIR: Slurm state (scontrol/sacct), step, "
                                   "epoch, last train and validation loss, restarts, and the log of failed "
                                   "runs.")
    p.add_argument("path", help="sweep directory (sweep.json) or run directory")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")

    p = sub.add_parser("report", help="tables and plots comparing runs and sweeps (arms, budgets, evals)",
                       description="Collate runs and sweeps: validation loss vs epoch and vs tokens per arm, "
                                   "the epoch where each arm's validation loss turns up (overfitting onset), "
                                   "the best loss per arm, and downstream results (results.json from "
                                   "`megadlm eval` under a run directory) per task and estimator. Runs with "
                                   "different data budgets are "
                                   "reported separately. --out DIR writes summary.md, summary.json and PNGs; "
                                   "--out FILE.png writes the simple loss-vs-epoch picture and table.")
    p.add_argument("runs", nargs="+", help="run or sweep directories")
    p.add_argument("--out", required=True, help="output directory (or a .png path for the simple picture)")
    return parser


def _cmd_train(args) -> int:
    from megadlm.train.launch import launch_training

    return launch_training(args.config, args.overrides, args.run_dir, args.nproc, resume=not args.no_resume,
                           resume_from=args.resume_from, verbose=args.verbose)


def _cmd_config(args) -> int:
    import yaml

    from megadlm.config.loader import config_to_dict, load_config
    from megadlm.config.validate import validate_config

    cfg = load_config(args.config, args.overrides)
    validate_config(cfg, world_size=args.world_size)
    sys.stdout.write(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return 0


def _cmd_prepare(args) -> int:
    from megadlm.data.cli_prepare import run_prepare

    return run_prepare(args)


def _cmd_demo(args) -> int:
    from megadlm.demo import run_demo

    return run_demo(out=args.out, nproc=args.nproc, offline=args.offline, epochs=args.epochs,
                    overrides=args.overrides, seeds=args.seeds, parallel=args.parallel)


def _cmd_plan(args) -> int:
    import json

    from megadlm.config.loader import load_config
    from megadlm.config.validate import validate_config
    from megadlm.errors import ConfigError
    from megadlm.plan import format_plan, make_plan, plan_dict

    cfg = load_config(args.config, args.overrides)
    validate_config(cfg, world_size=args.nodes * args.gpus_per_node)
    vocab = args.vocab or cfg.model.vocab_size
    if vocab is None and cfg.data.path:
        from megadlm.data.manifest import load_manifest

        vocab = int(load_manifest(cfg.data.path)["vocab_size"])
    if vocab is None:
        raise ConfigError("the vocabulary size is unknown: pass --vocab N, set model.vocab_size, "
                          "or set data.path to prepared data")
    plan = make_plan(cfg, vocab, args.nodes, args.gpus_per_node, args.gpu_mem, args.mfu, args.peak_tflops,
                     args.precision)
    print(json.dumps(plan_dict(plan)) if args.json else format_plan(plan, args.config))
    return 0


def _cmd_report(args) -> int:
    if args.out.endswith(".png"):
        from megadlm.report import write_report

        print(write_report(args.runs, args.out))
        return 0
    from megadlm.reporting.experiment import write_experiment_report

    print(write_experiment_report(args.runs, args.out))
    print(f"wrote {os.path.join(args.out, 'summary.md')}")
    return 0


def _cmd_reshard(args) -> int:
    from megadlm.train.universal import reshard

    facts = reshard(args.checkpoint, args.out, args.pp, args.workers)
    source = facts["layout"]["source"]
    print(f"wrote {args.out}: universal checkpoint of {args.checkpoint} (tp={source['tp']} pp={source['pp']} "
          f"dp={source['dp']} zero={source['zero_stage']}) for pp={args.pp}; resume with "
          f"`megadlm train CONFIG --resume-from {args.out}`")
    return 0


def _cmd_export(args) -> int:
    from megadlm.convert.export import export_hf

    record = export_hf(args.checkpoint, args.out)
    print(f"wrote {args.out}: {record['architecture']} ({record['objective']}, step "
          f"{record['train_state']['step']})")
    return 0


def _cmd_import(args) -> int:
    from megadlm.convert.import_hf import WEIGHTS_FILE, import_hf

    facts = import_hf(args.hf_dir, args.out)
    print(f"wrote {args.out}/{WEIGHTS_FILE} ({facts['num_layers']} layers, hidden {facts['hidden_size']}) "
          f"and {args.out}/model.yaml; start a run with `--set model.init_from={args.out}/{WEIGHTS_FILE}`")
    return 0


def _cmd_eval(args) -> int:
    from megadlm.evaluation.run import EvalRequest, expand_tasks, launch_eval, run_eval, summary_lines

    generation = {k: getattr(args, k)
                  for k in ("gen_length", "steps", "block_length", "temperature", "remasking")}
    tasks = expand_tasks([t for t in args.tasks.split(",") if t])
    req = EvalRequest(model=args.model, tasks=tasks, out=args.out,
                      limit=args.limit, include_path=args.include_path, estimator=args.estimator,
                      mc_num=args.mc_num, seed=args.seed, device=args.device, batch_size=args.batch_size,
                      export_dir=args.export_dir, generation=generation, log_samples=args.log_samples)
    if args.checkpoints:
        return _eval_checkpoints(req, args)
    if args.nproc != 1 and "LOCAL_RANK" not in os.environ:  # workers run this command; rank 0 reports
        return launch_eval(req, args.nproc, args.argv)
    record = run_eval(req)
    if not record:  # a torchrun worker other than rank 0
        return 0
    for line in summary_lines(record):
        print(line)
    print(f"wrote {os.path.join(args.out, 'results.json')}")
    return 0


def _eval_checkpoints(req, args) -> int:
    from megadlm.evaluation.models import EvalError
    from megadlm.evaluation.over_training import score_checkpoints
    from megadlm.evaluation.run import summary_lines

    if args.nproc != 1:
        raise EvalError("--checkpoints runs in one process; for --nproc N, run `megadlm eval CKPT --nproc N "
                        "--out OUT/<checkpoint>` per checkpoint")
    for checkpoint, record in score_checkpoints(req, args.checkpoints):
        if record is None:
            print(f"{checkpoint.name}: already scored in {os.path.join(args.out, checkpoint.name)}")
            continue
        for line in summary_lines(record):
            print(f"{checkpoint.name}: {line}")
    print(f"wrote {args.out}/<checkpoint>/results.json")
    return 0


def _cmd_generate(args) -> int:
    import contextlib

    from megadlm.evaluation.run import generate_text

    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the text (export logs go to stderr)
        text = generate_text(args.model, args.prompt, args.gen_length, args.temperature, args.seed,
                             args.steps, args.block_length, args.remasking)
    print(args.prompt + text)
    return 0


def _cmd_submit(args) -> int:
    from megadlm.slurm.submit import submit_run

    out = submit_run(args.config, args.overrides, _slurm_resources(args), args.run_dir, args.dry_run)
    if args.dry_run:
        sys.stdout.write(out["script"])
    else:
        print(f"submitted job {out['job_id']}: {out['run_dir']} (script {out['script']})")
    return 0


def _cmd_sweep(args) -> int:
    from megadlm.slurm.sweep import submit_sweep

    out = submit_sweep(args.grid, args.dry_run, local=args.local, parallel=args.parallel)
    for p in out["points"]:
        print(f"  [{p['index']}] {p['name']}: " + " ".join(f"{k}={v}" for k, v in p["grid"].items())
              + (f" (arm {p['arm']})" if p["arm"] else ""))
    storage = [p["checkpoint_storage_bytes"] for p in out["points"]]
    if storage and None not in storage:
        print(f"checkpoint storage once every point has finished: {sum(storage) / 2**40:,.2f} TiB "
              f"({max(storage) / 2**30:,.1f} GiB for the largest point; see checkpoint.keep_last/keep_every)")
    if args.dry_run:
        sys.stdout.write(out["script"])
    elif args.local:
        failed = [name for name, code in out["local_exit_codes"].items() if code != 0]
        print(f"ran {len(out['points'])} points locally: {out['sweep_dir']}"
              + (f"; failed: {', '.join(failed)} (see `megadlm status {out['sweep_dir']}`)"
                 if failed else ""))
        return 1 if failed else 0
    else:
        print(f"submitted array job {out['job_id']} ({len(out['points'])} points): {out['sweep_dir']}")
    return 0


def _cmd_status(args) -> int:
    import json

    from megadlm.slurm.status import collect, format_rows

    rows = collect(args.path)
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
    return 0


COMMANDS = {"train": _cmd_train, "config": _cmd_config, "prepare": _cmd_prepare, "demo": _cmd_demo,
            "plan": _cmd_plan, "report": _cmd_report, "reshard": _cmd_reshard,
            "export": _cmd_export, "import": _cmd_import, "eval": _cmd_eval, "generate": _cmd_generate,
            "submit": _cmd_submit, "sweep": _cmd_sweep, "status": _cmd_status}


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a command relaunches in its workers
    if args.command is None:
        parser.print_help()
        return 2
    from megadlm.exit_status import record_exit_code

    code = 1  # an uncaught exception (its traceback follows)
    try:
        code = COMMANDS[args.command](args)
    except UserError as e:
        rank = os.environ.get("RANK", "0")
        if rank == "0" or not e.same_on_every_rank:  # an error every worker meets is said once
            where = "" if rank == "0" else f" (rank {rank})"
            print(f"megadlm {args.command}{where}: error: {e}", file=sys.stderr)
        code = e.exit_code
    finally:
        record_exit_code(code)  # for the launcher of a torchrun worker (exit_status)
    return code


if __name__ == "__main__":
    sys.exit(main())
