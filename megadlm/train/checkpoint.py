"""Checkpoints that are either complete and verified, or ignored.

Layout of RUN_DIR/checkpoints/:
    step_00000100/             DeepSpeed's model/optimizer files, rng_rankNNNNN.pt per rank,
                               megadlm_manifest.json (size + sha256 of every file, train state,
                               the facts a resume must agree with)
    .incomplete_step_00000200/ a save in progress (or one a crash interrupted); never loaded
    latest                     the newest complete tag, replaced atomically

With checkpoint.keep_best one checkpoint's manifest carries a "best" mark (the metric, its value
and the step): retention never prunes a marked checkpoint, and marking a new best unmarks the old.

A save writes under the temporary name, every rank hashes a share of the files, rank 0 writes the
manifest, renames the directory and only then moves `latest`. Loading verifies the manifest (sizes
and checksums, hashed by all ranks) before DeepSpeed unpickles anything; a checkpoint that fails is
skipped, with a warning, for the next older one. Our own files are read with weights_only=True.
The data position is the global consumed-sample count, which does not depend on the world size.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from megadlm.atomic_files import write_atomically
from megadlm.errors import CheckpointError, TrainingError
from megadlm.parallel.dropout_streams import attention_dropout_stream
from megadlm.preflight import RunFacts
from megadlm.rundir import (
    CHECKPOINT_MANIFEST,
    LATEST,
    best_checkpoint,
    checkpoint_root,
    is_checkpoint_tag,
    read_checkpoint_manifest,
)

MANIFEST = CHECKPOINT_MANIFEST
INCOMPLETE = ".incomplete_"
FORMAT_VERSION = 1


@dataclass
class TrainState:
    step: int = 0  # optimizer steps completed
    consumed_samples: int = 0  # global samples consumed (position in the data stream)
    tokens_seen: int = 0
    # global-batch start positions (consumed-sample counts) that run.on_nan=skip dropped
    skipped_batches: list[int] = field(default_factory=list)


@dataclass
class Retention:
    keep_last: int = 2  # newest complete checkpoints kept (0 = all)
    keep_every: int = 0  # also keep every step that is a multiple of this, forever (0 = none)




def tag_of(step: int) -> str:
    return f"step_{step:08d}"


def latest_tag(run_dir: str) -> str | None:
    path = os.path.join(checkpoint_root(run_dir), LATEST)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read().strip() or None


def best_mark(run_dir: str) -> dict | None:
    """The "best" mark (metric, value, step) of the run's best checkpoint, the same on every rank
    (rank 0 reads it), or None."""
    found = best_checkpoint(run_dir) if _rank_world()[0] == 0 else None
    return _from_rank0(found[1] if found else None)


def has_checkpoints(run_dir: str) -> bool:
    return bool(candidate_paths(run_dir))


def candidate_paths(run_dir: str) -> list[str]:
    """Complete-looking checkpoint directories, newest first (`latest` first when it names one)."""
    root = checkpoint_root(run_dir)
    if not os.path.isdir(root):
        return []
    tags = sorted((d for d in os.listdir(root)
                   if is_checkpoint_tag(d) and os.path.isdir(os.path.join(root, d))),
                  reverse=True)
    newest = latest_tag(run_dir)
    if newest in tags:
        tags.remove(newest)
        tags.insert(0, newest)
    return [os.path.join(root, t) for t in tags]


# ---------------------------------------------------------------- RNG (weights_only-loadable)

def _rng_state() -> dict:
    _, key, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    if attention_dropout_stream.seeded:
        state["attention_dropout"] = attention_dropout_stream.get_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if "attention_dropout" in state and attention_dropout_stream.seeded:
        attention_dropout_stream.set_state(state["attention_dropout"])


# ---------------------------------------------------------------- checksums, shared by the ranks

def _rank_world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _from_rank0(value):
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(value) -> list:
    if not dist.is_initialized():
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _list_files(directory: str) -> list[str]:
    found = []
    for base, _, names in os.walk(directory):
        for name in names:
            if name != MANIFEST:
                found.append(os.path.relpath(os.path.join(base, name), directory))
    return sorted(found)


def _hash_shared(directory: str, files: list[str]) -> dict[str, str]:
    """sha256 of every file, each rank hashing every world-th one; the same dict on all ranks."""
    rank, world = _rank_world()
    mine = {}
    for index, name in enumerate(files):
        if index % world == rank:
            path = os.path.join(directory, name)
            mine[name] = _sha256(path) if os.path.isfile(path) else "missing"
    merged = {}
    for part in _gather(mine):
        merged.update(part)
    return merged


def verify(path: str) -> tuple[dict | None, str | None]:
    """(manifest, None) when every listed file is there with its size and checksum, else
    (None, the first problem). Collective: every rank must call it."""
    manifest, problem = None, None
    if _rank_world()[0] == 0:
        try:
            with open(os.path.join(path, MANIFEST)) as f:
                manifest = json.load(f)
            if manifest.get("format") != FORMAT_VERSION:
                problem = f"unknown manifest format {manifest.get('format')!r}"
        except FileNotFoundError:
            problem = f"no {MANIFEST} (the save did not finish)"
        except (OSError, ValueError) as e:
            problem = f"unreadable {MANIFEST}: {e}"
        if problem is None:
            for name, entry in manifest["files"].items():
                full = os.path.join(path, name)
                if not os.path.isfile(full):
                    problem = f"{name} is missing"
                    break
                if os.path.getsize(full) != entry["bytes"]:
                    problem = f"{name} has {os.path.getsize(full)} bytes, the manifest says {entry['bytes']}"
                    break
    manifest, problem = _from_rank0((manifest, problem))
    if problem is not None:
        return None, problem
    sums = _hash_shared(path, sorted(manifest["files"]))
    for name in sorted(manifest["files"]):
        if sums[name] != manifest["files"][name]["sha256"]:
            return None, f"{name} does not match its sha256 checksum (corrupted or modified)"
    return manifest, None


# ---------------------------------------------------------------- save

def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)



def write_manifest(directory: str, tag: str, train_state: dict, facts: dict, config: dict,
                   sums: dict[str, str], best: dict | None = None) -> None:
    manifest = {"format": FORMAT_VERSION, "tag": tag, "train_state": train_state, "facts": facts,
                "world_size": _rank_world()[1], "config": config,
                "files": {name: {"bytes": os.path.getsize(os.path.join(directory, name)),
                                 "sha256": sums[name]}
                          for name in sorted(sums)}}
    if best is not None:
        manifest["best"] = best
    write_atomically(os.path.join(directory, MANIFEST), json.dumps(manifest, indent=1), durable=True)


def _unmark_best(root: str, keep: str) -> None:
    """Remove the "best" mark from every checkpoint but `keep` (the manifest is not covered by its
    own checksums, so rewriting it leaves the checkpoint verifiable)."""
    for name in sorted(os.listdir(root)):
        directory = os.path.join(root, name)
        manifest = read_checkpoint_manifest(directory) if is_checkpoint_tag(name) and name != keep else None
        if manifest and manifest.pop("best", None) is not None:
            write_atomically(os.path.join(directory, MANIFEST), json.dumps(manifest, indent=1), durable=True)


def hash_directory(directory: str) -> dict[str, str]:
    """sha256 of every file below `directory` (collective when a process group exists)."""
    files = _from_rank0(_list_files(directory) if _rank_world()[0] == 0 else None)
    return _hash_shared(directory, files)


def save(engine, run_dir: str, state: TrainState, retention: Retention, facts: RunFacts,
         resolved_config: dict, client_extra: dict | None = None, best: dict | None = None) -> str:
    """Collective. Returns the tag; `latest` names it only once it is complete and verified.
    `best` (metric, value, step) marks it as the run's best checkpoint, in place of the old one."""
    rank, _ = _rank_world()
    tag, root = tag_of(state.step), checkpoint_root(run_dir)
    work = os.path.join(root, INCOMPLETE + tag)
    if rank == 0 and os.path.exists(work):
        shutil.rmtree(work)  # left by a save that crashed: it was never complete
    _barrier()
    client = {"train_state": asdict(state), **(client_extra or {})}
    try:
        engine.save_checkpoint(root, tag=INCOMPLETE + tag, client_state=client, save_latest=False)
        # DeepSpeed does not save RNG state; dropout and attention dropout need it for an exact resume.
        torch.save(_rng_state(), os.path.join(work, f"rng_rank{rank:05d}.pt"))
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        previous = latest_tag(run_dir)
        kept = (f"the previous checkpoint {previous} is untouched" if previous
                else "no checkpoint was written yet")
        raise TrainingError(f"writing checkpoint {tag} failed on rank {rank} ({e}): is the disk full or over "
                            f"quota? {kept}; free space and run the same command to resume") from e
    _barrier()
    sums = hash_directory(work)
    if rank == 0:
        write_manifest(work, tag, asdict(state), asdict(facts), resolved_config, sums, best)
        final = os.path.join(root, tag)
        if os.path.exists(final):  # a complete save of this step that `latest` never named (a crash)
            shutil.rmtree(final)
        os.rename(work, final)
        _fsync_dir(root)
        write_atomically(os.path.join(root, LATEST), tag, durable=True)
        if best is not None:  # only now: a crash before this point leaves the old best marked
            _unmark_best(root, keep=tag)
        _prune(root, retention, keep=tag)
    _barrier()
    return tag


