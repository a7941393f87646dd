"""MDM corruption and loss: the formulas of docs/objectives (p = (1-eps)t + eps, CE/p, / B*L)."""
import math

import torch

from megadlm.config.schema import ObjectiveConfig
from megadlm.objectives import make_batch, weighted_loss

MASK = 99


def tokens(b=8, length=64, seed=0):
    return torch.randint(0, 90, (b, length + 1), generator=torch.Generator().manual_seed(seed))


def test_masks_are_a_function_of_seed_sample_and_epoch():
    cfg = ObjectiveConfig(type="mdm")
    x, ids = tokens(), torch.arange(100, 108)
    a = make_batch(cfg, x, ids, epoch=3, seed=7, mask_id=MASK, seq_len=64)
    b = make_batch(cfg, x, ids, epoch=3, seed=7, mask_id=MASK, seq_len=64)
    assert torch.equal(a.masked, b.masked)
    # Reordering the batch reorders the masks: nothing depends on a sample's position or rank.
    perm = torch.tensor([3, 1, 7, 0, 2, 6, 5, 4])
    c = make_batch(cfg, x[perm], ids[perm], epoch=3, seed=7, mask_id=MASK, seq_len=64)
    assert torch.equal(c.masked, a.masked[perm])
    # Another epoch or seed gives other masks.
    assert not torch.equal(make_batch(cfg, x, ids, 4, 7, MASK, 64).masked, a.masked)
    assert not torch.equal(make_batch(cfg, x, ids, 3, 8, MASK, 64).masked, a.masked)


def test_inputs_masked_labels_clean_no_shift():
    cfg = ObjectiveConfig(type="mdm")
    x, ids = tokens(), torch.arange(8)
    batch = make_batch(cfg, x, ids, 0, 1, MASK, 64)
    assert torch.equal(batch.labels, x[:, :64])  # same positions, not shifted
    assert torch.all(batch.inputs[batch.masked] == MASK)
    assert torch.equal(batch.inputs[~batch.masked], x[:, :64][~batch.masked])
    assert batch.denominator == 8 * 64


def test_elbo_weights_are_one_over_p_and_divide_by_all_tokens():
    cfg = ObjectiveConfig(type="mdm", eps=1e-3)
    x, ids = tokens(b=64, length=256), torch.arange(64)
    batch = make_batch(cfg, x, ids, 0, 1, MASK, 256)
    for row in range(64):
        w = batch.weights[row][batch.masked[row]]
        if w.numel():
            p = 1.0 / w[0].item()
            assert torch.allclose(w, torch.full_like(w, 1.0 / p))
            assert 1e-3 <= p <= 1.0
            # the empirical mask rate tracks p
            assert abs(batch.masked[row].float().mean().item() - p) < 0.15
    assert torch.all(batch.weights[~batch.masked] == 0)
    ce = torch.rand(64, 256)
    parts = weighted_loss(ce, batch)
    expected = ((ce * batch.masked / torch.where(batch.weights > 0, 1 / batch.weights, torch.ones(1))).sum()
                / (64 * 256))
    assert math.isclose(parts.loss.item(), expected.item(), rel_tol=1e-5)
    assert math.isclose(parts.masked_ce_sum.item() / parts.masked_count.item(),
                        ce[batch.masked].mean().item(), rel_tol=1e-5)


def test_elbo_is_unbiased_for_constant_ce():
    """With CE = c everywhere, E[sum_masked c/p] / L = c: the weighting undoes the mask rate."""
    cfg = ObjectiveConfig(type="mdm")
    x, ids = tokens(b=512, length=128), torch.arange(512)
    batch = make_batch(cfg, x, ids, 0, 5, MASK, 128)
    loss = weighted_loss(torch.full((512, 128), 2.0), batch).loss.item()
    assert abs(loss - 2.0) < 0.2


def test_count_form_masks_k_tokens_weighted_L_over_k():
    cfg = ObjectiveConfig(type="mdm", count_form=True)
    x, ids = tokens(b=32, length=64), torch.arange(32)
    batch = make_batch(cfg, x, ids, 0, 1, MASK, 64)
    k = batch.masked.sum(1)
    assert torch.all(k >= 1)
    for row in range(32):
        assert torch.allclose(batch.weights[row][batch.masked[row]], torch.tensor(64.0 / k[row].item()))
    # each sequence's term is then its mean masked CE: loss of CE == 1 is exactly 1
    assert math.isclose(weighted_loss(torch.ones(32, 64), batch).loss.item(), 1.0, rel_tol=1e-6)


def test_antithetic_times_are_stratified_over_the_global_batch_however_it_is_split():
    from megadlm.objectives.mdm import sequence_times

    cfg = ObjectiveConfig(type="mdm", antithetic_t=True)
    global_batch = torch.tensor([41, 7, 19, 3, 88, 52, 60, 11])
    whole = sequence_times(cfg, 1, global_batch, 0, batch_ids=global_batch)
    gaps = torch.diff(torch.sort(whole).values)
    assert torch.allclose(gaps, torch.full_like(gaps, 1 / 8), atol=1e-6)
    for micro in (1, 2, 4):  # micro-batches of any size, in any rank order: the same t per sample
        parts = [sequence_times(cfg, 1, ids, 0, batch_ids=global_batch.flip(0))
                 for ids in global_batch.split(micro)]
        assert torch.equal(torch.cat(parts), whole)


def test_antithetic_times_are_stratified():
    from megadlm.objectives.mdm import sequence_times

    cfg = ObjectiveConfig(type="mdm", antithetic_t=True)
    t = sequence_times(cfg, 1, torch.arange(10, 18), 0)
    gaps = torch.diff(torch.sort(t).values)
    assert torch.allclose(gaps, torch.full_like(gaps, 1 / 8), atol=1e-6)
    plain = sequence_times(ObjectiveConfig(type="mdm"), 1, torch.arange(10, 18), 0)
    assert not torch.allclose(torch.diff(torch.sort(plain).values), gaps, atol=1e-3)


def test_random_length_truncation():
    cfg = ObjectiveConfig(type="mdm", random_length_prob=1.0)
    x, ids = tokens(), torch.arange(8)
    batch = make_batch(cfg, x, ids, 0, 1, MASK, 64, length_multiple=4)
    length = batch.inputs.size(1)
    assert length < 64 or length == 64
    assert length % 4 == 0 and batch.denominator == 8 * length
    lengths = {make_batch(cfg, x, ids + 100 * i, 0, 1, MASK, 64, length_multiple=4).inputs.size(1)
               for i in range(20)}
    assert len(lengths) > 3  # really random lengths
    # never truncated for validation, and never when the probability is 0
    assert make_batch(cfg, x, ids, 0, 1, MASK, 64, train=False).inputs.size(1) == 64
    assert make_batch(ObjectiveConfig(type="mdm"), x, ids, 0, 1, MASK, 64).inputs.size(1) == 64
