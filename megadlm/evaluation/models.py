"""Find and load the model an evaluation is about: a Hugging Face export directory, a checkpoint
(exported first) or a run directory (its newest checksum-verified checkpoint)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from megadlm.convert.hf import MDM_MODEL_TYPE
from megadlm.errors import UserError
from megadlm.rundir import CHECKPOINT_MANIFEST

MANIFEST = CHECKPOINT_MANIFEST


class EvalError(UserError):
    """A model path, task or estimator setting that `megadlm eval`/`generate` cannot use."""


def objective_of(hf_dir: str | Path) -> str:
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    return "mdm" if config.get("model_type") == MDM_MODEL_TYPE else "ar"


def find_model(path: str) -> Path:
    """The directory `path` names: an HF export, a checkpoint, or a run directory's newest checkpoint
    whose checksums verify. Writes nothing."""
    from megadlm.train import checkpoint as ckpt

    src = Path(path)
    if (src / "config.json").is_file() or (src / MANIFEST).is_file():
        return src
    if src.is_dir() and ckpt.has_checkpoints(str(src)):
        chosen = ckpt.choose(str(src))
        if chosen is None:
            raise EvalError(f"{src} has no complete checkpoint whose checksums verify")
        return Path(chosen[0])
    raise EvalError(f"{path} is not an HF model directory (config.json), a checkpoint ({MANIFEST}) "
                    f"or a run directory with checkpoints")


def model_objective(found: Path) -> str:
    """"mdm" or "ar" for what `find_model` found, read from its config or checkpoint manifest."""
    if (found / "config.json").is_file():
        return objective_of(found)
    return json.loads((found / MANIFEST).read_text())["facts"]["objective"]


def hf_dir_for(found: Path, export_to: str | Path | None = None) -> tuple[Path, dict]:
    """(an HF directory for what `find_model` found, where it came from). A checkpoint is exported to
    `export_to`, by default CKPT.hf beside it; an existing export of the same checkpoint is reused."""
    from megadlm.convert.export import export_hf

    if (found / "config.json").is_file():
        return found, {"hf_dir": str(found.resolve())}
    checkpoint = found
    export_to = Path(export_to) if export_to else checkpoint.parent / f"{checkpoint.name}.hf"
    record_file = export_to / "megadlm_export.json"
    if record_file.is_file() and json.loads(record_file.read_text())["source"] == str(checkpoint.resolve()):
        return export_to, {"checkpoint": str(checkpoint.resolve()), "hf_dir": str(export_to)}
    export_hf(str(checkpoint), str(export_to))
    return export_to, {"checkpoint": str(checkpoint.resolve()), "hf_dir": str(export_to.resolve())}


def resolve_hf_dir(path: str, export_to: str | Path | None = None) -> tuple[Path, dict]:
    """`hf_dir_for(find_model(path), export_to)`: an HF directory for any model path."""
    return hf_dir_for(find_model(path), export_to)


@dataclass
class DiffusionModel:
    """An exported MDM, loaded for scoring and sampling on one device."""

    model: torch.nn.Module
    tokenizer: object  # transformers.PreTrainedTokenizerFast
    mask_id: int
    eos_id: int
    max_length: int
    device: torch.device

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids.to(self.device)).logits.float().cpu()

    @property
    def banned_ids(self) -> list[int]:
        """Ids a sampler must not produce: [MASK] and the vocabulary padding beyond the tokenizer."""
        return [self.mask_id, *range(len(self.tokenizer), self.model.config.vocab_size)]


def load_diffusion_model(hf_dir: str | Path, device: str = "cpu", dtype: str = "float32") -> DiffusionModel:
    from transformers import AutoModel, AutoTokenizer

    if objective_of(hf_dir) != "mdm":
        raise EvalError(f"{hf_dir} holds an AR model; the diffusion evaluator needs an MDM export")
    model = AutoModel.from_pretrained(str(hf_dir), trust_remote_code=True, dtype=getattr(torch, dtype))
    model.to(device).eval()
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    config = model.config
    return DiffusionModel(model=model, tokenizer=tok, mask_id=int(config.mask_token_id),
                          eos_id=int(config.eos_token_id), max_length=int(config.max_position_embeddings),
                          device=torch.device(device))

