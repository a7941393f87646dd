"""Every check of a run that needs no process group, done before any process starts: the run
directory, the config against the data manifest, the tokenizer, imported weights, the shards.
`megadlm train` (before it launches workers), `megadlm submit` and `megadlm sweep` (before they
write or submit anything) and each worker run the same checks. Torch-free.

The caller's config is never changed: the data directory a run reads (a local cache when the
data only lives on an object store) comes back in `Preflight.data_path`.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from megadlm.config.loader import config_to_dict
from megadlm.config.schema import Config
from megadlm.config.validate import padded_vocab_size, validate_config
from megadlm.errors import ConfigError, RunDirError

# Set by a launcher for the workers it starts once it has verified that data directory's shards.
VERIFIED_ENV = "MEGADLM_SHARDS_VERIFIED"

# Model fields that do not change what a checkpoint holds (or may change between resumes).
_NOT_SHAPE = ("init_std", "activation_checkpointing", "make_vocab_size_divisible_by", "vocab_size",
              "init_from")


@dataclass
class RunFacts:
    """What a checkpoint was trained as; a resume must agree (`checkpoint.compatibility_problems`)."""

    objective: str
    model: dict
    layout: dict  # tp, pp, dp, zero_stage
    data: dict = field(default_factory=dict)  # seq_len, tokenizer


@dataclass
class Preflight:
    """What the checks found: the manifest of the data, where it is read from, the padded
    vocabulary and the facts a checkpoint of this run records."""

    manifest: dict
    data_path: str
    padded_vocab_size: int
    facts: RunFacts


def check_run_dir(run_dir: str) -> None:
    """The run directory must be a writable directory, or not exist yet under a writable parent."""
    existing = run_dir
    while not os.path.exists(existing):
        existing = os.path.dirname(existing) or "."
    if not os.path.isdir(existing):
        raise RunDirError(f"run directory {run_dir}: {existing} exists and is not a directory; "
                          f"choose another --run-dir")
    if not os.access(existing, os.R_OK | os.W_OK | os.X_OK):
        raise RunDirError(f"run directory {run_dir}: {existing} is not readable and writable by this user; "
                          f"fix its permissions or choose another --run-dir")


def resolve_data_path(cfg: Config) -> str:
    """The local directory holding the data's manifest (and tokenizer): data.path, or for data only
    on an object store a cache its metadata is fetched into (again when a saved config names a
    cache this machine does not have)."""
    path = cfg.data.path
    if cfg.data.remote and not (path and os.path.isfile(os.path.join(path, "manifest.json"))):
        from megadlm.data.remote import fetch_metadata

        return str(fetch_metadata(cfg.data.remote, path or None))
    if not path:
        raise ConfigError("data.path is not set: point it at a `megadlm prepare` output directory "
                          "(--set data.path=DIR), or set data.remote to its copy on an object store")
    return path


def model_shape(cfg: Config, padded_vocab: int) -> dict:
    """The model fields a checkpoint or imported weights must agree with."""
    model = {k: v for k, v in config_to_dict(cfg)["model"].items() if k not in _NOT_SHAPE}
    model["padded_vocab_size"] = padded_vocab
    if model.get("num_query_groups") is None:
        model["num_query_groups"] = model["num_attention_heads"]
    if model.get("kv_channels") is None:
        model["kv_channels"] = model["hidden_size"] // model["num_attention_heads"]
    return model


def run_facts(cfg: Config, world_size: int, padded_vocab: int, manifest: dict) -> RunFacts:
    tp, pp = cfg.parallel.tp, cfg.parallel.pp
    return RunFacts(
        objective=cfg.objective.type, model=model_shape(cfg, padded_vocab),
        layout={"tp": tp, "pp": pp, "dp": world_size // (tp * pp), "zero_stage": cfg.parallel.zero_stage},
        data={"seq_len": cfg.data.seq_len, "tokenizer_sha256": manifest.get("tokenizer", {}).get("sha256")})


def check(cfg: Config, world_size: int, verify_data: bool = True) -> Preflight:
    """Every check that needs no process group. `verify_data=False` leaves the shard checksums to
    the caller (a sweep verifies each data directory once for all its points)."""
    from megadlm.data.manifest import load_manifest
    from megadlm.data.tokenizer import tokenizer_from_manifest

    validate_config(cfg, world_size=world_size)
    data_path = resolve_data_path(cfg)
    manifest = load_manifest(data_path)
    validate_config(cfg, world_size=world_size, manifest=manifest)
    # The shards' token ids only mean something with the tokenizer that wrote them.
    tokenizer_from_manifest(data_path)
    vocab = cfg.model.vocab_size or int(manifest["vocab_size"])
    padded = padded_vocab_size(vocab, cfg.model.make_vocab_size_divisible_by, cfg.parallel.tp)
    if cfg.model.init_from:
        from megadlm.convert.import_hf import check_init_from

        check_init_from(cfg.model.init_from, model_shape(cfg, padded))
    if verify_data and not cfg.data.remote and os.environ.get(VERIFIED_ENV) != os.path.abspath(data_path):
        verify_data_dirs([data_path])
    return Preflight(manifest, data_path, padded, run_facts(cfg, world_size, padded, manifest))


def verify_data_dirs(paths: list[str], quiet: bool = True) -> None:
    """Check each distinct local data directory's shards against their checksums, once."""
    from megadlm.data.integrity import verify_shards

    for path in sorted({os.path.abspath(p) for p in paths}):
        result = verify_shards(path)
        if not quiet:
            unchanged = result.checked - result.hashed
            note = f" ({unchanged} unchanged since an earlier check, not re-hashed)" if unchanged else ""
            print(f"megadlm: verified the checksums of {result.checked} shards in {path}{note}",
                  file=sys.stderr, flush=True)
