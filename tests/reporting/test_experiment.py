"""`megadlm report`'s logic over run directories written here: arms pooled over seeds, overfitting
onset and turn-up, budgets never mixed, downstream results per estimator, the verdict in words. The
real end to end (a real local sweep, real evaluations, the real report) is the demo's test in
tests/test_demo_and_report.py."""
import json

import pytest
import yaml

from megadlm.reporting.experiment import overfit_onset, turned_up_at, verdict_table
from tests.conftest import run_cli


def val(*losses):
    return [{"epoch": i + 1.0, "val_loss": v} for i, v in enumerate(losses)]


def test_overfitting_onset_is_the_best_epoch_once_the_loss_has_turned_up():
    assert overfit_onset(val(3.0, 2.5, 2.4, 2.6, 2.9)) == 3.0
    assert overfit_onset(val(3.0, 2.5, 2.4, 2.3)) is None        # still improving
    assert overfit_onset(val(3.0, 2.4, 2.401)) is None           # within tolerance of the best
    assert overfit_onset(val(3.0)) is None


def test_turned_up_is_the_first_epoch_after_the_best_beyond_tolerance():
    assert turned_up_at(val(3.0, 2.5, 2.4, 2.405, 2.6, 2.9)) == 5.0  # 2.405 is within 0.5% of 2.4
    assert turned_up_at(val(3.0, 2.5, 2.4, 2.3)) is None
    assert turned_up_at([]) is None


def write_run(run_dir, objective, seed, unique_tokens, losses, evals=()):
    """A run directory as a finished run leaves it: config.yaml, metrics.jsonl, eval results."""
    run_dir.mkdir(parents=True)
    config = {"objective": {"type": objective}, "run": {"seed": seed},
              "data": {"unique_tokens": unique_tokens, "epochs": len(losses), "seq_len": 32},
              "schedule": {"global_batch_size": 8, "max_steps": None}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    records = [{"kind": "start", "step": 0, "objective": objective}]
    records += [{"kind": "val", "step": 4 * (i + 1), "epoch": i + 1.0, "tokens_seen": 1024 * (i + 1),
                 "val_loss": v} for i, v in enumerate(losses)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for k, (estimator, mc_num, task, metric, value) in enumerate(evals):
        out = run_dir / "eval" / str(k)
        out.mkdir(parents=True)
        (out / "results.json").write_text(json.dumps({
            "evaluator": {"estimator": estimator, "mc_num": mc_num},
            "tasks": {task: {f"{metric},none": value, f"{metric}_stderr,none": 0.01}}}))


def write_sweep(root, name, points):
    """A sweep directory: sweep.json naming each point's arm and run directory."""
    entries = []
    for index, (arm, seed, *run) in enumerate(points):
        run_dir = root / name / "runs" / f"{arm}-seed{seed}"
        write_run(run_dir, *run)
        entries.append({"index": index, "name": run_dir.name, "arm": arm, "run_dir": str(run_dir)})
    (root / name / "sweep.json").write_text(json.dumps({"name": name, "points": entries}))
    return root / name


def test_report_pools_seeds_separates_budgets_and_estimators(tmp_path):
    mdm_eval = [("mc_elbo", 4, "tiny_mc", "acc", 0.5)]
    ar_eval = [("autoregressive_exact", None, "tiny_mc", "acc", 0.75)]
    main = write_sweep(tmp_path, "main", [
        ("mdm", 1, "mdm", 1, 2048, [3.0, 2.8, 2.7, 2.6], mdm_eval),
        ("mdm", 2, "mdm", 2, 2048, [3.1, 2.9, 2.8, 2.7]),
        ("ar", 1, "ar", 1, 2048, [2.5, 2.2, 2.4, 2.9], ar_eval),
        ("ar", 2, "ar", 2, 2048, [2.6, 2.3, 2.3, 2.5])])
    other = write_sweep(tmp_path, "other", [("ar", 1, "ar", 1, 4096, [2.5, 2.4])])
    out = tmp_path / "report"
    proc = run_cli("report", str(main), str(other), "--out", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert [b["budget"]["unique_tokens"] for b in summary["budgets"]] == [2048, 4096]
    assert "2 different data budgets" in proc.stdout
    arms = {a["arm"]: a for a in summary["budgets"][0]["arms"]}
    assert set(arms) == {"mdm", "ar"} and arms["mdm"]["seeds"] == [1, 2] and arms["ar"]["seeds"] == [1, 2]
    assert arms["ar"]["best_val"] == pytest.approx(2.25)
    assert arms["ar"]["best_val_spread"] == pytest.approx(0.1)
    assert arms["ar"]["overfit_onsets"] == [2.0, 2.0] and arms["ar"]["turned_up_at"] == [3.0, 4.0]
    assert arms["mdm"]["overfit_onsets"] == [None, None] and arms["mdm"]["final_epoch"] == pytest.approx(4.0)
    assert [a["arm"] for a in summary["budgets"][1]["arms"]] == ["ar"]
    # the AR and MDM scores come from different estimators: separate columns, never one
    evals = {row["arm"]: row for row in summary["budgets"][0]["evals"]}
    mdm_col, ar_col = "tiny_mc/acc [mc_elbo mc=4]", "tiny_mc/acc [autoregressive_exact]"
    assert evals["mdm"][mdm_col] == 0.5 and evals["mdm"][ar_col] is None
    assert evals["ar"][ar_col] == 0.75 and evals["ar"][mdm_col] is None
    assert evals["mdm"]["eval_seeds"] == [1]  # seed 2 was not evaluated, and the table says so
    assert (out / "val_loss_0.png").stat().st_size > 10_000 and (out / "val_loss_1.png").is_file()
    text = (out / "summary.md").read_text()
    assert "| mdm | mdm | 2 |" in text and mdm_col in text and "| mdm | 1 | " in text
    assert "| 2.00, 2.00 | 3.00, 4.00 |" in text  # AR's onset and turn-up, per seed


def test_the_verdict_says_in_words_what_each_arm_did(tmp_path):
    ar_eval = [("autoregressive_exact", None, "held", "bits_per_byte", 3.5)]
    mdm_eval = [("chain_rule", None, "held", "bits_per_byte", 4.25)]
    sweep = write_sweep(tmp_path, "s", [("ar", 1, "ar", 1, 2048, [2.5, 2.0, 2.4, 3.0], ar_eval),
                                        ("mdm", 1, "mdm", 1, 2048, [3.0, 2.9, 2.8, 2.79], mdm_eval)])
    lines = verdict_table([str(sweep)], "held").splitlines()
    assert lines[0] == ("ar (ar, 1 seed(s)): validation turned up in 1 of 1 seed(s), at epoch 3, after its "
                        "best at epoch 2; by epoch 4 it is +50.0% above it. Best val 2.0000, final 3.0000 "
                        "nats/token.")
    assert lines[1] == "    held-out held, best checkpoint: 3.5000 bits/byte (autoregressive_exact)"
    assert lines[2].startswith("mdm (mdm, 1 seed(s)): validation never turned up: at epoch 4 it is +0.0% "
                               "from its best (epoch 4)")
    assert lines[3] == "    held-out held, best checkpoint: 4.2500 bits/byte (chain_rule)"
