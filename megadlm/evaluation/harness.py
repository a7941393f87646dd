"""lm-evaluation-harness model type `megadlm_mdm`: exported masked diffusion models scored by the
ELBO and sampled by iterative unmasking.

    lm_eval --model megadlm_mdm --model_args pretrained=DIR,mc_num=128 --tasks ...   (after importing
    megadlm.evaluation.harness) or `megadlm eval`, which registers it. Under torchrun (`megadlm eval
    --nproc N`) the requests are shared between the ranks by lm-eval itself (ranks.py).

Every estimate is seeded by the request's content (run seed, context tokens), so a score does not
depend on task order, task mix, --limit or batch composition, and reruns are identical. The choices
of one question share a context, hence their random masks (common random numbers): the noise of the
estimates cancels in the comparison that decides the accuracy.
"""
from __future__ import annotations

import logging

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from megadlm.evaluation import likelihood
from megadlm.evaluation.models import EvalError, load_diffusion_model, resolve_hf_dir
from megadlm.evaluation.ranks import RankCollectives, join_ranks, rank_device
from megadlm.evaluation.sampler import check_schedule, diffusion_generate, scaled_schedule

log = logging.getLogger(__name__)


def _bool(value) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


@register_model("megadlm_mdm")
class MegadlmDiffusionLM(RankCollectives, TemplateLM):
    backend = "causal"  # how lm-eval splits context/continuation tokens; attention is bidirectional

    def __init__(self, pretrained: str, estimator: str = "mc_elbo", mc_num: int = 128,
                 mc_batch_size: int = 32, seed: int = 1234, gen_length: int | None = None,
                 steps: int | None = None, block_length: int | None = None, temperature: float = 0.0,
                 remasking: str = "low_confidence",
                 dtype: str = "float32", device: str | None = None, **_ignored):
        super().__init__()
        if estimator not in likelihood.ESTIMATORS:
            raise EvalError(f"estimator {estimator!r} must be one of {', '.join(likelihood.ESTIMATORS)}")
        # an HF export, or a megadlm checkpoint / run directory (exported beside it on first use)
        hf_dir, self.source = resolve_hf_dir(str(pretrained))
        # under torchrun, lm-eval gives each rank its share of every task (ranks.py)
        self._rank, self._world_size = join_ranks()
        device = rank_device(device or "cpu")
        self._device = torch.device(device)
        self.lm = load_diffusion_model(hf_dir, device=device, dtype=dtype)
        self.tokenizer = self.lm.tokenizer
        self.estimator, self.mc_num, self.mc_batch_size = estimator, int(mc_num), int(mc_batch_size)
        if self.mc_num < 1:
            raise EvalError("mc_num must be >= 1")
        self.seed = int(seed)
        self._warned_truncation = False
        self.gen_length = int(gen_length or max(1, self.lm.max_length // 2))
        self.steps = int(steps or self.gen_length)
        self.block_length = int(block_length or self.gen_length)
        self.temperature, self.remasking = float(temperature), remasking
        check_schedule(self.gen_length, self.steps, self.block_length, remasking)
        self.schedules_run: set[tuple[int, int, int]] = set()  # (gen_length, steps, block_length)
        if self.gen_length >= self.max_length:
            raise EvalError(f"gen_length {self.gen_length} leaves no room for a prompt in the model's "
                            f"{self.max_length} positions: use at most {self.max_length - 1}")

    # --- what TemplateLM needs ---------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.lm.eos_id

    @property
    def max_length(self) -> int:
        return self.lm.max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=False)

    def tok_decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def estimator_record(self) -> dict:
        """What the numbers depend on, for the results file."""
        return {"estimator": self.estimator, "mc_num": self.mc_num if self.estimator == "mc_elbo" else None,
                "seed": self.seed, "single_token_exact": True, "gen_length": self.gen_length,
                "steps": self.steps, "block_length": self.block_length, "temperature": self.temperature,
                "remasking": self.remasking, "ranks": self._world_size}

    def _quiet(self, disable_tqdm: bool) -> bool:
        return disable_tqdm or self._rank != 0  # one progress bar per launch: rank 0's share

    # --- scoring ----------------------------------------------------------------------------------
    def _fit(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """Keep the sequence within the trained length: drop the oldest context tokens first."""
        over = len(context) + len(continuation) - self.max_length
        if over > 0:
            if not self._warned_truncation:
                log.warning("requests longer than the model's %d positions lose their oldest context tokens "
                            "(first one: %d tokens)", self.max_length, len(context) + len(continuation))
                self._warned_truncation = True
            dropped_from_context = min(over, max(len(context) - 1, 0))
            context = context[dropped_from_context:]
            continuation = continuation[over - dropped_from_context:]
        return context, continuation

    def _score(self, context: list[int], continuation: list[int], shared: bool = True) -> float:
        """Log-likelihood of a request that already fits the model (see `_fit`). `shared`: seeded by
        the context alone, so every continuation of one context draws the same random numbers;
        otherwise by both (rolling windows: distinct documents must not share their noise)."""
        forward = self.lm.forward
        if self.estimator == "chain_rule":
            return likelihood.chain_rule(forward, context, continuation, self.lm.mask_id, self.mc_batch_size)
        seed = likelihood.content_seed(self.seed, context, *([] if shared else [continuation]))
        generator = torch.Generator().manual_seed(seed)
        return likelihood.mc_elbo(forward, context, continuation, self.lm.mask_id, self.mc_num,
                                  self.mc_batch_size, generator)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False,
                              **kwargs) -> list[tuple[float, bool]]:
        out = []
        bar = tqdm(requests, desc="MDM loglikelihood", disable=self._quiet(disable_tqdm))
        for _, context, continuation in bar:
            context, continuation = self._fit(context, continuation)
            score = self._score(context, continuation)
            greedy = likelihood.is_greedy(self.lm.forward, context, continuation, self.lm.mask_id)
            out.append((score, greedy))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for request in tqdm(requests, desc="MDM rolling loglikelihood", disable=self._quiet(disable_tqdm)):
            (text,) = request.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length - 1, context_len=1)]  # no shift: context + window <= max_length
            out.append(sum(self._score(ctx, cont, shared=False) for ctx, cont in windows))
        return out

    # --- generation -------------------------------------------------------------------------------
    def generate(self, prompt: str, gen_length: int | None = None) -> str:
        gen_length = gen_length or self.gen_length
        if gen_length >= self.max_length:
            raise EvalError(f"cannot generate {gen_length} tokens with a {self.max_length}-position model")
        # a shorter generation keeps the configured tokens per step (the results file records it)
        steps, block = scaled_schedule(self.gen_length, self.steps, self.block_length, gen_length)
        self.schedules_run.add((gen_length, steps, block))
        ids = self.tok_encode(prompt) or [self.prefix_token_id]
        ids = ids[-max(1, self.max_length - gen_length):]
        generator = torch.Generator().manual_seed(likelihood.content_seed(self.seed, ids))
        new = diffusion_generate(self.lm.forward, ids, self.lm.mask_id, gen_length, steps, block,
                                 self.temperature, self.remasking, self.lm.banned_ids, generator)
        if self.lm.eos_id in new:
            new = new[:new.index(self.lm.eos_id)]
        return self.tok_decode(new)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in tqdm(requests, desc="MDM generate", disable=self._quiet(disable_tqdm)):
            context, gen_kwargs = request.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            wanted = int(gen_kwargs.get("max_gen_toks", self.gen_length))
            gen_length = min(self.gen_length, wanted)
            text = self.generate(context, gen_length)
            for stop in until:
                if stop and stop in text:
                    text = text[:text.index(stop)]
            out.append(text)
        return out
