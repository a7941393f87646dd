"""AR next-token batches and token dropout (inputs masked, targets clean)."""
import torch

from megadlm.config.schema import ObjectiveConfig
from megadlm.objectives import make_batch

MASK = 99


def tokens(b=16, length=128):
    return torch.randint(0, 90, (b, length + 1), generator=torch.Generator().manual_seed(0))


def test_plain_ar_shifts_labels_and_masks_nothing():
    x = tokens()
    batch = make_batch(ObjectiveConfig(type="ar"), x, torch.arange(16), 0, 1, MASK, 128)
    assert torch.equal(batch.inputs, x[:, :128]) and torch.equal(batch.labels, x[:, 1:])
    assert not batch.masked.any() and torch.all(batch.weights == 1) and batch.denominator == 16 * 128


def test_fixed_token_dropout_masks_inputs_only_at_the_rate():
    x = tokens(b=64, length=256)
    batch = make_batch(ObjectiveConfig(type="ar", token_dropout=0.3), x, torch.arange(64), 0, 1, MASK, 256)
    assert abs(batch.masked.float().mean().item() - 0.3) < 0.02
    assert torch.all(batch.inputs[batch.masked] == MASK)
    assert torch.equal(batch.inputs[~batch.masked], x[:, :256][~batch.masked])
    assert torch.equal(batch.labels, x[:, 1:])  # targets stay clean
    assert torch.all(batch.weights == 1)  # every position is still a prediction target


def test_uniform_token_dropout_draws_a_rate_per_sequence():
    x = tokens(b=64, length=512)
    batch = make_batch(ObjectiveConfig(type="ar", token_dropout="uniform"), x, torch.arange(64), 0, 1,
                       MASK, 512)
    rates = batch.masked.float().mean(1)
    assert rates.min() < 0.2 and rates.max() > 0.8 and rates.std() > 0.15


def test_token_dropout_is_deterministic_per_sample_and_off_for_validation():
    x, ids = tokens(), torch.arange(16)
    cfg = ObjectiveConfig(type="ar", token_dropout=0.5)
    a = make_batch(cfg, x, ids, 2, 9, MASK, 128)
    assert torch.equal(a.masked, make_batch(cfg, x, ids, 2, 9, MASK, 128).masked)
    assert not torch.equal(a.masked, make_batch(cfg, x, ids, 3, 9, MASK, 128).masked)
    assert not make_batch(cfg, x, ids, 2, 9, MASK, 128, train=False).masked.any()
