"""`megadlm eval` and `megadlm generate` on tiny trained checkpoints of both families, through
lm-eval's real `simple_evaluate` with the shipped local tasks (multiple choice, rolling perplexity,
generation); the MDM ELBO converges to the enumerated value on the trained model."""
import json
import math
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, megadlm_env, run_cli, snapshot
from tests.evaluation.conftest import TASKS

pytestmark = pytest.mark.slow

METRICS = {"megadlm_tiny_mc": ["acc,none", "acc_norm,none"],
           "megadlm_tiny_text": ["word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"],
           "megadlm_tiny_gen": ["exact_match,none"]}


def checkpoint(run, step=20):
    return run / "checkpoints" / f"step_{step:08d}"


def check_results(record, n_mc=12):
    for task, names in METRICS.items():
        for name in names:
            assert math.isfinite(record["tasks"][task][name]), (task, name)
    assert 0 <= record["tasks"]["megadlm_tiny_mc"]["acc,none"] <= 1
    assert record["n_samples"]["megadlm_tiny_mc"]["effective"] == n_mc
    # a byte model cannot be worse than 8 bits per byte by much nor better than 0
    assert 0 < record["tasks"]["megadlm_tiny_text"]["bits_per_byte,none"] < 12


def test_mdm_checkpoint_eval_records_estimator_and_is_reproducible(trained, local_tasks, tmp_path):
    ckpt = checkpoint(trained["mdm"])
    args = ["eval", str(ckpt), "--tasks", TASKS, "--include-path", str(local_tasks), "--mc-num", "8",
            "--gen-length", "8", "--seed", "7"]
    proc = run_cli(*args, "--out", str(tmp_path / "a"))
    record = json.loads((tmp_path / "a" / "results.json").read_text())
    check_results(record)
    assert record["objective"] == "mdm"
    ev = record["evaluator"]
    assert (ev["model_type"], ev["estimator"], ev["mc_num"], ev["seed"]) == ("megadlm_mdm", "mc_elbo", 8, 7)
    assert ev["schedules_run"] == [{"gen_length": 8, "steps": 8, "block_length": 8}]  # what generation ran
    assert record["model"]["checkpoint"] == str(ckpt.resolve())
    assert (ckpt.parent / f"{ckpt.name}.hf" / "modeling_megadlm_mdm.py").is_file()  # exported beside it
    lines = [line for line in proc.stdout.splitlines() if line.startswith("megadlm_tiny_")]
    assert len(lines) == 3 and "mc_elbo mc_num=8 seed=7" in lines[0] and "acc=" in lines[0]
    # same seed, same numbers (the export is reused); nothing is overwritten without being asked
    run_cli(*args, "--out", str(tmp_path / "b"))
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    assert again["tasks"] == record["tasks"]
    before = snapshot(tmp_path / "a")
    proc = run_cli(*args, "--out", str(tmp_path / "a"), check=False)
    assert proc.returncode == 2 and "already exists" in proc.stderr and snapshot(tmp_path / "a") == before


