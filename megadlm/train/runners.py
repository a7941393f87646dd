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
from megadlm.errors import TrainingError
from megadlm.objectives import ObjectiveBatch, weighted_loss
from megadlm.parallel import distributed as pdist


@dataclass
class StepResult:
    loss: float  # mean micro-batch loss over the global batch
    masked_ce_sum: float
    masked_count: float


@dataclass
class EvalSums:
    weighted: float  # sum of weight * CE over all scored tokens
    tokens: float
    masked_ce_sum: float
    masked_count: float


def _nonfinite_loss(step: int, applied: bool) -> TrainingError:
    where = ("the step was applied in memory but not saved" if applied
             else "the step was not applied")
    return TrainingError(f"loss is NaN/inf at step {step}: {where} and no checkpoint was written. "
                         f"Lower optim.lr, check the data, or resume from the last checkpoint")


def deepspeed_config(cfg: Config, grad_accum: int, bf16: bool) -> dict:
    o = cfg.optim
    return {
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


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (incl. embeddings), none on norms and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class EngineRunner:
    def __init__(self, cfg: Config, padded_vocab: int, layout: pdist.Layout, grad_accum: int, bf16: bool):
        import deepspeed

        from megadlm.model.build import build_model

        model = build_model(cfg, padded_vocab)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=parameter_groups(model, cfg.optim.weight_decay),
            config=deepspeed_config(cfg, grad_accum, bf16), mpu=pdist.MegatronMPU())
        self.device = pdist.device()
        self.dp_group = pdist.data_parallel_group()

    def _forward(self, batch: ObjectiveBatch):
        batch = batch.to(self.device)
        positions = torch.arange(batch.inputs.size(1), device=self.device).unsqueeze(0).expand_as(batch.inputs)
        token_ce = self.engine(batch.inputs, positions, None, labels=batch.labels)
        return weighted_loss(token_ce, batch)

    def train_step(self, batches: list[ObjectiveBatch], step: int) -> StepResult:
        sums = torch.zeros(3, dtype=torch.float64)
        for batch in batches:
            parts = self._forward(batch)
            # Agree across all ranks before anything is applied, so no rank steps or saves a NaN.
            bad = torch.tensor([0.0 if torch.isfinite(parts.loss.detach()) else 1.0], device=self.device)
            if dist.get_world_size() > 1:
                dist.all_reduce(bad)
            if bad.item() > 0:
                raise _nonfinite_loss(step, applied=False)
            self.engine.backward(parts.loss)
            self.engine.step()
            sums += torch.tensor([parts.loss.item(), parts.masked_ce_sum.item(), parts.masked_count.item()],
                                 dtype=torch.float64)
        loss, masked_ce, masked = pdist.all_reduce_sum(sums.tolist(), self.dp_group)
        dp = dist.get_world_size(self.dp_group)
        return StepResult(loss / (len(batches) * dp), masked_ce, masked)

    @torch.no_grad()
    def evaluate(self, batches: list[ObjectiveBatch]) -> EvalSums:
        self.engine.eval()
        sums = torch.zeros(4, dtype=torch.float64)
        try:
            for batch in batches:
                parts = self._forward(batch)
                sums += torch.tensor([parts.weighted_sum.item(), float(parts.tokens), parts.masked_ce_sum.item(),
                                      parts.masked_count.item()], dtype=torch.float64)
        finally:
            self.engine.train()
        return EvalSums(*pdist.all_reduce_sum(sums.tolist(), self.dp_group))


class PipelineRunner:
    def __init__(self, cfg: Config, padded_vocab: int, layout: pdist.Layout, grad_accum: int, bf16: bool):
        import deepspeed

        from megadlm.parallel.pipeline import build_pipeline, check_groups_match

        module = build_pipeline(cfg, padded_vocab, layout.tp, layout.pp, layout.dp).to(pdist.device())
        check_groups_match(module._grid)
        self.loss_fn = module.loss_fn
        self.engine, _, _, _ = deepspeed.initialize(
            model=module, model_parameters=parameter_groups(module, cfg.optim.weight_decay),
            config=deepspeed_config(cfg, grad_accum, bf16))
        self.layout = layout
        self.micro_batch = cfg.schedule.micro_batch_size
        # Rank that reports the last stage's sums: TP rank 0 of the last stage of each replica.
        self.reporter = layout.pp_rank == layout.pp - 1 and layout.tp_rank == 0

    @staticmethod
    def _as_pipe_batch(batch: ObjectiveBatch):
        valid = torch.ones(batch.labels.shape, dtype=torch.float32)
        return batch.inputs, (batch.labels, batch.weights, batch.masked.float(), valid)

    def _reported_sums(self) -> list[float]:
        sums = self.loss_fn.sums if self.reporter else torch.zeros(4, dtype=torch.float64)
        return pdist.all_reduce_sum(sums.tolist())  # whole world; only reporters contribute

    def train_step(self, batches: list[ObjectiveBatch], step: int) -> StepResult:
        self.loss_fn.reset()
        loss = self.engine.train_batch(data_iter=iter([self._as_pipe_batch(b) for b in batches]))
        _, masked_ce, masked, _ = self._reported_sums()
        loss = float(loss)
        if not math.isfinite(loss):
            raise _nonfinite_loss(step, applied=True)
        return StepResult(loss, masked_ce, masked)

    def evaluate(self, batches: list[ObjectiveBatch]) -> EvalSums:
        """Every rank must make the same eval_batch call: pad to the same number of full-size
        micro-batches everywhere (padding rows have zero weight and count no tokens)."""
        count = torch.tensor([float(len(batches))], device=pdist.device())
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        pipe_batches = [self._padded(b) for b in batches]
        while len(pipe_batches) < int(count.item()):
            pipe_batches.append(self._empty_like(pipe_batches[0] if pipe_batches else None))
        self.loss_fn.reset()
        if pipe_batches:
            self.engine.eval_batch(data_iter=iter(pipe_batches), num_micro_batches=len(pipe_batches))
        weighted, masked_ce, masked, tokens = self._reported_sums()
        return EvalSums(weighted, tokens, masked_ce, masked)

    def _padded(self, batch: ObjectiveBatch):
        ids, (labels, weights, masked, valid) = self._as_pipe_batch(batch)
        missing = self.micro_batch - ids.size(0)
        if missing == 0:
            return ids, (labels, weights, masked, valid)
        pad = lambda t: torch.cat([t, torch.zeros((missing, *t.shape[1:]), dtype=t.dtype)])  # noqa: E731
        return pad(ids), (pad(labels), pad(weights), pad(masked), pad(valid))

    def _empty_like(self, template):
        if template is None:
            raise TrainingError("this rank has no validation data while others do: "
                                "raise data.val_max_samples or lower the data-parallel size")
        ids, labels = template
        return torch.zeros_like(ids), tuple(torch.zeros_like(t) for t in labels)


def build_runner(cfg: Config, padded_vocab: int, layout: pdist.Layout, grad_accum: int, bf16: bool):
    runner = PipelineRunner if layout.pp > 1 else EngineRunner
    return runner(cfg, padded_vocab, layout, grad_accum, bf16)
