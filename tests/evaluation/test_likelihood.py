"""The MDM likelihood estimators on a small synthetic bidirectional model: the enumerated ELBO is the
chain rule averaged over every unmasking order, the Monte-Carlo ELBO is unbiased and its error shrinks
as mc_num grows, one-token continuations are exact, and the prompt is never masked."""
import itertools
import math

import torch

from megadlm.evaluation import likelihood as L

MASK, VOCAB = 9, 10


class TinyBidirectional(torch.nn.Module):
    """Every position's logits depend on every token (a mean over the sequence) and on its own."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(VOCAB, 16)
        self.pos = torch.nn.Embedding(32, 16)
        self.out = torch.nn.Linear(32, VOCAB)
        self.seen = []

    @torch.no_grad()
    def forward(self, ids):
        self.seen.append(ids.clone())
        h = self.emb(ids) + self.pos(torch.arange(ids.size(1)))
        ctx = torch.tanh(h.mean(dim=1, keepdim=True)).expand_as(h)
        return 3 * self.out(torch.cat([torch.tanh(h), ctx], dim=-1))


PROMPT, CONT = [1, 2, 3], [4, 0, 7, 5]


def chain_rule_in_order(model, prompt, cont, order):
    x = torch.tensor([[*prompt, *([MASK] * len(cont))]])
    total = 0.0
    for i in order:
        total += torch.log_softmax(model(x)[0, len(prompt) + i].double(), -1)[cont[i]].item()
        x[0, len(prompt) + i] = cont[i]
    return total


def test_exact_elbo_is_the_chain_rule_averaged_over_all_orders():
    model = TinyBidirectional()
    orders = list(itertools.permutations(range(len(CONT))))
    average = sum(chain_rule_in_order(model, PROMPT, CONT, o) for o in orders) / len(orders)
    assert abs(L.exact_elbo(model, PROMPT, CONT, MASK) - average) < 1e-9
    left_to_right = chain_rule_in_order(model, PROMPT, CONT, range(len(CONT)))
    assert abs(L.chain_rule(model, PROMPT, CONT, MASK) - left_to_right) < 1e-12


def test_the_chain_rule_batches_its_rows_and_scores_what_one_row_per_pass_scores():
    model = TinyBidirectional()
    cont = [4, 0, 7, 5, 1, 8, 2]
    one_per_pass = chain_rule_in_order(model, PROMPT, cont, range(len(cont)))
    for batch_size, passes in ((1, 7), (3, 3), (32, 1)):
        model.seen.clear()
        assert abs(L.chain_rule(model, PROMPT, cont, MASK, batch_size) - one_per_pass) < 1e-9
        assert len(model.seen) == passes
        # row i of the passes reveals exactly the continuation's first i tokens
        rows = torch.cat(model.seen)
        assert [int((r[len(PROMPT):] != MASK).sum()) for r in rows] == list(range(len(cont)))
        assert all(r[:len(PROMPT)].tolist() == PROMPT for r in rows)


def test_mc_elbo_error_shrinks_as_mc_num_grows():
    model = TinyBidirectional()
    exact = L.exact_elbo(model, PROMPT, CONT, MASK)
    rms = {}
    for mc_num in (4, 64, 1024):
        errors = torch.tensor([L.mc_elbo(model, PROMPT, CONT, MASK, mc_num, 256,
                                         torch.Generator().manual_seed(s))
                               - exact for s in range(20)])
        rms[mc_num] = errors.pow(2).mean().sqrt().item()
    assert rms[64] < rms[4] / 2 and rms[1024] < rms[64] / 2, rms
    assert rms[1024] < 0.05 * abs(exact), rms


def test_one_token_continuations_are_exact_with_any_mc_num():
    model = TinyBidirectional()
    exact = L.chain_rule(model, PROMPT, [6], MASK)
    for mc_num in (1, 5, 128):
        model.seen.clear()
        assert L.mc_elbo(model, PROMPT, [6], MASK, mc_num) == exact
        assert len(model.seen) == 1 and model.seen[0].size(0) == 1  # one forward row
    assert abs(L.exact_elbo(model, PROMPT, [6], MASK) - exact) < 1e-12


def test_the_prompt_is_never_masked_and_every_sample_masks_at_least_one_token():
    model = TinyBidirectional()
    L.mc_elbo(model, PROMPT, CONT, MASK, mc_num=64, batch_size=16)
    rows = torch.cat(model.seen)
    assert rows.size(0) == 64
    assert (rows[:, :len(PROMPT)] == torch.tensor(PROMPT)).all()
    assert ((rows[:, len(PROMPT):] == MASK).sum(dim=1) >= 1).all()


def test_stratified_mask_counts_cover_every_level_evenly():
    for length, per_level in ((4, 8), (7, 3)):
        counts = L.stratified_mask_counts(length, length * per_level, torch.Generator().manual_seed(3))
        assert torch.bincount(counts, minlength=length + 1)[1:].tolist() == [per_level] * length


def test_a_model_that_ignores_its_input_has_its_true_likelihood_as_elbo():
    """Its tokens are independent, so the ELBO is tight: every estimator finds sum log p(token)."""
    logp = torch.log_softmax(torch.arange(VOCAB, dtype=torch.float64), -1)

    def constant(ids):
        return logp.float().expand(ids.size(0), ids.size(1), VOCAB).clone()

    truth = sum(logp[t].item() for t in CONT)
    # ~3 sigma
    assert abs(L.mc_elbo(constant, PROMPT, CONT, MASK, mc_num=4096, batch_size=4096) - truth) < 0.2
    assert abs(L.exact_elbo(constant, PROMPT, CONT, MASK) - truth) < 1e-5
    assert math.isclose(L.chain_rule(constant, PROMPT, CONT, MASK), truth, rel_tol=1e-6)


def test_greedy_follows_llada_suffix_rule_where_the_all_masked_argmax_disagrees():
    """Continuation [4, 5]: with both positions masked the model is sure of position 0 (token 4) and
    unsure of position 1 (argmax 6); once 4 is revealed it predicts 5 there. LLaDA's rule reveals the
    confident position first, so [4, 5] is its greedy decode; the one-shot argmax would say [4, 6]."""
    def forward(ids):
        logits = torch.zeros(ids.size(0), ids.size(1), VOCAB)
        p = len(PROMPT)
        logits[:, p, 4] = 5.0  # position 0: token 4, confidently
        second = 5 if int(ids[0, p]) == 4 else 6
        logits[:, p + 1, second] = 1.0  # position 1: weakly, and it depends on position 0
        logits[:, :, MASK] = 50.0  # the model likes [MASK] best everywhere: never a valid answer
        return logits

    all_masked = forward(torch.tensor([[*PROMPT, MASK, MASK]]))[0, len(PROMPT):]
    all_masked[:, MASK] = float("-inf")
    assert all_masked.argmax(-1).tolist() == [4, 6]  # what the old one-shot rule compared with
    assert L.is_greedy(forward, PROMPT, [4, 5], MASK)
    assert not L.is_greedy(forward, PROMPT, [4, 6], MASK) and not L.is_greedy(forward, PROMPT, [3, 5], MASK)


def test_the_samplers_greedy_output_is_greedy():
    from megadlm.evaluation.sampler import diffusion_generate

    model = TinyBidirectional(seed=3)
    for prompt in ([1, 2, 3], [7], [0, 8, 2, 2]):
        new = diffusion_generate(model, prompt, MASK, gen_length=5, steps=5, block_length=5)
        assert L.is_greedy(model, prompt, new, MASK), (prompt, new)


def test_content_seeds_depend_on_the_tokens_and_the_seed_only():
    assert L.content_seed(1, [1, 2], [3]) == L.content_seed(1, [1, 2], [3])
    assert len({L.content_seed(1, [1, 2], [3]), L.content_seed(2, [1, 2], [3]),
                L.content_seed(1, [1, 2, 3]), L.content_seed(1, [12], [3])}) == 4
    assert 0 <= L.content_seed(1, [5]) < 2 ** 63
