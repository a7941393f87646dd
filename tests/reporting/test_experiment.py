"""`megadlm report` over real sweeps: arms pooled over seeds, overfitting onset, budgets never mixed,
downstream results per estimator."""
import json

import pytest
import yaml

from megadlm.reporting.experiment import overfit_onset
from tests.conftest import TINY, run_cli
from tests.evaluation.conftest import local_tasks, offline_hub  # noqa: F401  (fixtures)


def val(*losses):
    return [{"epoch": i + 1.0, "val_loss": v} for i, v in enumerate(losses)]


def test_overfitting_onset_is_the_best_epoch_once_the_loss_has_turned_up():
    assert overfit_onset(val(3.0, 2.5, 2.4, 2.6, 2.9)) == 3.0
    assert overfit_onset(val(3.0, 2.5, 2.4, 2.3)) is None        # still improving
    assert overfit_onset(val(3.0, 2.4, 2.401)) is None           # within tolerance of the best
    assert overfit_onset(val(3.0)) is None


def sweep(tmp_path, tiny_data, name, arms, seeds, unique_tokens, epochs):
    grid = {"name": name, "out": str(tmp_path / name), "base": "tiny_ar",
            "set": [*TINY, f"data.path={tiny_data}", f"data.unique_tokens={unique_tokens}",
                    f"data.epochs={epochs}"],
            "arms": arms, "grid": {"run.seed": seeds}, "resources": {"procs_per_node": 1}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    run_cli("sweep", str(path), "--local", "--parallel", "2")
    return tmp_path / name


@pytest.mark.slow
def test_report_pools_seeds_separates_budgets_and_estimators(tiny_data, local_tasks, tmp_path):  # noqa: F811
    main = sweep(tmp_path, tiny_data, "main",
                 {"mdm": {"objective.type": "mdm"}, "ar": {"objective.type": "ar"}},
                 [1, 2], unique_tokens=2048, epochs=4)
    other = sweep(tmp_path, tiny_data, "other", {"ar": {"objective.type": "ar"}}, [1], unique_tokens=4096,
                  epochs=2)
    for arm in ("mdm", "ar"):
        run = main / "runs" / f"{arm}-seed1"
        run_cli("eval", str(run), "--tasks", "megadlm_tiny_mc", "--include-path", str(local_tasks),
                "--limit", "4", "--mc-num", "4", "--out", str(run / "eval"))
    out = tmp_path / "report"
    proc = run_cli("report", str(main), str(other), "--out", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert [b["budget"]["unique_tokens"] for b in summary["budgets"]] == [2048, 4096]
    assert "2 different data budgets" in proc.stdout
    arms = {a["arm"]: a for a in summary["budgets"][0]["arms"]}
    assert set(arms) == {"mdm", "ar"} and arms["mdm"]["seeds"] == [1, 2] and arms["ar"]["seeds"] == [1, 2]
    assert all(len(a["overfit_onsets"]) == 2 for a in arms.values())
    assert arms["mdm"]["final_epoch"] == pytest.approx(4.0)
    assert [a["arm"] for a in summary["budgets"][1]["arms"]] == ["ar"]
    # the AR and MDM scores come from different estimators: separate columns, never one
    evals = {row["arm"]: row for row in summary["budgets"][0]["evals"]}
    mdm_col = "megadlm_tiny_mc/acc [mc_elbo mc=4]"
    ar_col = "megadlm_tiny_mc/acc [autoregressive_exact]"
    assert evals["mdm"][mdm_col] is not None and evals["mdm"][ar_col] is None
    assert evals["ar"][ar_col] is not None and evals["ar"][mdm_col] is None
    assert evals["mdm"]["eval_seeds"] == [1]  # seed 2 was not evaluated, and the table says so
    assert (out / "val_loss_0.png").stat().st_size > 10_000 and (out / "val_loss_1.png").is_file()
    text = (out / "summary.md").read_text()
    assert "| mdm | mdm | 2 |" in text and mdm_col in text and "| mdm | 1 | " in text
