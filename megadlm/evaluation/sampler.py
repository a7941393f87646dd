"""Text generation from a masked diffusion model by iterative unmasking.

Start from the prompt followed by `gen_length` [MASK] tokens. The masks are filled block by block
(semi-autoregressive when block_length < gen_length); within a block, each of `steps / blocks` steps
predicts every masked position and commits the ones the model is most sure of ("low_confidence"
remasking keeps the rest masked) or a random subset ("random"). With temperature > 0 the prediction
is drawn by the Gumbel-max trick in float64 (low-precision Gumbel noise skews the samples).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from megadlm.errors import UserError
from megadlm.evaluation.likelihood import Forward

REMASKING = ("low_confidence", "random")


def tokens_per_step(block_length: int, steps: int) -> list[int]:
    """How many masks to fill at each of `steps` steps so that a block is full after the last one."""
    base, extra = divmod(block_length, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def check_schedule(gen_length: int, steps: int, block_length: int, remasking: str = "low_confidence") -> None:
    problems = []
    if gen_length < 1 or steps < 1 or block_length < 1:
        problems.append("gen_length, steps and block_length must be >= 1")
    elif gen_length % block_length:
        problems.append(f"block_length {block_length} must divide gen_length {gen_length}")
    elif steps % (gen_length // block_length):
        problems.append(f"steps {steps} must be a multiple of the number of blocks "
                        f"{gen_length // block_length}")
    elif steps // (gen_length // block_length) > block_length:
        problems.append(f"steps {steps} exceed gen_length {gen_length}: at most one step per token")
    if remasking not in REMASKING:
        problems.append(f"remasking {remasking!r} must be one of {', '.join(REMASKING)}")
    if problems:
        raise UserError("bad sampling schedule: " + "; ".join(problems))


def scaled_schedule(gen_length: int, steps: int, block_length: int, new_length: int) -> tuple[int, int]:
    """(steps, block_length) for a generation of `new_length` tokens instead of `gen_length` (a task's
    max_gen_toks below --gen-length): as many tokens per step as the configured schedule, to the
    nearest whole step, and the same block length where it divides `new_length` (else one block)."""
    if new_length == gen_length:
        return steps, block_length
    block = block_length if new_length % block_length == 0 else new_length
    per_block = max(1, min(block, round(steps / gen_length * block)))
    return per_block * (new_length // block), block


@torch.no_grad()
def diffusion_generate(forward: Forward, prompt: Sequence[int], mask_id: int, gen_length: int,
                       steps: int | None = None, block_length: int | None = None, temperature: float = 0.0,
                       remasking: str = "low_confidence", banned_ids: Sequence[int] = (),
                       generator: torch.Generator | None = None) -> list[int]:
    """The `gen_length` generated token ids (no [MASK] left). `banned_ids` (the mask token itself,
    vocabulary padding) are never produced."""
    steps = steps or gen_length
    block_length = block_length or gen_length
    check_schedule(gen_length, steps, block_length, remasking)
    generator = generator or torch.Generator().manual_seed(0)
    p = len(prompt)
    x = torch.tensor([[*prompt, *([mask_id] * gen_length)]], dtype=torch.long)
    banned = torch.tensor(sorted({mask_id, *banned_ids}), dtype=torch.long)
    blocks = gen_length // block_length
    schedule = tokens_per_step(block_length, steps // blocks)
    for block in range(blocks):
        lo, hi = p + block * block_length, p + (block + 1) * block_length
        for count in schedule:
            logits = forward(x)[0].double()
            logits[:, banned] = float("-inf")
            if temperature > 0:
                uniform = torch.rand(logits.shape, generator=generator, dtype=torch.float64)
                gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-300)))
                choice = (logits / temperature + gumbel).argmax(dim=-1)
            else:
                choice = logits.argmax(dim=-1)
            if remasking == "low_confidence":
                confidence = torch.softmax(logits, dim=-1).gather(-1, choice.unsqueeze(-1)).squeeze(-1)
            else:
                confidence = torch.rand(choice.shape, generator=generator, dtype=torch.float64)
            eligible = torch.zeros_like(confidence, dtype=torch.bool)
            eligible[lo:hi] = x[0, lo:hi] == mask_id
            confidence[~eligible] = float("-inf")
            picked = confidence.topk(count).indices
            x[0, picked] = choice[picked]
    assert not (x[0, p:] == mask_id).any(), "the sampler left a mask"
    return x[0, p:].tolist()
