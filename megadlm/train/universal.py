"""Layout changes on resume through DeepSpeed's universal checkpoint.

`megadlm reshard CKPT --out DIR [--pp P]` turns a checkpoint of any TP x PP x DP layout (ZeRO 1/2)
into a universal one: every parameter's full fp32 master weight and Adam moments under
DIR/zero/<parameter name>/. `megadlm train --resume-from DIR` then loads it into whatever layout
the config and the process count ask for; DeepSpeed re-slices each tensor for the new TP rank and
ZeRO partition. What DeepSpeed needs from us (shared/notes/megatron-deepspeed-cpu.md, Q3):
1. `universal_checkpoint_info` in the client state, derived from megatron's TP attributes
   (replicated / row-parallel / column-parallel), plus the tied-embedding copy of pipeline stages.
2. No `None` entries in the module state dict (megatron linears add `_extra_state: None`, which
   the converter tries to `.float()`): dropped on save, put back on load.
3. Parameter names that match the target model: the GPTModel (PP=1) and the DeepSpeed pipeline
   (PP>1) name the same tensors differently, so the converted folders are renamed for `--pp`.
The vocabulary is padded to the same size for every TP that divides lcm(128, TP), so embeddings
are merged like any column-parallel weight (no vocabulary re-padding).

`megadlm train` does the conversion by itself when the only difference is the data-parallel size
or ZeRO 1 <-> 2 (a requeue on fewer nodes): `checkpoint_for_layout` converts the chosen checkpoint
once, on global rank 0, to RUN_DIR/checkpoints/universal/<tag>_pp<P>, and later launches reuse it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
from datetime import timedelta
from typing import Any, Callable

import torch

UNIVERSAL_MARK = "universal"


def universal_info(named_parameters, pipeline: bool, gated_mlp: bool) -> dict:
    """Collective when a process group exists: the converter reads one rank's copy, so it must
    describe the parameters of every pipeline stage, not just this rank's."""
    import torch.distributed as dist
    from deepspeed.checkpoint import constants as c

    replicated, row, two_halves = [], [], []
    for name, param in named_parameters:
        pattern = re.escape(name) + "$"
        if gated_mlp and name.endswith("linear_fc1.weight"):
            # SwiGLU fc1 is [gate; up]; each TP rank holds [gate_i; up_i], so the full weight is
            # [gate_0; gate_1; ...; up_0; up_1; ...], not the plain concatenation of the shards
            two_halves.append(pattern)
        elif not getattr(param, "tensor_model_parallel", False):
            replicated.append(pattern)  # norms, QK-norms, learned position embeddings
        elif getattr(param, "partition_dim", 0) == 1:
            row.append(pattern)  # RowParallelLinear: shards concatenate along dim 1
        # everything else (column-parallel, vocab-parallel embedding) concatenates along dim 0;
        # megatron's QKV and SwiGLU fc1 layouts are per-rank blocks, so dim-0 order is right
    if dist.is_initialized() and dist.get_world_size() > 1:
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, (replicated, row, two_halves))
        replicated, row, two_halves = ([p for p in sorted({p for lists in every for p in lists[i]})]
                                       for i in range(3))
    info = {c.UNIVERSAL_CHECKPOINT_VERSION_KEY: 0.2, c.TP_REPLICATED_PARAMETER_PATTERNS: replicated,
            c.PARAMETER_WITH_ROW_PARALLELISM_PATTERNS: row,
            c.PARAMETER_WITH_2_SUB_PARAMS_CAT_DIM_0: two_halves}
    if pipeline:  # the tied embedding's copy on the last stage must not overwrite the first's
        info[c.PIPELINE_REPLICATED_PARAMETER_PATTERNS] = [r"tied_modules\..*"]
    return info


def drop_none_extra_state(module: torch.nn.Module) -> None:
    """Keep `_extra_state: None` out of state dicts (the converter cannot handle it) while strict
    loading still finds the keys."""
    extra = [f"{n}._extra_state" if n else "_extra_state" for n, m in module.named_modules()
             if type(m).get_extra_state is not torch.nn.Module.get_extra_state]

    def drop(mod, state, prefix, local_metadata):
        for key in [k for k, v in state.items() if k.endswith("_extra_state") and v is None]:
            del state[key]
        return state

    def restore(mod, state, prefix, local_metadata, strict, missing, unexpected, errors):
        for key in extra:
            state.setdefault(prefix + key, None)

    module._register_state_dict_hook(drop)
    module.register_load_state_dict_pre_hook(restore)


