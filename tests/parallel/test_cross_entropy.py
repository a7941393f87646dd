"""The sharded cross-entropy equals torch's on one rank, in value and gradient, and keeps fp64.
(TP > 1 is covered end to end by the parity matrix in test_layouts.py.)"""
import pytest
import torch
import torch.nn.functional as F

from megadlm.parallel.cross_entropy import sharded_cross_entropy


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_matches_torch_cross_entropy(single_rank_groups, dtype, tol):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(5, 3, 50, generator=g) * 4).to(dtype).requires_grad_()
    targets = torch.randint(0, 50, (5, 3), generator=g)
    weights = torch.rand(5, 3, generator=g, dtype=torch.float64)

    ce = sharded_cross_entropy(logits, targets)
    assert ce.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    (ce * weights).sum().backward()
    ours = logits.grad.clone()

    logits.grad = None
    ref_logits = logits.detach().double().requires_grad_()
    ref = F.cross_entropy(ref_logits.reshape(-1, 50), targets.reshape(-1), reduction="none").view(5, 3)
    (ref * weights).sum().backward()
    assert torch.allclose(ce.double(), ref, atol=tol, rtol=0)
    assert ours.dtype == dtype
    assert torch.allclose(ours.double(), ref_logits.grad, atol=tol, rtol=0)
