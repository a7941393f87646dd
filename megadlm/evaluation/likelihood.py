"""Log-likelihood of a continuation under a masked diffusion model (MDM).

An MDM has no single left-to-right factorisation; its training loss bounds -log p(r | p) by

    E_{l ~ U{1..Lr}} E_{S: l of the Lr continuation positions}
        [ (Lr / l) * sum_{i in S} -log p(r_i | p, r_{not S}) ]

(the prompt p is never masked). That expectation equals the chain rule averaged over uniformly random
unmasking orders, so `mc_elbo` converges to `exact_elbo` (all 2^Lr - 1 masks enumerated) as mc_num
grows. `chain_rule` is one order's exact likelihood: left to right, one row per token.

`forward(ids [b, s]) -> logits [b, s, V]`, where logits at position i predict the clean token at i.
All estimators return log-likelihoods (higher is better), in nats.
"""
from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Sequence

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]

ESTIMATORS = ("mc_elbo", "chain_rule")
EXACT_ELBO_MAX_TOKENS = 12


def _token_nll(forward: Forward, x: torch.Tensor, start: int, target: torch.Tensor) -> torch.Tensor:
    """-log p(target_j | x) at positions start.. of every row of x: [b, len(target)], in float64."""
    logits = forward(x)[:, start:start + target.numel()].double()
    logp = torch.log_softmax(logits, dim=-1)
    return -logp.gather(-1, target.view(1, -1, 1).expand(x.size(0), -1, 1)).squeeze(-1)


def stratified_mask_counts(length: int, mc_num: int, generator: torch.Generator) -> torch.Tensor:
    """mc_num draws of l ~ U{1..length}, stratified: one uniform offset, then evenly spaced quantiles,
    so every mini-batch covers light and heavy masking alike (lower variance than i.i.d. draws)."""
    offset = torch.rand((), generator=generator, dtype=torch.float64)
    u = (torch.arange(mc_num, dtype=torch.float64) + offset) / mc_num
    return (1 + torch.floor(u * length)).long().clamp_(1, length)


def mc_elbo(forward: Forward, prompt: Sequence[int], continuation: Sequence[int], mask_id: int,
            mc_num: int = 128, batch_size: int = 32, generator: torch.Generator | None = None) -> float:
    """Monte-Carlo ELBO of log p(continuation | prompt). A one-token continuation has one possible
    mask, so it is scored exactly with a single forward pass whatever mc_num is."""
    if not continuation:
        return 0.0
    generator = generator or torch.Generator().manual_seed(0)
    p, r = len(prompt), len(continuation)
    seq = torch.tensor([*prompt, *continuation], dtype=torch.long)
    target = seq[p:]
    counts = stratified_mask_counts(r, 1 if r == 1 else mc_num, generator)
    total = 0.0
    for chunk in counts.split(batch_size):
        b = chunk.numel()
        # exactly l masked per row: the l smallest of r random keys
        ranks = torch.rand(b, r, generator=generator).argsort(dim=1).argsort(dim=1)
        masked = ranks < chunk.view(-1, 1)
        x = seq.repeat(b, 1)
        x[:, p:][masked] = mask_id
        nll = _token_nll(forward, x, p, target)
        total += ((nll * masked).sum(dim=1) * (r / chunk.double())).sum().item()
    return -total / counts.numel()


def chain_rule(forward: Forward, prompt: Sequence[int], continuation: Sequence[int], mask_id: int,
               batch_size: int = 32) -> float:
    """Exact log-likelihood of the left-to-right order: continuation token i is scored with the tokens
    before it revealed and the rest masked. The Lr rows do not depend on each other's outputs, so they
    go through the model `batch_size` rows per forward pass instead of one pass per token."""
    p, r = len(prompt), len(continuation)
    if r == 0:
        return 0.0
    seq = torch.tensor([*prompt, *continuation], dtype=torch.long)
    target = seq[p:]
    total = 0.0
    for start in range(0, r, batch_size):
        rows = torch.arange(start, min(start + batch_size, r))
        x = seq.repeat(rows.numel(), 1)
        x[:, p:][torch.arange(r).view(1, -1) >= rows.view(-1, 1)] = mask_id  # row i reveals tokens < i
        logits = forward(x)[torch.arange(rows.numel()), p + rows].double()
        total += torch.log_softmax(logits, dim=-1).gather(-1, target[rows].view(-1, 1)).sum().item()
    return total


def exact_elbo(forward: Forward, prompt: Sequence[int], continuation: Sequence[int], mask_id: int,
               batch_size: int = 64) -> float:
    """The ELBO itself, every mask enumerated (2^Lr - 1 forward rows): the value `mc_elbo` estimates.
    Only for short continuations (<= 12 tokens)."""
    r = len(continuation)
    if r > EXACT_ELBO_MAX_TOKENS:
        raise ValueError(f"exact_elbo enumerates 2^{r} masks; use it for <= {EXACT_ELBO_MAX_TOKENS} tokens")
    p = len(prompt)
    seq = torch.tensor([*prompt, *continuation], dtype=torch.long)
    subsets = [s for k in range(1, r + 1) for s in itertools.combinations(range(r), k)]
    total = 0.0
    for start in range(0, len(subsets), batch_size):
        chunk = subsets[start:start + batch_size]
        masked = torch.zeros(len(chunk), r, dtype=torch.bool)
        for row, s in enumerate(chunk):
            masked[row, list(s)] = True
        x = seq.repeat(len(chunk), 1)
        x[:, p:][masked] = mask_id
        nll = (_token_nll(forward, x, p, seq[p:]) * masked).sum(dim=1)
        sizes = masked.sum(dim=1)
        weights = torch.tensor([1.0 / (int(k) * math.comb(r, int(k))) for k in sizes], dtype=torch.float64)
        total += (nll * weights).sum().item()
    return -total


def is_greedy(forward: Forward, prompt: Sequence[int], continuation: Sequence[int], mask_id: int) -> bool:
    """LLaDA's suffix-greedy rule: from the fully masked continuation, reveal one position per forward
    pass, the masked position the model is most confident about, with its argmax token (never
    [MASK]); the continuation is greedy when that decode reproduces it. This is what the sampler does
    at temperature 0 with one token per step, so its greedy output always passes. A revealed token is
    never changed again, so the first wrong one decides (fewer passes than tokens)."""
    if not continuation:
        return True
    p = len(prompt)
    target = torch.tensor(list(continuation), dtype=torch.long)
    x = torch.tensor([[*prompt, *([mask_id] * len(continuation))]], dtype=torch.long)
    for _ in range(len(continuation)):
        masked = (x[0, p:] == mask_id).nonzero().squeeze(-1)
        logits = forward(x)[0, p + masked].double()
        logits[:, mask_id] = float("-inf")
        confidence, token = torch.softmax(logits, dim=-1).max(dim=-1)
        best = int(confidence.argmax())
        position = int(masked[best])
        if int(token[best]) != int(target[position]):
            return False
        x[0, p + position] = token[best]
    return True


def content_seed(seed: int, *token_lists: Sequence[int]) -> int:
    """A seed from the run seed and token sequences (sha256): a request's random numbers then depend on
    what it is, not on where it sits in the request list, so its score is the same whatever the task
    order, task mix, --limit or sharding over ranks."""
    digest = hashlib.sha256(str(int(seed)).encode())
    for tokens in token_lists:
        digest.update(b"|" + ",".join(str(int(t)) for t in tokens).encode())
    return int.from_bytes(digest.digest()[:8], "little") >> 1  # torch seeds are < 2**63