def _prune(root: str, retention: Retention, keep: str) -> None:
    tags = sorted(d for d in os.listdir(root)
                  if is_checkpoint_tag(d) and os.path.isdir(os.path.join(root, d)))
    recent = set(tags[-retention.keep_last:]) if retention.keep_last > 0 else set(tags)
    for old in tags:
        step = int(old[len("step_"):])
        kept_forever = retention.keep_every > 0 and step % retention.keep_every == 0
        if old in recent or kept_forever or old == keep:
            continue
        if (read_checkpoint_manifest(os.path.join(root, old)) or {}).get("best"):  # checkpoint.keep_best's
            continue
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)


# ---------------------------------------------------------------- choose and load

def _warn(message: str) -> None:
    if _rank_world()[0] == 0:
        print(f"megadlm: warning: {message}", file=sys.stderr, flush=True)


def choose(run_dir: str, resume_from: str | None = None) -> tuple[str, dict] | None:
    """The checkpoint to resume from and its manifest, or None when the run has none. Collective.

    With `resume_from` that exact checkpoint must verify. Otherwise the newest that verifies is
    used, and each one skipped on the way is reported."""
    if resume_from is not None:
        path = resume_from.rstrip("/")
        manifest, problem = verify(path)
        if problem is not None:
            raise CheckpointError(f"--resume-from {path}: {problem}; pick another checkpoint "
                                f"(complete ones have a {MANIFEST})")
        return path, manifest
    candidates = candidate_paths(run_dir)
    skipped = []
    for path in candidates:
        manifest, problem = verify(path)
        if problem is None:
            for bad, why in skipped:
                _warn(f"checkpoint {bad} is unusable ({why}); resuming from the older {path}")
            return path, manifest
        skipped.append((path, problem))
    if skipped:
        details = "; ".join(f"{p}: {why}" for p, why in skipped)
        raise CheckpointError(f"no usable checkpoint in {checkpoint_root(run_dir)} ({details}). Nothing was "
                            f"changed: restore a good checkpoint, or start a new --run-dir")
    return None


