"""The scored, chunked output head equals the full head (megatron's output layer on every position,
then the cross-entropy) in loss and in every gradient: to 1e-12 in fp64, 1e-6 in fp32. One gloo
rank in-process; TP2 and PP2 against one process are in the parity matrix (test_layouts.py), which
runs the scored head by default."""
import pytest
import torch
import torch.nn.functional as F

from megadlm.parallel.cross_entropy import sharded_cross_entropy
from megadlm.parallel.output_head import IGNORE, scored_cross_entropy

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-6}


def relative(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_head_equals_projection_then_cross_entropy(single_rank_groups, dtype):
    g = torch.Generator().manual_seed(0)
    s, b, h, vocab = 12, 3, 16, 40
    hidden = torch.randn(s, b, h, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(vocab, h, generator=g, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, vocab, (b, s), generator=g)
    targets[torch.rand(b, s, generator=g) < 0.5] = IGNORE
    scale = torch.rand(b, s, generator=g, dtype=dtype)

    ce = scored_cross_entropy(hidden, weight, targets, chunk_elements=5 * vocab)  # chunks of 5 rows
    (ce * scale).sum().backward()
    got = (ce.detach(), hidden.grad.clone(), weight.grad.clone())

    hidden.grad = weight.grad = None
    logits = F.linear(hidden, weight)  # [s, b, v]
    full = sharded_cross_entropy(logits, targets.clamp(min=0).t().contiguous()).t() * (targets != IGNORE)
    (full * scale).sum().backward()
    want = (full.detach(), hidden.grad, weight.grad)

    assert torch.equal(got[0] == 0, targets == IGNORE)
    for a, b_ in zip(got, want):
        assert relative(a, b_) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", ["fp64", "fp32"])
@pytest.mark.parametrize("objective", ["mdm", "ar"])
def test_the_model_trains_the_same_with_either_head(single_rank_groups, dtype, objective):
    from megadlm.config.loader import load_config
    from megadlm.model.build import build_model
    from megadlm.objectives import make_batch, weighted_loss
    from megadlm.train.runners import model_targets

    def loss_and_grads(head):
        cfg = load_config(f"tiny_{objective}", ["model.num_layers=2", "model.hidden_size=64",
                                                "model.ffn_hidden_size=128", "data.seq_len=32",
                                                f"parallel.precision={dtype}", f"model.output_head={head}"])
        model = build_model(cfg, 384, seed=5)
        tokens = torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(1))
        batch = make_batch(cfg.objective, tokens, torch.arange(4), 0, 7, 257, 32)
        positions = torch.arange(32).unsqueeze(0).expand(4, 32)
        loss = weighted_loss(model(batch.inputs, positions, None, labels=model_targets(batch)), batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters()}

    (scored, scored_grads), (full, full_grads) = loss_and_grads("scored"), loss_and_grads("full")
    tolerance = TOLERANCE[torch.float64 if dtype == "fp64" else torch.float32]
    assert relative(scored, full) <= tolerance
    assert max(relative(scored_grads[n], full_grads[n]) for n in full_grads) <= tolerance
