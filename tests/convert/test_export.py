"""HF export from a TP2xPP2 (AR) and a TP2 (MDM) checkpoint: standard transformers loading, logits
equal to megadlm's own forward pass, bidirectional attention for MDM, the byte tokenizer as HF files."""
import json
import os
import stat

import pytest
import torch

from tests.conftest import TINY, run_cli, sets

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    out = {}
    for objective, pp in (("ar", 2), ("mdm", 1)):  # pipeline stages and TP shards are merged alike
        run = root / objective
        run_cli("train", f"tiny_{objective}", "--run-dir", str(run),
                *sets(*TINY, f"data.path={tiny_data}", "schedule.max_steps=3", "parallel.tp=2",
                      f"parallel.pp={pp}"),
                nproc=2 * pp)
        ckpt = run / "checkpoints" / "step_00000003"
        hf_dir = root / f"{objective}_hf"
        proc = run_cli("export", str(ckpt), "--out", str(hf_dir))
        assert f"wrote {hf_dir}" in proc.stdout
        out[objective] = (ckpt, hf_dir)
    return out


def reference(ckpt):
    from megadlm.convert.reference import load_reference_model
    from megadlm.convert.weights import full_weights

    weights, manifest = full_weights(str(ckpt))
    return load_reference_model(weights, manifest["config"], manifest["facts"]["model"]["padded_vocab_size"])


def ids(seed=0):
    return torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("objective", ["ar", "mdm"])
def test_exported_logits_equal_megadlm(single_rank_groups, exported, objective):
    from transformers import AutoModel, AutoModelForCausalLM

    from megadlm.convert.reference import reference_logits

    ckpt, hf_dir = exported[objective]
    if objective == "ar":  # a standard architecture: no remote code
        hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
        assert type(hf).__name__ == "Qwen3ForCausalLM"
    else:
        hf = AutoModel.from_pretrained(hf_dir, trust_remote_code=True, dtype=torch.float32)
        assert type(hf).__name__ == "MegadlmMDMForMaskedDiffusion" and hf.config.mask_token_id == 257
    x = ids()
    ours = reference_logits(reference(ckpt), x)
    with torch.no_grad():
        theirs = hf(input_ids=x).logits
        assert (ours - theirs).abs().max().item() <= 1e-4
        # attention direction: changing the last token reaches position 0 only in the MDM
        y = x.clone()
        y[:, -1] = (y[:, -1] + 1) % 256
        moved = (hf(input_ids=y).logits[:, 0] - theirs[:, 0]).abs().max().item()
    assert (moved > 1e-6) if objective == "mdm" else (moved == 0.0)


def test_tokenizer_files_reproduce_the_byte_tokenizer(exported):
    from transformers import AutoTokenizer

    from megadlm.data.tokenizer import ByteTokenizer

    tok = AutoTokenizer.from_pretrained(exported["ar"][1])
    text = "To be, or not to be — ça va?\n"
    assert tok.encode(text, add_special_tokens=False) == ByteTokenizer().encode(text)
    assert tok.decode(ByteTokenizer().encode(text)) == text
    assert (tok.eos_token_id, tok.mask_token_id) == (256, 257)
    record = json.loads((exported["ar"][1] / "megadlm_export.json").read_text())
    assert record["train_state"]["step"] == 3 and record["architecture"] == "Qwen3ForCausalLM"


def test_export_never_overwrites(exported, tmp_path):
    ckpt, hf_dir = exported["ar"]
    before = sorted(p.name for p in hf_dir.iterdir())
    proc = run_cli("export", str(ckpt), "--out", str(hf_dir), check=False)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert sorted(p.name for p in hf_dir.iterdir()) == before


def test_import_of_an_export_is_exact(exported, tmp_path):
    from safetensors.torch import load_file

    from megadlm.convert.weights import full_weights

    ckpt, hf_dir = exported["ar"]
    out = tmp_path / "imported"
    proc = run_cli("import", str(hf_dir), "--out", str(out))
    assert "model.init_from=" in proc.stdout and (out / "model.yaml").is_file()
    original, _ = full_weights(str(ckpt))
    imported = load_file(str(out / "weights.safetensors"))
    assert sorted(imported) == sorted(original)
    assert all(torch.equal(imported[k], original[k]) for k in original)


def test_runs_start_from_imported_weights_in_any_layout(tiny_data, exported, tmp_path):
    from tests.conftest import train_records

    out = tmp_path / "imported"
    run_cli("import", str(exported["ar"][1]), "--out", str(out))
    start = f"model.init_from={out / 'weights.safetensors'}"

    def first_loss(name, config, *extra, nproc=0):
        run_cli("train", config, "--run-dir", str(tmp_path / name),
                *sets(*TINY, f"data.path={tiny_data}", "schedule.max_steps=1", *extra), nproc=nproc)
        return train_records(tmp_path / name)[0]["loss"]

    one = first_loss("one", "tiny_ar", start)
    tp2 = first_loss("tp2", "tiny_ar", start, "parallel.tp=2", nproc=2)
    fresh = train_records(exported["ar"][0].parents[1])[0]["loss"]  # the exported run's own first step
    assert abs(one - tp2) <= 1e-6 and abs(one - fresh) > 1e-2  # the trained weights, sliced for TP
    first_loss("ar_to_mdm", "tiny_mdm", start)  # AR -> MDM adaptation starts from the same weights
    proc = run_cli("train", "tiny_ar", "--run-dir", str(tmp_path / "bad"),
                   *sets(*TINY, f"data.path={tiny_data}", start, "model.hidden_size=128"), check=False)
    assert (proc.returncode == 2 and "does not fit this model" in proc.stderr
            and "hidden_size=128" in proc.stderr)


def test_exported_and_imported_files_follow_the_umask(exported, tmp_path):
    ckpt, _ = exported["mdm"]  # the MDM export also has the modeling file
    saved = os.umask(0o027)  # inherited by the CLI processes; not 022, so 0644 cannot pass by chance
    try:
        run_cli("export", str(ckpt), "--out", str(tmp_path / "hf"))
        run_cli("import", str(tmp_path / "hf"), "--out", str(tmp_path / "imported"))
    finally:
        os.umask(saved)
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    for name in ("hf/model.safetensors", "hf/config.json", "hf/tokenizer.json", "hf/modeling_megadlm_mdm.py",
                 "imported/weights.safetensors", "imported/model.yaml"):
        assert modes[name] == 0o640, (name, oct(modes[name]))
    assert all(mode == (0o750 if (tmp_path / name).is_dir() else 0o640)
               for name, mode in modes.items()), modes  # nothing else written differs either
