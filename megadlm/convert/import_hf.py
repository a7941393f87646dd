"""`megadlm import`: a Hugging Face Qwen3/Llama (or megadlm MDM) directory -> a weights file a run
starts from (`model.init_from`), plus the model section of a config that fits it.

The file holds full tensors under GPTModel names; every TP/PP layout slices them at start-up like
its random initialisation, so one import serves any layout. A common use: adapt a pretrained AR
model to the MDM objective.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from megadlm.convert.file_modes import follow_umask
from megadlm.convert.hf import ConversionError, from_hf, model_facts_from_hf
from megadlm.errors import UserError

WEIGHTS_FILE = "weights.safetensors"
MODEL_KEY = "megadlm_model"


def read_hf_state(hf_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"{hf_dir} has no *.safetensors weights (pytorch_model.bin is not read: "
                              f"re-save the model with safe_serialization=True)")
    state = {}
    for path in files:
        state.update(load_file(str(path)))
    return state


def import_hf(hf_dir: str, out: str) -> dict:
    """Write OUT/weights.safetensors and OUT/model.yaml; returns the model facts."""
    from safetensors.torch import save_file

    src = Path(hf_dir)
    if not (src / "config.json").is_file():
        raise ConversionError(f"{src} has no config.json: is it a Hugging Face model directory?")
    if os.path.exists(out):
        raise UserError(f"{out} already exists: choose a new --out (nothing was overwritten)")
    config = json.loads((src / "config.json").read_text())
    facts = model_facts_from_hf(config)
    weights = from_hf(read_hf_state(src), facts)
    work = Path(out.rstrip("/") + ".incomplete")
    work.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(work / WEIGHTS_FILE), metadata={MODEL_KEY: json.dumps(facts)})
    model_yaml = {k: v for k, v in facts.items() if k != "padded_vocab_size"}
    model_yaml["init_from"] = os.path.abspath(os.path.join(out, WEIGHTS_FILE))
    lines = ["# megadlm import of " + os.path.abspath(hf_dir) + "; extend a config with this model section",
             "model:"] + [f"  {k}: {json.dumps(v)}" for k, v in model_yaml.items()]
    lines.append(f"  # the HF vocabulary was {facts['padded_vocab_size']} "
                 f"(data must use a tokenizer that fits)")
    (work / "model.yaml").write_text("\n".join(lines) + "\n")
    follow_umask(work)
    os.rename(work, out)
    return facts


def check_init_from(path: str, model_facts: dict) -> None:
    """The weights file must exist and be for this model shape (before any process starts)."""
    from safetensors import safe_open

    from megadlm.errors import ConfigError

    if not os.path.isfile(path):
        raise ConfigError(f"model.init_from={path} does not exist: run `megadlm import HF_DIR --out DIR` "
                          f"and point model.init_from at DIR/{WEIGHTS_FILE}")
    with safe_open(path, framework="pt") as f:
        saved = json.loads((f.metadata() or {}).get(MODEL_KEY, "null") or "null")
    if saved is None:
        raise ConfigError(f"model.init_from={path} was not written by `megadlm import`")
    diffs = [f"model.{k}={model_facts.get(k)!r} but the weights have {saved[k]!r}"
             for k in sorted(saved) if model_facts.get(k) != saved[k]]
    if diffs:
        raise ConfigError(f"model.init_from={path} does not fit this model: " + "; ".join(diffs))