# ---------------------------------------------------------------- names: GPTModel <-> pipeline

def to_canonical(name: str, num_layers: int) -> str:
    """GPTModel name of a parameter named by either model."""
    if name.startswith("tied_modules.embed."):
        return name[len("tied_modules.embed."):]
    head, _, rest = name.partition(".")
    if not head.isdigit():
        return name  # already a GPTModel name
    index = int(head)
    if index == 0:
        return rest  # untied embedding stage
    if index <= num_layers:
        return f"decoder.layers.{index - 1}." + rest[len("layer."):]
    if index == num_layers + 1:
        return "decoder." + rest  # final_layernorm
    return rest  # untied output layer


def to_pipeline(canonical: str, num_layers: int, tied: bool) -> str:
    """The DeepSpeed PipelineModule name of a GPTModel parameter (layer specs are numbered
    embedding, layers 1..L, final norm, output)."""
    if canonical.startswith("embedding."):
        return ("tied_modules.embed." if tied else "0.") + canonical
    m = re.match(r"decoder\.layers\.(\d+)\.(.*)", canonical)
    if m:
        return f"{int(m.group(1)) + 1}.layer.{m.group(2)}"
    if canonical.startswith("decoder.final_layernorm"):
        return f"{num_layers + 1}." + canonical[len("decoder."):]
    if canonical.startswith("output_layer."):
        return f"{num_layers + 2}." + canonical
    raise ValueError(f"no pipeline name for {canonical}")


def rename_for(zero_dir: str, num_layers: int, tied: bool, target_pp: int) -> None:
    for name in os.listdir(zero_dir):
        if not os.path.isdir(os.path.join(zero_dir, name)):
            continue  # optimizer_state.pt: common to all parameters
        canonical = to_canonical(name, num_layers)
        wanted = to_pipeline(canonical, num_layers, tied) if target_pp > 1 else canonical
        if wanted != name:
            os.rename(os.path.join(zero_dir, name), os.path.join(zero_dir, wanted))