def run_cli_outside_git(cwd, *args: str) -> subprocess.CompletedProcess:
    """`python -m megadlm ARGS` from `cwd`, which must not be inside a git checkout (as for most users)."""
    assert subprocess.run(["git", "rev-parse"], cwd=cwd, capture_output=True).returncode != 0
    proc = subprocess.run([sys.executable, "-m", "megadlm", *args], capture_output=True, text=True,
                          timeout=600, env=megadlm_env(), cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return proc


def test_ar_run_dir_eval_uses_lm_eval_hf_model(trained, local_tasks, tmp_path):
    (tmp_path / "cwd").mkdir()
    out = tmp_path / "out"
    proc = run_cli_outside_git(tmp_path / "cwd", "eval", str(trained["ar"]), "--tasks", TASKS,
                               "--include-path", str(local_tasks), "--out", str(out), "--limit", "6")
    assert "not a git repository" not in proc.stderr  # lm-eval's commit lookup runs git quietly
    record = json.loads((out / "results.json").read_text())
    check_results(record, n_mc=6)
    assert record["objective"] == "ar" and record["evaluator"]["model_type"] == "hf"
    assert record["model"]["checkpoint"] == str(checkpoint(trained["ar"]).resolve())  # the newest one
    assert "autoregressive_exact" in proc.stdout


def test_lm_eval_scores_are_the_estimators_values(trained, local_tasks, tmp_path):
    """In-process simple_evaluate with the chain-rule estimator: every logged log-likelihood equals
    the chain rule computed directly on lm-eval's own tokenisation of the request."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from megadlm.evaluation import likelihood
    from megadlm.evaluation.harness import MegadlmDiffusionLM

    lm = MegadlmDiffusionLM(pretrained=str(trained["mdm"]), estimator="chain_rule")  # a run directory
    assert lm.source["checkpoint"] == str(checkpoint(trained["mdm"]).resolve())
    out = simple_evaluate(model=lm, tasks=["megadlm_tiny_mc"], limit=4, log_samples=True,
                          task_manager=TaskManager(include_path=str(local_tasks)))
    samples = out["samples"]["megadlm_tiny_mc"]
    assert len(samples) == 4
    for sample in samples:
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
            # (as the model's 32 positions allow)
            ctx, cont = lm._fit(*lm._encode_pair(context, continuation))
            assert len(cont) > 1  # multi-token choices: the estimator matters
            assert abs(resp[0][0] - likelihood.chain_rule(lm.lm.forward, ctx, cont, lm.lm.mask_id)) < 1e-9


def test_mc_elbo_converges_to_the_enumerated_elbo_on_the_trained_model(trained, tmp_path):
    from megadlm.evaluation import likelihood
    from megadlm.evaluation.models import load_diffusion_model, resolve_hf_dir

    hf_dir, _ = resolve_hf_dir(str(checkpoint(trained["mdm"])), tmp_path / "hf")
    m = load_diffusion_model(hf_dir)
    prompt = m.tokenizer.encode("A function definition ", add_special_tokens=False)
    cont = m.tokenizer.encode("defines", add_special_tokens=False)
    exact = likelihood.exact_elbo(m.forward, prompt, cont, m.mask_id)
    rms = {}
    for mc_num in (4, 32, 256):
        errors = torch.tensor([likelihood.mc_elbo(m.forward, prompt, cont, m.mask_id, mc_num, 128,
                                                  torch.Generator().manual_seed(s)) - exact
                               for s in range(12)])
        rms[mc_num] = errors.pow(2).mean().sqrt().item()
    assert rms[32] < rms[4] and rms[256] < rms[32] / 2, rms
    chain = likelihood.chain_rule(m.forward, prompt, cont, m.mask_id)
    assert math.isfinite(chain) and chain < 0


def test_generate_continues_the_prompt_for_both_families(trained):
    for objective in ("ar", "mdm"):
        proc = run_cli("generate", str(checkpoint(trained[objective])), "--prompt", "def f(x):",
                       "--max-new-tokens", "8")
        text = proc.stdout.rstrip("\n")
        assert text.startswith("def f(x):") and "[MASK]" not in text, text
    proc = run_cli("generate", str(checkpoint(trained["mdm"])), "--prompt", "x", "--max-new-tokens", "10",
                   "--block-length", "3", check=False)
    assert proc.returncode == 2 and "block_length 3 must divide gen_length 10" in proc.stderr


def test_two_ranks_score_every_request_as_one_rank_does(trained, local_tasks, tmp_path):
    """lm-eval splits the documents between the ranks and gathers their metrics on rank 0; the scores
    are seeded by request content, so each request scores the same on any rank."""
    args = ["eval", str(checkpoint(trained["mdm"])), "--tasks", TASKS, "--include-path", str(local_tasks),
            "--mc-num", "4", "--gen-length", "8", "--seed", "7", "--log-samples"]
    run_cli(*args, "--out", str(tmp_path / "one"))
    proc = run_cli(*args, "--out", str(tmp_path / "two"), "--nproc", "2")
    assert proc.stdout.count("wrote ") == 1 and proc.stdout.count("megadlm_tiny_mc:") == 1, proc.stdout
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert (one["evaluator"]["ranks"], two["evaluator"]["ranks"]) == (1, 2)
    assert two["n_samples"] == one["n_samples"]
    for task, metrics in one["tasks"].items():  # aggregates: the same numbers, summed in another order
        for key, value in metrics.items():
            assert (two["tasks"][task][key] == value if not isinstance(value, float)
                    else math.isclose(two["tasks"][task][key], value, rel_tol=1e-12)), (task, key)
    check_results(two)
    samples = {d: (tmp_path / d / "samples.jsonl").read_text().splitlines() for d in ("one", "two")}
    per_task = {json.loads(line)["task"] for line in samples["one"]}
    assert per_task == set(TASKS.split(",")) and len(samples["one"]) == sum(
        one["n_samples"][task]["effective"] for task in per_task)
    assert samples["two"] == samples["one"]  # every request, its scores and metrics


def test_eval_refuses_bad_input_before_writing(trained, local_tasks, tmp_path):
    cases = [
        (["eval", str(trained["mdm"]), "--tasks", "no_such_task", "--include-path", str(local_tasks)],
         "unknown lm-eval task(s) no_such_task"),
        (["eval", str(tmp_path), "--tasks", "megadlm_tiny_mc", "--include-path", str(local_tasks)],
         "is not an HF model directory"),
        (["eval", str(trained["mdm"]), "--tasks", "megadlm_tiny_mc",
          "--include-path", str(tmp_path / "nope")],
         "is not a directory of task YAML files"),
        # a checkpoint no other test exports: the refusal must come before its export
        (["eval", str(checkpoint(trained["ar"], step=10)), "--tasks", "megadlm_tiny_mc", "--include-path",
          str(local_tasks), "--nproc", "2"], "--nproc applies to MDM models"),
        (["eval", str(trained["ar"]), "--checkpoints", "best", "--tasks", "megadlm_tiny_mc", "--include-path",
          str(local_tasks)], "is marked best: the run needs checkpoint.keep_best"),
    ]
    runs_before = {objective: snapshot(run) for objective, run in trained.items()}
    for args, message in cases:
        proc = run_cli(*args, "--out", str(tmp_path / "out"), check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "out").exists()
    assert {objective: snapshot(run) for objective, run in trained.items()} == runs_before  # no export


def test_the_common_random_numbers_bench_runs_on_a_trained_model(trained, tmp_path):
    text = tmp_path / "heldout.txt"
    text.write_text("Once upon a midnight dreary, while I pondered, weak and weary. " * 20)
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "bench_eval_crn.py"), str(trained["mdm"]),
                           "--text", str(text), "--questions", "6", "--context", "8", "--choice-tokens", "4",
                           "--mc-num", "2", "--seeds", "2"], capture_output=True, text=True, timeout=600,
                          env=megadlm_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["questions"] == 6 and result["distractors"] == "perturbed"
    assert all(0 <= result[f"acc_mean_{k}"] <= 1 for k in ("independent", "shared"))


def test_the_rank_scaling_bench_runs_on_a_trained_model(trained):
    args = [str(checkpoint(trained["mdm"])), "--docs", "16", "--bytes", "24", "--mc-num", "8",
            "--rounds", "1", "--skip-one-thread"]
    proc = subprocess.run([sys.executable, "tools/bench_eval.py", *args], cwd=REPO, env=megadlm_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["requests_per_s_1rank"] > 0 and result["requests_per_s_2rank"] > 0
    assert result["scoring_rank2_speedup"] > 0 and result["bits_per_byte_rel_diff"] <= 1e-12


def test_every_checkpoint_is_scored_once_and_the_report_plots_them_by_epoch(trained, local_tasks, tmp_path):
    run = tmp_path / "run"  # the run's records, to report on; the shared trained run stays as it is
    run.mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(trained["mdm"] / name, run / name)
    out = run / "eval"
    args = ["eval", str(trained["mdm"]), "--checkpoints", "all", "--tasks", "megadlm_tiny_mc",
            "--include-path", str(local_tasks), "--mc-num", "2", "--out", str(out)]
    run_cli(*args)
    names = ["step_00000010", "step_00000020"]
    assert sorted(p.name for p in out.iterdir()) == names  # and no export left behind
    first = {name: (out / name / "results.json").read_text() for name in names}
    assert json.loads(first[names[0]])["model"]["checkpoint"] == str(checkpoint(trained["mdm"], 10).resolve())
    (out / names[1] / "results.json").unlink()  # as if that one had failed
    proc = run_cli(*args)
    assert f"{names[0]}: already scored" in proc.stdout and f"{names[1]}: megadlm_tiny_mc" in proc.stdout
    assert (out / names[0] / "results.json").read_text() == first[names[0]]
    again = json.loads((out / names[1] / "results.json").read_text())
    assert again["tasks"] == json.loads(first[names[1]])["tasks"]  # content seeds: the same scores
    run_cli("report", str(run), "--out", str(tmp_path / "report"))
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    (row,) = summary["budgets"][0]["downstream"]["rows"]
    assert (row["task"], row["metric"], row["checkpoints"]) == ("megadlm_tiny_mc", "acc_norm", [2])
    assert (tmp_path / "report" / "downstream_0.png").stat().st_size > 10_000
