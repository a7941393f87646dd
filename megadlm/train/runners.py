"""How a step runs on a layout: the trainer hands a runner the micro-batches of one optimizer step
and gets back globally reduced numbers; it never branches on the layout itself.

- `EngineRunner` (PP = 1): megatron-core GPTModel inside a DeepSpeed engine, ZeRO 0-3.
- `PipelineRunner` (PP > 1): DeepSpeed PipelineModule of megatron-core stages, ZeRO-1.
Both start from the same weights (name-based init) and compute the same loss, so any layout can
be compared with one process.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megadlm.config.schema import Config
from megadlm.errors import DivergenceError
from megadlm.objectives import ObjectiveBatch, weighted_loss
from megadlm.parallel import distributed as pdist
from megadlm.parallel.output_head import IGNORE
from megadlm.parallel.partial_grads import sum_partial_grads_over_tp
from megadlm.train.universal import drop_none_extra_state, universal_info


@dataclass
class StepResult:
    loss: float  # mean micro-batch loss over the global batch
    masked_ce_sum: float
    masked_count: float
    grad_norm: float | None  # before clipping, over all parameters of the model


@dataclass
class EvalSums:
    weighted: float  # sum of weight * CE over all scored tokens
    tokens: float
    masked_ce_sum: float
    masked_count: float


def _nonfinite_loss(step: int) -> DivergenceError:
    return DivergenceError(f"loss is NaN/inf at step {step}: the step was not saved and no checkpoint was "
                           f"written. Lower optim.lr, check the data, set run.on_nan=skip, or resume from "
                           f"the last checkpoint")


def deepspeed_config(cfg: Config, grad_accum: int, bf16: bool, load_universal: bool = False) -> dict:
    o = cfg.optim
    config = {
        "checkpoint": {"load_universal": load_universal},
        "train_batch_size": cfg.schedule.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.schedule.micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": o.grad_clip,
        "zero_optimization": {"stage": cfg.parallel.zero_stage},
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "optimizer": {"type": "AdamW", "params": {
            "lr": o.lr, "betas": [o.beta1, o.beta2], "eps": o.eps, "weight_decay": o.weight_decay,
            "torch_adam": True}},
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }
    if bf16:
        # Left unset, DeepSpeed sums the micro-batch gradients in the model dtype: a bf16 sum of 64-256
        # micro-batches (the paper grids) drops the low bits of every late addend. It also reduces
        # them over data-parallel ranks in bf16, rounding the final sum once more. Both in fp32: ZeRO-1
        # (and the pipeline) then run DeepSpeed's BF16_Optimizer, ZeRO-2/3 keep fp32 gradient partitions.
        config["data_types"] = {"grad_accum_dtype": "fp32"}
        config["communication_data_type"] = "fp32"
    return config


def model_targets(batch: ObjectiveBatch) -> torch.Tensor:
    """The labels the model scores: positions without a loss weight (MDM's unmasked tokens,
    validation padding) are IGNORE, so the output head neither projects nor scores them."""
    return batch.labels.masked_fill(batch.weights == 0, IGNORE)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (incl. embeddings), none on norms and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class EngineRunner:
    def __init__(self, cfg: Config, padded_vocab: int, layout: pdist.Layout, grad_accum: int, bf16: bool,
                 load_universal: bool = False):
        import deepspeed

        from megadlm.model.build import build_model

        model = build_model(cfg, padded_vocab)
        sum_partial_grads_over_tp(model.named_parameters())
        drop_none_extra_state(model)
        self.universal_info = universal_info(model.named_parameters(), pipeline=False,
                                             gated_mlp=cfg.model.activation == "swiglu")
        self.deepspeed_config = deepspeed_config(cfg, grad_accum, bf16, load_universal)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=parameter_groups(model, cfg.optim.weight_decay),
            config=self.deepspeed_config, mpu=pdist.MegatronMPU())
        self.device = pdist.device()
        self.dp_group = pdist.data_parallel_group()
        self.zero_stage = cfg.parallel.zero_stage

    def _grad_norm_without_zero(self) -> float:
        """ZeRO-0 clips through DeepSpeed's clip_grad_norm_ and drops the norm it computed: measure
        it the same way (TP shards counted once). max_norm=inf scales every gradient by exactly 1."""
        from deepspeed.runtime.utils import clip_grad_norm_

        return float(clip_grad_norm_(self.engine.module.parameters(), max_norm=math.inf, mpu=self.engine.mpu))

    def _forward(self, batch: ObjectiveBatch):
        batch = batch.to(self.device)
        positions = (torch.arange(batch.inputs.size(1), device=self.device).unsqueeze(0)
                     .expand_as(batch.inputs))
        token_ce = self.engine(batch.inputs, positions, None, labels=model_targets(batch))
        return weighted_loss(token_ce, batch)

    def train_step(self, batches: list[ObjectiveBatch], step: int) -> StepResult:
        # Sums stay on the device (one host sync per step, not per micro-batch):
        # loss, masked CE, masked count, non-finite losses.
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        for index, batch in enumerate(batches):
            parts = self._forward(batch)
            loss = parts.loss.detach().double()
            sums += torch.stack([loss, parts.masked_ce_sum.double(), parts.masked_count.double(),
                                 (~torch.isfinite(loss)).double()])
            self.engine.backward(parts.loss)
            if index == len(batches) - 1:
                norm = self._grad_norm_without_zero() if self.zero_stage == 0 else None
            self.engine.step()
        # All ranks agree whether any saw a NaN/inf loss. The update is then discarded: the run
        # stops, or rolls back to the last checkpoint (run.on_nan), so it is never saved. (The
        # engine still stepped, to keep its accumulation counters and gradient buffers consistent.)
        bad = sums[3:].clone()
        if dist.get_world_size() > 1:
            dist.all_reduce(bad)
        if bad.item() > 0:
            raise _nonfinite_loss(step)
        loss, masked_ce, masked, _ = pdist.all_reduce_sum(sums.tolist(), self.dp_group)
        dp = dist.get_world_size(self.dp_group)
        if self.zero_stage > 0:
            norm = self.engine.get_global_grad_norm()
        return StepResult(loss / (len(batches) * dp), masked_ce, masked, norm)

    @torch.no_grad()
    def evaluate(self, batches: list[ObjectiveBatch]) -> EvalSums:
        self.engine.eval()
        sums = torch.zeros(4, dtype=torch.float64)
        try:
            for batch in batches:
                parts = self._forward(batch)
                sums += torch.tensor([parts.weighted_sum.item(), float(parts.tokens),
                                      parts.masked_ce_sum.item(), parts.masked_count.item()],
                                     dtype=torch.float64)
        finally:
            self.engine.train()
        return EvalSums(*pdist.all_reduce_sum(sums.tolist(), self.dp_group))


class PipelineRunner:
    def __init__(self, cfg: Config, padded_vocab: int, layout: pdist.Layout, grad_accum: int, bf16: bool,
                 load_universal: bool = False):
        import deepspeed

        from megadlm.parallel.pipeline import build_pipeline, check_groups_match

        module = build_pipeline(cfg, padded_vocab, layout.tp, layout.pp, layout.dp).to(pdist.device())
        check_groups_match(module._grid)
        sum_partial_grads_over_tp(module.named_parameters())
        drop_none_extra_state(module)
        self.universal_info = universal_info(module.named_parameters(), pipeline=True,
                                             gated_mlp=cfg.model.activation == "swiglu")
        self.loss_fn = module.loss_fn
        self.deepspeed_config = deepspeed_config(cfg, grad_accum, bf16, load_universal)
        self.engine, _, _, _ = deepspeed.initialize(
            model=module, model_parameters=parameter_groups(module, cfg.optim.weight_decay),
            config=self.deepspeed_config)
        # Rank that reports the last stage's sums: TP rank 0 of the last stage of each replica.
        self.reporter = layout.pp_rank == layout.pp - 1 and layout.tp_rank == 0

    @staticmethod
    def _as_pipe_batch(batch: ObjectiveBatch):
        rows = torch.ones(batch.labels.size(0)) if batch.row_valid is None else batch.row_valid.float()
        valid = rows[:, None].expand(batch.labels.shape).contiguous()
        return batch.inputs, (model_targets(batch), batch.weights, batch.masked.float(), valid)

    def _reported_sums(self) -> list[float]:
        sums = self.loss_fn.sums if self.reporter else None
        if sums is None:  # not a reporter, or no micro-batch ran here
            sums = torch.zeros(4, dtype=torch.float64, device=pdist.device())
        return pdist.all_reduce_sum(sums)  # whole world; only reporters contribute

    def train_step(self, batches: list[ObjectiveBatch], step: int) -> StepResult:
        self.loss_fn.reset()
        loss = self.engine.train_batch(data_iter=iter([self._as_pipe_batch(b) for b in batches]))
        _, masked_ce, masked, _ = self._reported_sums()
        loss = float(loss)
        if not math.isfinite(loss):
            raise _nonfinite_loss(step)
        return StepResult(loss, masked_ce, masked, self.engine.get_global_grad_norm())

    def evaluate(self, batches: list[ObjectiveBatch]) -> EvalSums:
        """`batches` are full-size and equally many on every rank (evaluate.validate pads them)."""
        self.loss_fn.reset()
        if batches:
            self.engine.eval_batch(data_iter=iter([self._as_pipe_batch(b) for b in batches]),
                                   num_micro_batches=len(batches))
        weighted, masked_ce, masked, tokens = self._reported_sums()
        return EvalSums(weighted, tokens, masked_ce, masked)


def build_runner(cfg: Config, padded_vocab: int, layout: pdist.Layout, grad_accum: int, bf16: bool,
                 load_universal: bool = False):
    runner = PipelineRunner if layout.pp > 1 else EngineRunner
    return runner(cfg, padded_vocab, layout, grad_accum, bf16, load_universal)
