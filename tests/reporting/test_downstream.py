"""Downstream scores over training in `megadlm report`: every evaluated checkpoint by epoch, and per arm
the score at best-by-validation, at the final checkpoint and the best over checkpoints."""
import json

import pytest
import yaml

from megadlm.reporting.downstream import score_of
from megadlm.reporting.experiment import write_experiment_report

STEPS = [4, 8, 12, 16]  # one epoch every 4 steps


def write_run(run_dir, objective, seed, val_losses, scores, estimator):
    """A finished run with a results.json per checkpoint, as `megadlm eval CKPT --out RUN/eval/step_N`
    leaves them. scores: task -> {metric: [value per step]}."""
    run_dir.mkdir(parents=True)
    config = {"objective": {"type": objective}, "run": {"seed": seed},
              "data": {"unique_tokens": 2048, "epochs": 4, "seq_len": 32},
              "schedule": {"global_batch_size": 8, "max_steps": None}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    records = [{"kind": "start", "step": 0, "objective": objective}]
    for i, step in enumerate(STEPS):
        records += [{"kind": "train", "step": step, "epoch": i + 1.0, "loss": 3.0},
                    {"kind": "val", "step": step, "epoch": i + 1.0, "tokens_seen": 256 * step,
                     "val_loss": val_losses[i]}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for i, step in enumerate(STEPS):
        out = run_dir / "eval" / f"step_{step:08d}"
        out.mkdir(parents=True)
        tasks = {task: {f"{m},none": values[i] for m, values in metrics.items()} | {"alias": task}
                 for task, metrics in scores.items()}
        (out / "results.json").write_text(json.dumps({
            "model": {"checkpoint": str(run_dir / "checkpoints" / f"step_{step:08d}"), "hf_dir": "x"},
            "evaluator": estimator, "tasks": tasks}))


def test_scores_by_checkpoint_are_summarised_at_best_val_final_and_best(tmp_path):
    ar = {"estimator": "autoregressive_exact", "mc_num": None}
    mdm = {"estimator": "mc_elbo", "mc_num": 4}
    ar_val = [2.5, 2.2, 2.4, 2.9]  # best at step 8 (epoch 2), then overfits
    runs = tmp_path / "runs"
    write_run(runs / "ar", "ar", 1, ar_val, {"task_a": {"acc_norm": [.30, .40, .45, .35], "acc": [0] * 4},
                                             "task_b": {"acc": [.50, .60, .55, .52]}}, ar)
    write_run(runs / "mdm", "mdm", 1, [3.0, 2.8, 2.7, 2.6], {"task_a": {"acc_norm": [.20, .25, .30, .35]},
                                                             "task_b": {"acc": [.40, .42, .44, .46]}}, mdm)
    # an HF export scored once: no checkpoint step, so not part of the curves
    (runs / "ar" / "eval" / "export").mkdir()
    (runs / "ar" / "eval" / "export" / "results.json").write_text(json.dumps(
        {"model": {"hf_dir": "/somewhere"}, "evaluator": ar, "tasks": {"task_a": {"acc_norm,none": 0.99}}}))
    report = tmp_path / "report"
    text = write_experiment_report([str(runs / "ar"), str(runs / "mdm")], str(report))
    summary = json.loads((report / "summary.json").read_text())["budgets"][0]
    got = {(r["arm"], r["task"]): r for r in summary["downstream"]["rows"]}
    a = got[("ar", "task_a")]
    assert a["metric"] == "acc_norm"  # preferred over acc
    assert (a["at_best_val"], a["at_final"], a["best"], a["best_epoch"]) == (.40, .35, .45, 3.0)
    assert a["checkpoints"] == [4]  # the export is not a checkpoint
    average = got[("ar", "average")]
    assert average["at_best_val"] == pytest.approx(.50) and average["at_final"] == pytest.approx(.435)
    m = got[("mdm", "average")]
    assert m["estimator"] == "mc_elbo mc=4"
    assert m["at_best_val"] == m["at_final"] == m["best"] == pytest.approx(.405)  # best val is the last
    assert (report / "downstream_0.png").stat().st_size > 10_000
    row = "| ar | task_a | acc_norm [autoregressive_exact] | 1 | 4 | 0.4000 | 0.3500 | 0.4500 | 3.00 |"
    assert row in text
    # the one-number table takes each run's latest checkpoint, not a mean over its checkpoints
    evals = {r["arm"]: r for r in summary["evals"]}
    assert evals["mdm"]["task_a/acc_norm [mc_elbo mc=4]"] == pytest.approx(.35)


def test_pooled_seeds_average_each_summary(tmp_path):
    ar = {"estimator": "autoregressive_exact", "mc_num": None}
    for seed, shift in ((1, 0.0), (2, 0.1)):
        write_run(tmp_path / "sweep" / "runs" / f"ar-seed{seed}", "ar", seed, [2.5, 2.2, 2.4, 2.9],
                  {"task_a": {"acc": [.30 + shift, .40 + shift, .45 + shift, .35 + shift]}}, ar)
    runs = tmp_path / "sweep" / "runs"
    points = [{"index": i, "name": f"ar-seed{s}", "arm": "ar", "run_dir": str(runs / f"ar-seed{s}")}
              for i, s in enumerate((1, 2))]
    (tmp_path / "sweep" / "sweep.json").write_text(json.dumps({"name": "s", "points": points}))
    write_experiment_report([str(tmp_path / "sweep")], str(tmp_path / "report"))
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())["budgets"][0]
    (row,) = summary["downstream"]["rows"]
    assert row["seeds"] == [1, 2] and row["checkpoints"] == [4, 4]
    assert (row["at_best_val"], row["at_final"], row["best"]) == pytest.approx((.45, .40, .50))


def test_the_score_is_the_first_metric_a_task_reports_in_order():
    reported = {"acc,none": .5, "acc_norm,none": .6, "acc_norm_stderr,none": .01}
    assert score_of(reported) == ("acc_norm", .6, True)
    assert score_of({"bits_per_byte,none": 3.2, "word_perplexity,none": 9.0}) == ("bits_per_byte", 3.2, False)
    assert score_of({"alias": "x", "word_perplexity,none": 9.0}) is None