def compatibility_problems(saved: dict, current: RunFacts) -> list[str]:
    """Differences that make resuming from this checkpoint wrong, each with what to do instead."""
    problems = []
    if saved["objective"] != current.objective:
        problems.append(f"it was trained with objective.type={saved['objective']}, this config says "
                        f"{current.objective} (to adapt a model to another objective, start a new run "
                        f"from its weights instead of resuming)")
    for key in sorted(set(saved["model"]) | set(current.model)):
        if saved["model"].get(key) != current.model.get(key):
            problems.append(f"model.{key} was {saved['model'].get(key)!r}, this config says "
                            f"{current.model.get(key)!r} (a checkpoint only fits the model shape it was "
                            f"saved from)")
    for key in sorted(set(saved["data"]) | set(current.data)):
        if saved["data"].get(key) != current.data.get(key):
            problems.append(f"data {key} was {saved['data'].get(key)!r}, now {current.data.get(key)!r}")
    if saved["layout"].get("universal"):
        if saved["layout"]["pp"] != current.layout["pp"]:
            problems.append(f"it was resharded for parallel.pp={saved['layout']['pp']}, this run uses "
                            f"{current.layout['pp']} (run `megadlm reshard` again with "
                            f"--pp {current.layout['pp']})")
        source_stage = saved["layout"]["source"]["zero_stage"]
        if (source_stage == 3) != (current.layout["zero_stage"] == 3):
            problems.append(f"it comes from parallel.zero_stage={source_stage} and DeepSpeed cannot move "
                            f"optimizer state between ZeRO 1/2 and ZeRO 3: use "
                            f"parallel.zero_stage={'3' if source_stage == 3 else '1 or 2'}")
        return problems
    was, now = saved["layout"], current.layout
    reshard = (f"convert it with `megadlm reshard CKPT --out DIR --pp {now['pp']}` and resume with "
               f"--resume-from DIR, or launch with the saved layout")
    family = {0: "0", 1: "1 or 2", 2: "1 or 2", 3: "3"}  # DeepSpeed's three optimizer-state formats
    if (was["tp"], was["pp"]) != (now["tp"], now["pp"]):
        problems.append(f"it was saved with parallel.tp={was['tp']} and parallel.pp={was['pp']}, this run "
                        f"uses tp={now['tp']} and pp={now['pp']} ({reshard})")
    elif family[was["zero_stage"]] != family[now["zero_stage"]]:
        problems.append(f"it was saved with parallel.zero_stage={was['zero_stage']}, this run uses "
                        f"{now['zero_stage']}, and DeepSpeed cannot move optimizer state between ZeRO 0, "
                        f"1/2 and 3: use parallel.zero_stage={family[was['zero_stage']]}")
    elif was["zero_stage"] != now["zero_stage"]:  # 1 <-> 2: megadlm train converts it by itself
        problems.append(f"it was saved with parallel.zero_stage={was['zero_stage']}, this run uses "
                        f"{now['zero_stage']} ({reshard})")
    elif was["zero_stage"] > 0 and was.get("dp") != now["dp"]:
        # ZeRO 1/2/3 files hold one data-parallel rank's partition each; ZeRO-0 keeps the whole
        # optimizer state in each model-parallel rank's file, so any data-parallel size loads it
        saved_size = (f"it was saved at data-parallel size {was.get('dp')} with parallel.zero_stage="
                      f"{was['zero_stage']}, this run has {now['dp']}, and each of its ZeRO files holds one "
                      f"data-parallel rank's share of the optimizer state")
        processes = was.get("dp", 1) * now["tp"] * now["pp"]
        if was["zero_stage"] < 3:
            problems.append(f"{saved_size} (megadlm train converts ZeRO 1/2 checkpoints by itself; "
                            f"{reshard}: {processes} processes)")
        else:  # DeepSpeed 0.19.8, stage3.load_hp_checkpoint_state_from_checkpoint_dir_stage3
            problems.append(f"{saved_size}. ZeRO-3 checkpoints are not converted automatically: launch with "
                            f"the saved layout ({processes} processes). `megadlm reshard` converts them too, "
                            f"but DeepSpeed's ZeRO-3 universal loader gives every parameter group the first "
                            f"one's weight decay, so norms and biases would be decayed after the resume")
    return problems


def load(engine, path: str, manifest: dict) -> TrainState:
    """Restore engine, RNG and counters from a verified checkpoint directory."""
    root, tag = os.path.split(path)
    loaded, _ = engine.load_checkpoint(root, tag=tag)
    if loaded is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {path} (see its message above); "
                            f"resume with the layout it was saved with, or start a new --run-dir")
    rank, _ = _rank_world()
    rng_file = os.path.join(path, f"rng_rank{rank:05d}.pt")
    if os.path.exists(rng_file):  # absent when resuming with more ranks than were saved
        _set_rng_state(torch.load(rng_file, weights_only=True))
    return TrainState(**manifest["train_state"])
