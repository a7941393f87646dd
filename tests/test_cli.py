"""The `megadlm` command line as a user meets it: fast help, one clear error per bad input,
non-zero exits, nothing overwritten."""
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY, megadlm_env, run_cli, sets

COMMANDS = ["prepare", "train", "config", "demo", "plan", "report", "reshard", "export", "import", "eval",
            "generate", "submit", "sweep", "status"]


def test_help_is_fast_and_imports_no_torch():
    code = ("import sys, contextlib, io\n"
            "from megadlm.cli import main\n"
            "for cmd in [[], " + ", ".join(f"['{c}']" for c in COMMANDS) + "]:\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "        try: main(cmd + ['--help'])\n"
            "        except SystemExit: pass\n"
            "    assert 'usage: megadlm' in out.getvalue(), cmd\n"
            "heavy = [m for m in ('torch', 'deepspeed', 'megatron', 'streaming', 'wandb') "
            "if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=megadlm_env(), cwd=REPO, timeout=60)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    proc = run_cli(command, "--help")
    assert f"usage: megadlm {command}" in proc.stdout


def test_config_prints_the_resolved_config():
    proc = run_cli("config", "tiny_ar", *sets("optim.lr=0.005", "objective.token_dropout=uniform"))
    assert ("type: ar" in proc.stdout and "lr: 0.005" in proc.stdout
            and "token_dropout: uniform" in proc.stdout)
    assert "num_layers: 6" in proc.stdout  # inherited from presets/tiny.yaml through extends


def error_of(*args) -> str:
    proc = run_cli(*args, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def test_bad_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  num_layers: [1, 2\n")
    msg = error_of("train", str(bad))
    assert "bad.yaml" in msg and "line" in msg


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("extends: tiny_ar\nmodel:\n  hiden_size: 64\n")
    msg = error_of("train", str(cfg))
    assert "model.hiden_size" in msg and "typo.yaml" in msg and "hidden_size" in msg


def test_wrong_type_from_set():
    msg = error_of("config", "tiny_ar", "--set", "model.num_layers=two")
    assert "model.num_layers" in msg and "--set" in msg


def test_sizes_that_do_not_divide_fail_before_any_process_starts(tiny_data):
    msg = error_of("train", "tiny_ar", "--nproc", "2", *sets(f"data.path={tiny_data}", "parallel.tp=3"))
    assert "parallel.tp" in msg
    msg = error_of("train", "tiny_ar", "--nproc", "2",
                   *sets(f"data.path={tiny_data}", "schedule.global_batch_size=6",
                         "schedule.micro_batch_size=4"))
    assert "global_batch_size" in msg


def test_missing_data_directory(tmp_path):
    msg = error_of("train", "tiny_ar", *sets(f"data.path={tmp_path / 'nope'}"))
    assert "manifest.json" in msg and "nope" in msg


def test_sequence_length_must_match_the_shards(tiny_data, tmp_path):
    msg = error_of("train", "tiny_ar", "--run-dir", str(tmp_path / "r"),
                   *sets(f"data.path={tiny_data}", "data.seq_len=64"))
    assert "data.seq_len=64" in msg and "32" in msg
    assert not (tmp_path / "r").exists()  # nothing created for a refused run


def test_model_vocab_smaller_than_the_tokenizer(tiny_data, tmp_path):
    msg = error_of("train", "tiny_ar", "--run-dir", str(tmp_path / "r"),
                   *sets(*TINY, f"data.path={tiny_data}", "model.vocab_size=200"))
    assert "vocab" in msg and "258" in msg


def test_prepare_missing_input_and_empty_corpus(tmp_path):
    msg = error_of("prepare", "--input", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o"))
    assert "missing.txt" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("   \n")
    msg = error_of("prepare", "--input", str(empty), "--out", str(tmp_path / "o2"))
    assert "empty" in msg.lower() or "no non-empty" in msg.lower()
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()


def test_prepare_refuses_to_overwrite(tiny_data):
    before = (tiny_data / "manifest.json").read_text()
    msg = error_of("prepare", "--input", str(tiny_data.parent / "corpus"), "--out", str(tiny_data))
    assert "--overwrite" in msg
    assert (tiny_data / "manifest.json").read_text() == before


def test_tokenizer_does_not_match_manifest(tmp_path):
    from megadlm.data.corpus import write_pydoc_corpus
    from megadlm.data.prepare import prepare
    from megadlm.data.tokenizer import train_bpe

    corpus = write_pydoc_corpus(tmp_path / "corpus")
    texts = [p.read_text() for p in sorted(corpus.glob("*.txt"))[:40]]
    train_bpe(texts, 300, tmp_path / "tok.json")
    data = tmp_path / "data"
    prepare([str(corpus)], str(data), tokenizer=str(tmp_path / "tok.json"), seq_len=32, progress=False,
            max_tokens=20_000)
    train_bpe(texts[:10], 280, data / "tokenizer.json")  # someone swapped the tokenizer file
    msg = error_of("train", "tiny_ar", "--run-dir", str(tmp_path / "r"), *sets(*TINY, f"data.path={data}"))
    assert "tokenizer" in msg and "manifest" in msg
