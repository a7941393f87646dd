"""The `prepare` argparse hook and its summary."""

from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path

import pytest

from megadlm.data.cli_prepare import add_prepare_arguments, main, run_prepare
from megadlm.data.prepare import PrepareProgress


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_prepare_arguments(p)
    return p


def test_defaults() -> None:
    a = _parser().parse_args(["--input", "a", "b", "--out", "o"])
    assert (a.input, a.out, a.tokenizer, a.seq_len, a.val_fraction) == (["a", "b"], "o", "bytes", 128, 0.0)
    assert ((a.val_input, a.max_tokens, a.train_bpe, a.overwrite, a.no_progress)
            == ([], None, None, False, False))
    assert a.skip_bad_documents is False and _parser().parse_args(
        ["--input", "a", "--out", "o", "--skip-bad-documents"]).skip_bad_documents is True
    with pytest.raises(SystemExit):
        _parser().parse_args(["--out", "o"])  # --input is required


def test_run_prepare_prints_summary(small_pydoc_dir: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = _parser().parse_args(["--input", str(small_pydoc_dir), "--out", str(out), "--seq-len", "32",
                                 "--val-fraction", "0.2", "--no-progress"])
    assert run_prepare(args) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "train" in text and "val" in text and "vocab 258" in text
    manifest = json.loads((out / "manifest.json").read_text())
    tokens = sum(split["tokens"] for split in manifest["splits"].values())
    assert manifest["prepare_seconds"] > 0
    assert re.search(rf"  {tokens:,} tokens in [0-9.]+ s \([0-9,]+ tokens/s\)", text), text


def test_progress_counts_input_bytes_and_tokens_with_their_rates() -> None:
    shown = io.StringIO()
    with PrepareProgress(total_bytes=3000, enabled=True, file=shown) as bar:
        bar.POSTFIX_EVERY_S = 0.0
        for _ in range(3):
            bar.update(nbytes=1000, ntokens=250)
    assert bar.tokens == 750 and bar.bar.n == 3000
    final = shown.getvalue().split("\r")[-1]
    assert "100%" in final and "B/s" in final and "750 tokens" in final and "tokens/s" in final
    hidden = io.StringIO()
    with PrepareProgress(total_bytes=10, enabled=False, file=hidden) as bar:
        bar.update(10, 5)
    assert hidden.getvalue() == "" and bar.tokens == 5


def test_main_prints_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--input", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
