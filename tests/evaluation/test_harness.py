"""The lm-eval model's own logic, with a small synthetic model in place of an export (no lm-eval run:
that is test_eval.py's): scores are a function of each request alone (the same whatever the order of
the requests, the mix of tasks around them or how many are asked for), the choices of one question
share their random masks, and a shorter generation keeps the configured schedule and records it."""
from types import SimpleNamespace

from megadlm.evaluation.harness import MegadlmDiffusionLM
from tests.evaluation.test_likelihood import MASK, TinyBidirectional


def harness(seed=1234, mc_num=8):
    lm = MegadlmDiffusionLM.__new__(MegadlmDiffusionLM)  # everything but loading an export
    lm.lm = SimpleNamespace(forward=TinyBidirectional(), mask_id=MASK, max_length=32)
    lm.estimator, lm.mc_num, lm.mc_batch_size, lm.seed = "mc_elbo", mc_num, 32, seed
    lm._warned_truncation = False
    lm._rank, lm._world_size = 0, 1  # one process (what join_ranks gives outside torchrun)
    lm.gen_length, lm.steps, lm.block_length, lm.temperature, lm.remasking = 8, 4, 4, 0.0, "low_confidence"
    lm.schedules_run = set()
    lm.tokenizer = SimpleNamespace(encode=lambda s, add_special_tokens=False: [int(c) for c in s],
                                   decode=lambda ids, skip_special_tokens=False: "".join(map(str, ids)))
    lm.lm.eos_id, lm.lm.banned_ids = 8, [MASK]
    return lm


QUESTIONS = [([1, 2, 3], [[4, 0, 7], [5, 5], [8, 1, 2, 6]]), ([6, 6], [[1, 4], [2, 3]]),
             ([0, 4, 2, 7], [[3, 3, 3]])]
REQUESTS = [(None, ctx, cont) for ctx, choices in QUESTIONS for cont in choices]


def scores(lm, requests):
    return {(tuple(ctx), tuple(cont)): s for (_, ctx, cont), (s, _) in
            zip(requests, lm._loglikelihood_tokens(requests, disable_tqdm=True))}


def test_a_requests_score_does_not_depend_on_order_mix_or_limit():
    everything = scores(harness(), REQUESTS)
    assert scores(harness(), REQUESTS[::-1]) == everything                    # order
    assert scores(harness(), REQUESTS[3:5]) == {k: everything[k] for k in list(everything)[3:5]}
    other_task = [(None, [2, 2, 2], [1, 1]), (None, [4], [5, 6])]
    mixed = scores(harness(), other_task + REQUESTS[:3] + [(None, [7, 7], [7])])  # another task's mix
    assert all(mixed[k] == everything[k] for k in list(everything)[:3])
    assert scores(harness(seed=99), REQUESTS) != everything                   # the run seed still counts


def test_the_choices_of_one_question_draw_the_same_random_numbers(monkeypatch):
    from megadlm.evaluation import likelihood

    seeds, real = [], likelihood.mc_elbo

    def recording(forward, prompt, continuation, mask_id, mc_num, batch_size, generator):
        seeds.append((tuple(prompt), generator.initial_seed()))
        return real(forward, prompt, continuation, mask_id, mc_num, batch_size, generator)

    monkeypatch.setattr(likelihood, "mc_elbo", recording)
    harness()._loglikelihood_tokens(REQUESTS, disable_tqdm=True)
    by_question = {}
    for context, seed in seeds:
        by_question.setdefault(context, set()).add(seed)
    assert [len(s) for s in by_question.values()] == [1, 1, 1]  # one stream per question
    assert len({s for group in by_question.values() for s in group}) == 3  # and a different one each


def test_scaled_schedules_keep_tokens_per_step_and_stay_valid():
    from megadlm.evaluation.sampler import check_schedule, scaled_schedule

    assert scaled_schedule(256, 128, 32, 64) == (32, 32)    # 2 tokens per step, blocks of 32
    assert scaled_schedule(256, 256, 256, 32) == (32, 32)   # one token per step, one block
    assert scaled_schedule(8, 4, 4, 8) == (4, 4)            # the configured length: as configured
    assert scaled_schedule(256, 64, 32, 48) == (12, 48)     # 32 does not divide 48: one block
    for gen, steps, block in ((256, 128, 32), (64, 64, 64), (96, 24, 32), (8, 2, 8)):
        for new in range(1, gen + 1):
            s, b = scaled_schedule(gen, steps, block, new)
            check_schedule(new, s, b)


def test_a_task_asking_for_fewer_tokens_runs_the_scaled_schedule_and_records_it():
    lm = harness()  # --gen-length 8 --steps 4 --block-length 4: two tokens per step
    requests = [SimpleNamespace(args=("123", {"max_gen_toks": 4, "until": []})),
                SimpleNamespace(args=("45", {"max_gen_toks": 99}))]
    texts = lm.generate_until(requests, disable_tqdm=True)
    assert len(texts[0]) <= 4 and len(texts[1]) <= 8
    assert lm.schedules_run == {(4, 2, 4), (8, 4, 4)}  # not steps = block = 4 (one token per step)
