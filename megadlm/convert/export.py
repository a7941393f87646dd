"""`megadlm export`: a checkpoint of any layout -> a Hugging Face model directory."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from megadlm.convert.file_modes import follow_umask
from megadlm.convert.hf import MDM_MODELING_FILE, hf_config, to_hf
from megadlm.errors import CheckpointError


def export_hf(checkpoint: str, out: str) -> dict:
    """Write config.json, model.safetensors, tokenizer files (and the MDM modeling file) to `out`,
    which must not exist; written under a temporary name and renamed when complete."""
    from safetensors.torch import save_file

    from megadlm.convert.hf_tokenizer import save_hf_tokenizer
    from megadlm.convert.weights import full_weights
    from megadlm.data.tokenizer import tokenizer_from_manifest

    if os.path.exists(out):
        raise CheckpointError(f"{out} already exists: choose a new --out (nothing was overwritten)")
    weights, manifest = full_weights(checkpoint)
    facts, config = manifest["facts"], manifest["config"]
    data_dir = Path(config["data"]["path"])
    tok = tokenizer_from_manifest(data_dir)  # the shards' tokenizer, checked against its sha256
    hf = hf_config(facts["model"], facts["objective"], facts["data"]["seq_len"], tok.eos_id, tok.mask_id)
    state = to_hf(weights, facts["model"])

    work = Path(out.rstrip("/") + ".incomplete")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    save_file(state, str(work / "model.safetensors"), metadata={"format": "pt"})
    (work / "config.json").write_text(json.dumps(hf, indent=2))
    save_hf_tokenizer(tok, work, data_dir)
    if facts["objective"] == "mdm":
        shutil.copy(Path(__file__).with_name(MDM_MODELING_FILE), work / MDM_MODELING_FILE)
    record = {"source": os.path.abspath(checkpoint), "train_state": manifest["train_state"],
              "objective": facts["objective"], "model": facts["model"], "tokenizer": tok.identity(),
              "architecture": hf["architectures"][0]}
    (work / "megadlm_export.json").write_text(json.dumps(record, indent=2))
    follow_umask(work)
    os.rename(work, out)
    return record
