"""The diffusion sampler: every mask filled, the prompt kept, banned ids never produced, blocks
filled in order, one forward pass per step, low-confidence order, seeded sampling, bad schedules."""
import pytest
import torch

from megadlm.errors import UserError
from megadlm.evaluation.sampler import diffusion_generate, tokens_per_step
from tests.evaluation.test_likelihood import MASK, VOCAB, TinyBidirectional

PROMPT = [1, 2, 3]


def test_every_mask_is_filled_and_the_prompt_kept():
    model = TinyBidirectional()
    out = diffusion_generate(model, PROMPT, MASK, gen_length=8)
    assert len(out) == 8 and MASK not in out and all(0 <= t < VOCAB for t in out)
    assert all((row[0, :3] == torch.tensor(PROMPT)).all() for row in model.seen)


def test_banned_ids_are_never_produced_even_when_the_model_prefers_them():
    def loves_mask_and_padding(ids):
        logits = torch.zeros(ids.size(0), ids.size(1), VOCAB)
        logits[..., MASK] = 50.0
        logits[..., 8] = 40.0  # "vocabulary padding"
        logits[..., 4] = 1.0
        return logits

    out = diffusion_generate(loves_mask_and_padding, PROMPT, MASK, gen_length=6, banned_ids=[8])
    assert out == [4] * 6
    sampled = diffusion_generate(loves_mask_and_padding, PROMPT, MASK, gen_length=6, banned_ids=[8],
                                 temperature=1.0)
    assert MASK not in sampled and 8 not in sampled


def test_one_forward_pass_per_step_and_blocks_fill_in_order():
    model = TinyBidirectional()
    diffusion_generate(model, PROMPT, MASK, gen_length=8, steps=4, block_length=4)
    assert len(model.seen) == 4  # 2 blocks x 2 steps
    masks = [(row[0, 3:] == MASK).tolist() for row in model.seen]
    assert masks[0] == [True] * 8
    assert sum(masks[1][:4]) == 2 and masks[1][4:] == [True] * 4  # half of block 1 after its first step
    assert masks[2][:4] == [False] * 4 and masks[2][4:] == [True] * 4  # block 1 complete before block 2


def test_low_confidence_remasking_commits_the_surest_positions_first():
    surest_last = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0])  # position i's confidence grows with i

    def forward(ids):
        logits = torch.zeros(ids.size(0), ids.size(1), VOCAB)
        logits[0, -5:, 6] = surest_last
        return logits

    seen = []
    diffusion_generate(lambda ids: (seen.append(ids.clone()), forward(ids))[1], PROMPT, MASK, gen_length=5)
    revealed = [set((row[0, 3:] != MASK).nonzero().flatten().tolist()) for row in seen]
    order = [(revealed[i + 1] - revealed[i]).pop() for i in range(4)]
    assert order == [4, 3, 2, 1]  # most confident first; position 0 is filled by the last step


def test_sampling_is_reproducible_by_seed():
    model = TinyBidirectional()

    def sample(seed):
        return diffusion_generate(model, PROMPT, MASK, gen_length=12, temperature=1.0,
                                  generator=torch.Generator().manual_seed(seed))

    assert sample(1) == sample(1)
    assert any(sample(1) != sample(s) for s in range(2, 6))


def test_tokens_per_step_sums_to_the_block():
    assert tokens_per_step(10, 4) == [3, 3, 2, 2]
    assert sum(tokens_per_step(7, 7)) == 7


@pytest.mark.parametrize("kwargs, message", [
    ({"gen_length": 10, "block_length": 3}, "must divide gen_length"),
    ({"gen_length": 8, "block_length": 4, "steps": 3}, "multiple of the number of blocks"),
    ({"gen_length": 4, "steps": 8}, "at most one step per token"),
    ({"gen_length": 4, "remasking": "entropy"}, "remasking 'entropy'"),
])
def test_bad_schedules_are_refused(kwargs, message):
    with pytest.raises(UserError, match=message):
        diffusion_generate(TinyBidirectional(), PROMPT, MASK, **kwargs)