def convert(source: str, out: str, workers: int = 1) -> None:
    """Run DeepSpeed's converter (its own progress output goes to stdout and stderr)."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    args = argparse.Namespace(input_folder=source, output_folder=out, num_extract_workers=workers,
                              num_merge_workers=workers, keep_temp_folder=False, strict=True,
                              inject_missing_state=False)
    ds_to_universal(args)
    shutil.rmtree(os.path.join(out, "tmp"), ignore_errors=True)


def universal_facts(facts: dict, target_pp: int, made_from: dict | None = None) -> dict:
    """The facts a universal conversion of a checkpoint with `facts` records: the same run, a layout
    that only fixes the pipeline depth (parameter names), and where it came from."""
    layout = {UNIVERSAL_MARK: True, "pp": target_pp, "source": facts["layout"]}
    if made_from is not None:
        layout["from"] = made_from
    return {**facts, "layout": layout}


def _manifest_sha256(checkpoint: str) -> str:
    """Identifies a checkpoint's exact content: its manifest lists the sha256 of every file."""
    from megadlm.train import checkpoint as ckpt

    with open(os.path.join(checkpoint, ckpt.MANIFEST), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _hash_files(directory: str) -> dict[str, str]:
    """sha256 of every file below `directory`, in this process alone: the conversion runs on one rank
    (checkpoint.hash_directory is collective)."""
    from megadlm.train import checkpoint as ckpt

    sums = {}
    for base, _, names in os.walk(directory):
        for name in names:
            if name != ckpt.MANIFEST:
                path = os.path.join(base, name)
                with open(path, "rb") as f:
                    sums[os.path.relpath(path, directory)] = hashlib.file_digest(f, "sha256").hexdigest()
    return sums


def _write_universal(source: str, manifest: dict, out: str, target_pp: int, workers: int = 1) -> dict:
    """The one conversion code path (`megadlm reshard` and the automatic one): universal form of the
    verified checkpoint `source` written to `out` (which must not exist), atomically (a crash leaves
    only `out`.incomplete). Runs in one process, no collectives. Returns the new facts."""
    from megadlm.train import checkpoint as ckpt

    work = out.rstrip("/") + ".incomplete"
    shutil.rmtree(work, ignore_errors=True)
    convert(source, work, workers)
    model = manifest["facts"]["model"]
    rename_for(os.path.join(work, "zero"), model["num_layers"], model["tie_embeddings"], target_pp)
    made_from = {"path": os.path.abspath(source), "manifest_sha256": _manifest_sha256(source)}
    facts = universal_facts(manifest["facts"], target_pp, made_from)
    ckpt.write_manifest(work, os.path.basename(out.rstrip("/")), manifest["train_state"], facts,
                        manifest["config"], _hash_files(work))
    os.rename(work, out)
    return facts


def reshard(source: str, out: str, target_pp: int, workers: int = 1) -> dict:
    """Write the universal form of checkpoint `source` to `out` (which must not exist) for a
    target with `target_pp` pipeline stages. Returns the new manifest's facts."""
    from megadlm.errors import CheckpointError
    from megadlm.train import checkpoint as ckpt

    source = source.rstrip("/")
    manifest, problem = ckpt.verify(source)
    if problem is not None:
        raise CheckpointError(f"{source}: {problem}; reshard a complete checkpoint")
    facts = manifest["facts"]
    if facts["layout"].get(UNIVERSAL_MARK):
        raise CheckpointError(f"{source} is already universal: resume from it directly (reshard its source "
                              f"again for another --pp)")
    if facts["layout"]["zero_stage"] == 0:
        raise CheckpointError(f"{source} was saved with parallel.zero_stage=0, which DeepSpeed's universal "
                              f"converter cannot read: resume it with its own TP/PP layout (any number of "
                              f"data-parallel ranks loads it) and save with ZeRO 1 or 2")
    if os.path.exists(out):
        raise CheckpointError(f"{out} already exists: choose a new --out (nothing was overwritten)")
    return _write_universal(source, manifest, out, target_pp, workers)


# ---------------------------------------------------------------- automatic conversion on resume

CONVERSIONS = "universal"  # RUN_DIR/checkpoints/universal/<source tag>_pp<P>: not a step_* directory,
# so checkpoint.candidate_paths never offers it and retention (checkpoint._prune) never deletes it
# Converting a large model takes longer than a collective's default timeout (30 min; NCCL's watchdog
# would kill the waiting ranks), so the other ranks wait in a gloo group of their own.
CONVERSION_TIMEOUT = timedelta(hours=12)


def conversion_path(run_dir: str, source_tag: str, target_pp: int) -> str:
    from megadlm.train import checkpoint as ckpt

    return os.path.join(ckpt.checkpoint_root(run_dir), CONVERSIONS, f"{source_tag}_pp{target_pp}")


def automatic_change(saved_layout: dict, layout: dict) -> str | None:
    """What differs, when a checkpoint saved in `saved_layout` fits a run in `layout` only through
    its universal form and megadlm makes that form by itself: the same TP and PP, ZeRO 1 or 2 on both
    sides, another data-parallel size or the other of the two stages (ZeRO 1 and 2 partition the
    optimizer state per data-parallel rank; DeepSpeed loads a universal checkpoint into either).
    None when it loads as it is, or needs `megadlm reshard` (see checkpoint.compatibility_problems)."""
    if saved_layout.get(UNIVERSAL_MARK) or any(saved_layout[k] != layout[k] for k in ("tp", "pp")):
        return None
    if saved_layout["zero_stage"] not in (1, 2) or layout["zero_stage"] not in (1, 2):
        return None
    was, now = (saved_layout["dp"], saved_layout["zero_stage"]), (layout["dp"], layout["zero_stage"])
    if was == now:
        return None
    if was[1] == now[1]:
        return f"was saved at data-parallel size {was[0]}, this run has {now[0]}"
    if was[0] == now[0]:
        return f"was saved with parallel.zero_stage={was[1]}, this run uses {now[1]}"
    return (f"was saved at data-parallel size {was[0]} with parallel.zero_stage={was[1]}, this run has "
            f"data-parallel size {now[0]} with parallel.zero_stage={now[1]}")


def checkpoint_for_layout(path: str, manifest: dict, current, run_dir: str,
                          convert: bool | None = None) -> tuple[str, dict]:
    """The checkpoint that a run with facts `current` (a RunFacts) loads for the verified `path`:
    `path` itself, or its universal conversion when `automatic_change` applies, made once beside it
    (`conversion_path`) and reused while it verifies. Every other difference raises CheckpointError
    before anything is written. Collective when a process group exists: global rank 0 converts
    while the others wait. `convert` defaults to whether a process group exists: a launcher that
    checks before it starts the workers has none, and only checks (its workers convert)."""
    import torch.distributed as dist

    from megadlm.errors import CheckpointError
    from megadlm.train import checkpoint as ckpt

    change = automatic_change(manifest["facts"]["layout"], current.layout)
    # a conversion that would then be refused (another seq_len, say) is not even started
    fits = universal_facts(manifest["facts"], current.layout["pp"]) if change else manifest["facts"]
    problems = ckpt.compatibility_problems(fits, current)
    if problems:
        raise CheckpointError(f"cannot resume from {path}: " + "; ".join(problems)
                              + ". Nothing in the run directory was changed.")
    if change is None or not (dist.is_initialized() if convert is None else convert):
        return path, manifest
    tag = os.path.basename(path.rstrip("/"))
    out = conversion_path(run_dir, tag, current.layout["pp"])
    # reused only when it was made from exactly this content (a step can be saved again after a
    # crash) and still verifies
    if _on_main_rank(lambda: (_made_from(out) or {}).get("manifest_sha256") == _manifest_sha256(path)):
        converted, problem = ckpt.verify(out)
        if problem is None:
            _say(f"megadlm: checkpoint {tag} {change}: resuming from {out}, the universal conversion "
                 f"an earlier launch made of it")
            return out, converted
    _say(f"megadlm: checkpoint {tag} {change}: converting it once to {out} (DeepSpeed universal "
         f"checkpoint) and resuming from it")
    failure = _on_main_rank(lambda: _convert_for_resume(path, manifest, out, current.layout["pp"]),
                            timeout=CONVERSION_TIMEOUT)
    if failure is None:
        converted, failure = ckpt.verify(out)
    if failure is not None:
        saved = manifest["facts"]["layout"]
        raise CheckpointError(f"converting {path} to {out} failed ({failure}): resume with the layout it "
                              f"was saved with (data-parallel size {saved['dp']}, parallel.zero_stage="
                              f"{saved['zero_stage']}), or run `megadlm reshard` on it to see the "
                              f"converter's whole output")
    return out, converted


def _made_from(conversion: str) -> dict | None:
    """Which checkpoint `conversion` was made from ({path, manifest_sha256}; None: not a finished
    conversion of ours)."""
    from megadlm.train import checkpoint as ckpt

    try:
        with open(os.path.join(conversion, ckpt.MANIFEST)) as f:
            made_from = json.load(f)["facts"]["layout"]["from"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return made_from if isinstance(made_from, dict) else None


def _convert_for_resume(source: str, manifest: dict, out: str, target_pp: int) -> str | None:
    """On one rank: replace a stale or damaged `out` by a new conversion, quietly (the caller says
    what happens in one line), then drop conversions whose source is gone. The failure or None."""
    import contextlib
    import io

    captured = io.StringIO()
    try:
        shutil.rmtree(out, ignore_errors=True)  # ours, and it did not verify or came from other content
        os.makedirs(os.path.dirname(out), exist_ok=True)  # a new run dir resuming --resume-from elsewhere
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            _write_universal(source, manifest, out, target_pp)
    except Exception as e:  # noqa: BLE001 - the waiting ranks must hear of any failure, not hang
        tail = " | ".join(captured.getvalue().strip().splitlines()[-3:])
        return f"{type(e).__name__}: {e}" + (f"; the converter said: {tail}" if tail else "")
    _remove_orphaned_conversions(os.path.dirname(out), keep=out)
    return None


def _remove_orphaned_conversions(conversions: str, keep: str) -> None:
    """A conversion is only worth its disk space while its source checkpoint exists (retention
    prunes sources; a resume always starts from a step_* directory). Unfinished ones go too."""
    for name in os.listdir(conversions):
        path = os.path.join(conversions, name)
        if path == keep or not os.path.isdir(path):
            continue
        made_from = _made_from(path)
        if made_from is None and not name.endswith(".incomplete"):
            continue  # not one of ours
        # the recorded source path, or the same tag beside us (the run directory may have moved)
        source = str(made_from.get("path", "")) if made_from else ""
        sources = (source, os.path.join(os.path.dirname(conversions), os.path.basename(source)))
        if made_from is None or not any(source and os.path.isdir(s) for s in sources):
            shutil.rmtree(path, ignore_errors=True)


def _on_main_rank(work: Callable[[], Any], timeout: timedelta | None = None) -> Any:
    """`work()` run on global rank 0 (or in the only process), its result given to every rank; the
    other ranks wait meanwhile, up to `timeout` (default: the process group's own)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return work()
    group = dist.new_group(backend="gloo", timeout=timeout) if timeout is not None else None
    try:
        box = [work() if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0, group=group)
        return box[0]
    finally:
        if group is not None:
            dist.destroy_process_group(group)


def _say(line: str) -> None:
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(line, file=sys.stderr, flush=True)
