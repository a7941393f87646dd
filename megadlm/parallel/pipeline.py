"""Pipeline parallelism: a DeepSpeed PipelineModule made of megatron-core stages.

The rank grid is DeepSpeed's ProcessTopology(axes=[data, pipe, model]) — data-parallel slowest —
which equals megatron-core's "tp-cp-ep-pp-dp" order; `check_groups_match` proves it at start-up
rank set by rank set (a mismatch silently trains the wrong replicas on the wrong samples).
The loss runs on the last stage and also accumulates the sums validation and metrics need.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from megadlm.config.schema import Config
from megadlm.errors import TrainingError
from megadlm.parallel.output_head import logits_cross_entropy


def topology(tp: int, pp: int, dp: int):
    from deepspeed.runtime.pipe.topology import ProcessTopology

    return ProcessTopology(axes=["data", "pipe", "model"], dims=[dp, pp, tp])


class PipelineLoss:
    """loss_fn of the last stage: labels = (targets, weights, masked, valid), all [b, s].

    Returns sum(w * CE) / (b * s) like the non-pipelined path, and adds
    [weighted CE, masked CE, masked count, valid tokens] to `sums` for metrics and validation.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: torch.Tensor | None = None  # on the logits' device: no host sync per micro-batch

    def __call__(self, logits: torch.Tensor, labels) -> torch.Tensor:
        targets, weights, masked, valid = labels  # targets of unweighted positions are IGNORE
        ce = logits_cross_entropy(logits, targets)
        weighted = (ce * weights).sum()
        with torch.no_grad():
            part = torch.stack([weighted.detach(), (ce.detach() * masked).sum(), masked.sum(),
                                valid.sum()]).double()
            self.sums = part if self.sums is None else self.sums + part
        return weighted / targets.numel()


def build_pipeline(cfg: Config, vocab_size: int, tp: int, pp: int, dp: int):
    """This rank's stages, initialised from (run.seed, global names) like the GPTModel."""
    from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec

    from megadlm.model.build import (
        checkpoint_layer_activations,
        compute_dtype,
        match_parameter_dtype,
        transformer_config,
    )
    from megadlm.model.init import init_by_name
    from megadlm.model.layers import project_layer_spec
    from megadlm.model.stages import (
        EmbeddingStage,
        FinalNormStage,
        OutputStage,
        TransformerLayerStage,
        tied_output_logits,
    )

    m = cfg.model
    config = transformer_config(cfg)
    spec = project_layer_spec(cfg)
    embed_args = (config, vocab_size, cfg.data.seq_len, m.position_embedding)
    tied_attr = "embedding.word_embeddings.weight"
    layers = [TiedLayerSpec("embed", EmbeddingStage, *embed_args, tied_weight_attr=tied_attr)
              if m.tie_embeddings else LayerSpec(EmbeddingStage, *embed_args)]
    layers += [LayerSpec(TransformerLayerStage, config, spec, i + 1, m.position_embedding, m.rotary_base)
               for i in range(m.num_layers)]
    layers.append(LayerSpec(FinalNormStage, config, spec))
    # Tied: the last stage holds a copy of the embedding; DeepSpeed all-reduces its gradient with
    # the first stage's so both copies stay equal.
    # The pipeline keeps the full head (model.output_head applies to PP = 1): projecting the scored
    # rows inside the loss matched one process in fp32 but drifted after the first update in bf16.
    layers.append(TiedLayerSpec("embed", EmbeddingStage, *embed_args, forward_fn=tied_output_logits,
                                tied_weight_attr=tied_attr)
                  if m.tie_embeddings else LayerSpec(OutputStage, config, vocab_size))
    module = PipelineModule(
        layers=layers, loss_fn=PipelineLoss(), topology=topology(tp, pp, dp),
        partition_method="type:TransformerLayerStage",
        # recompute is applied to this stage's layers below, as in the non-pipelined model
        # (DeepSpeed's own checkpointing replays its RNG tracker, not the attention stream)
        activation_checkpoint_interval=0)
    stage_layers = [sub for sub in module.modules() if isinstance(sub, TransformerLayerStage)]
    checkpoint_layer_activations(stage_layers[:m.recomputed_layers(len(stage_layers))])
    match_parameter_dtype(module, compute_dtype(cfg.parallel.precision))
    init_by_name(global_named_parameters(module), cfg.run.seed, m.init_std, m.num_layers, m.init_from)
    return module


def global_named_parameters(module: torch.nn.Module):
    """(GPTModel-style global name, parameter) for every parameter of this rank's stages."""
    seen = set()
    for sub in module.modules():
        if hasattr(sub, "global_name") and isinstance(sub, torch.nn.Module):
            for local, p in sub.named_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield sub.global_name(local), p


def _ranks(group) -> list[int]:
    return sorted(dist.get_process_group_ranks(group))


def check_groups_match(grid) -> None:
    """DeepSpeed's pipeline grid must put every rank in the same TP/PP/DP groups as megatron-core."""
    from megatron.core import parallel_state as ps

    ours = {"tp": _ranks(ps.get_tensor_model_parallel_group()),
            "pp": _ranks(ps.get_pipeline_model_parallel_group()),
            "dp": _ranks(ps.get_data_parallel_group())}
    theirs = {"tp": sorted(grid.slice_group), "pp": sorted(grid.pp_group), "dp": sorted(grid.dp_group)}
    if ours != theirs:
        raise TrainingError(f"rank {dist.get_rank()}: DeepSpeed's pipeline groups {theirs} differ from "
                            f"megatron-core's {ours}; this is a bug in megadlm's rank layout")
