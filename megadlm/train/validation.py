"""The validation component: when to validate, and the score on the held-out split, comparable
across evaluations and runs.

AR: mean next-token NLL. MDM: the ELBO per token (CE/p over masked tokens, / all tokens) with masks
drawn from a FIXED seed (objective.val_mask_seed, epoch 0), so every evaluation of every checkpoint
scores the same corruptions. Both in nats/token and bits/byte (bytes per token from the manifest).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from megadlm.config.schema import Config
from megadlm.objectives import ObjectiveBatch, make_batch


class Validator:
    """`due(step)`: every `logging.eval_interval` steps (default once per epoch) and at the last
    step, when there is a validation split. `run(...)`: a collective over every rank."""

    def __init__(self, cfg: Config, runner: Any, val_data: Any, steps_per_epoch: int, total_steps: int,
                 mask_id: int, device: torch.device):
        self.cfg, self.runner, self.val = cfg, runner, val_data
        self.interval = cfg.logging.eval_interval or steps_per_epoch
        self.total_steps = total_steps
        self.mask_id = mask_id
        self.device = device

    def due(self, step: int) -> bool:
        if not self.val.available:
            return False
        return step % self.interval == 0 or step == self.total_steps

    def run(self) -> dict:
        """The validation scores (val_loss, val_tokens, val_bits_per_byte, val_masked_ce for MDM)."""
        sums = self.runner.evaluate(self._equal_batches(self.cfg.schedule.micro_batch_size))
        val_loss = sums.weighted / sums.tokens
        result = {"val_loss": val_loss, "val_tokens": int(sums.tokens)}
        if self.val.bytes_per_token:
            result["val_bits_per_byte"] = val_loss / math.log(2) / self.val.bytes_per_token
        if self.cfg.objective.type == "mdm":
            result["val_masked_ce"] = sums.masked_ce_sum / sums.masked_count if sums.masked_count else None
        return result

    def _batch(self, tokens: torch.Tensor, ids: torch.Tensor) -> ObjectiveBatch:
        return make_batch(self.cfg.objective, tokens, ids, 0, self.cfg.objective.val_mask_seed, self.mask_id,
                          self.cfg.data.seq_len, train=False)

    def _equal_batches(self, batch_size: int) -> list[ObjectiveBatch]:
        """This rank's validation micro-batches, all full-size and equally many on every rank.

        Data-parallel ranks can hold one sequence more or less than each other, but ZeRO-3 gathers
        parameters and the pipeline schedule communicates on every forward, so every rank must run
        the same number of same-shape forwards: short batches get padding rows, short ranks padding
        batches."""
        batches = []
        for tokens, ids in self.val.batches(batch_size):
            real = tokens.size(0)
            if real < batch_size:
                tokens = torch.cat([tokens, tokens.new_zeros(batch_size - real, tokens.size(1))])
                ids = torch.cat([ids, ids.new_zeros(batch_size - real)])
            batches.append(self._batch(tokens, ids).with_padding_rows(real))
        count = torch.tensor([float(len(batches))], device=self.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(count, op=dist.ReduceOp.MAX)
        empty_tokens = torch.zeros(batch_size, self.cfg.data.seq_len + 1, dtype=torch.int64)
        while len(batches) < int(count.item()):
            empty = self._batch(empty_tokens, torch.zeros(batch_size, dtype=torch.int64))
            batches.append(empty.with_padding_rows(0))
        return batches
