"""The demo end to end (offline corpus) and the simple report."""
import json
import re
from pathlib import Path

import pytest

from megadlm.errors import UserError
from megadlm.rundir import best_checkpoint
from tests.conftest import run_cli, train_records


@pytest.mark.slow
@pytest.mark.longest
def test_the_demo_shows_ar_overfitting_and_mdm_not_for_two_seeds(tmp_path):
    """The demo's own budget, as a user runs it (offline corpus), for two seeds: AR's validation turns
    up, MDM's does not, each arm's best checkpoint is scored on held-out text, and it fits its time."""
    out = tmp_path / "demo"
    proc = run_cli("demo", "--offline", "--out", str(out), "--seeds", "1", "2", timeout=1800)
    assert "pydoc" in proc.stdout  # the offline corpus was used and named
    seconds = float(re.search(r"\[demo\] finished in (\d+) s", proc.stdout).group(1))
    assert seconds <= 600 * 2  # the demo (one seed) takes at most 10 minutes: two take at most twice that
    for seed in (1, 2):
        runs = out / "sweep" / "runs"
        ar = [r["val_loss"] for r in train_records(runs / f"ar-seed{seed}", "val")]
        mdm = [r["val_loss"] for r in train_records(runs / f"mdm-seed{seed}", "val")]
        assert len(ar) == len(mdm) == 20  # every 4 epochs of 80
        assert ar[-1] > 1.2 * min(ar), ar  # AR overfits: its validation loss has turned up by 20% or more
        assert mdm[-1] <= 1.01 * min(mdm), mdm  # MDM does not: it ends within 1% of its best
        for arm, val in (("ar", ar), ("mdm", mdm)):
            run = runs / f"{arm}-seed{seed}"
            best_path, mark = best_checkpoint(str(run))  # kept beyond keep_last=1 for the held-out score
            val_records = train_records(run, "val")
            assert mark["value"] == min(val) and mark["step"] == val_records[val.index(min(val))]["step"]
            scored = json.loads((run / "eval" / "best" / "results.json").read_text())
            assert scored["model"]["checkpoint"] == str(Path(best_path).resolve())
            expected = "chain_rule" if arm == "mdm" else "autoregressive_exact"
            assert scored["evaluator"]["estimator"] == expected
    report = out / "report"
    assert (report / "val_loss_0.png").stat().st_size > 10_000
    arms = {a["arm"]: a for a in json.loads((report / "summary.json").read_text())["budgets"][0]["arms"]}
    assert set(arms) == {"ar", "ar_tokdrop0.3", "mdm"} and arms["mdm"]["seeds"] == [1, 2]
    assert arms["mdm"]["turned_up_at"] == [None, None] and None not in arms["ar"]["turned_up_at"]
    assert "mdm (mdm, 2 seed(s)): validation never turned up" in proc.stdout
    assert "ar (ar, 2 seed(s)): validation turned up in 2 of 2 seed(s)" in proc.stdout
    assert proc.stdout.count("bits/byte (chain_rule)") == 1
    assert proc.stdout.count("bits/byte (autoregressive_exact)") == 2


def test_a_demo_directory_of_other_settings_is_refused_before_anything_runs(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "sweep.yaml").write_text("# made by `megadlm demo`; corpus: another\nname: demo\n")
    proc = run_cli("demo", "--offline", "--out", str(out), "--seeds", "3", check=False)
    assert proc.returncode == 2 and "already holds a demo with other settings" in proc.stderr
    assert (out / "sweep.yaml").read_text().endswith("name: demo\n")
    assert not (out / "data").exists() and not (out / "sweep").exists()


def _write_run(path, objective, val_losses):
    path.mkdir(parents=True)
    recs = [{"kind": "start", "step": 0, "objective": objective}]
    for i, v in enumerate(val_losses, 1):
        recs.append({"kind": "train", "step": i * 10, "epoch": float(i), "loss": v + 0.1})
        recs.append({"kind": "val", "step": i * 10, "epoch": float(i), "val_loss": v,
                     "val_bits_per_byte": v / 0.69})
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")


def test_report_table_and_plot(tmp_path):
    from megadlm.report import write_report

    _write_run(tmp_path / "ar", "ar", [3.0, 2.5, 2.6, 2.8])
    _write_run(tmp_path / "mdm", "mdm", [3.5, 3.0, 2.7, 2.6])
    table = write_report([str(tmp_path / "ar"), str(tmp_path / "mdm")], str(tmp_path / "r.png"))
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:4]}
    assert rows["ar"][3:6] == ["2.8000", "2.5000", "2.00"]  # final, best and the epoch of the best
    assert rows["mdm"][3:6] == ["2.6000", "2.6000", "4.00"]
    assert (tmp_path / "r.png").stat().st_size > 10_000


def test_report_refuses_runs_without_validation(tmp_path):
    from megadlm.report import write_report

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "epoch": 0.1, "loss": 3}\n')
    with pytest.raises(UserError, match="no validation records"):
        write_report([str(tmp_path / "r")], str(tmp_path / "x.png"))
