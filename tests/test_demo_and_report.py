"""The demo end to end (offline corpus, shrunk through --set) and the report it writes."""
import json

import pytest

from megadlm.errors import UserError
from tests.conftest import TINY, run_cli, sets


@pytest.mark.slow
def test_demo_offline_trains_ar_and_mdm_and_writes_report(tmp_path):
    out = tmp_path / "demo"
    overrides = [o for o in TINY if not o.startswith("data.val_max_samples")]
    proc = run_cli("demo", "--offline", "--out", str(out), "--nproc", "2", "--epochs", "2",
                   *sets(*overrides, "data.unique_tokens=4096", "data.val_max_samples=16"))
    assert "pydoc" in proc.stdout  # the offline corpus was used and named
    png = out / "report.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for objective in ("ar", "mdm"):
        recs = [json.loads(x) for x in (out / objective / "metrics.jsonl").read_text().splitlines()]
        val = [r for r in recs if r["kind"] == "val"]
        assert [round(r["epoch"], 6) for r in val] == [1.0, 2.0]  # one validation per epoch
        assert next(r for r in recs if r["kind"] == "start")["objective"] == objective
        assert f"{objective} ({objective})" in proc.stdout  # its row in the printed table


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
