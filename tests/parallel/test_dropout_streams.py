"""Dropout masks on a TP layout: the TP ranks of a replica draw the same hidden/MLP masks (their
tensors are replicated) and different attention masks (each holds other heads), with the seeds and
the attention module `megadlm train` uses; a recomputed layer redraws exactly its forward's masks."""
import pytest
import torch
import torch.nn.functional as F

from megadlm.objectives.randomness import dropout_seeds
from megadlm.parallel.dropout_streams import attention_dropout_stream, checkpoint, seed_dropout_streams

CPU = torch.device("cpu")


@pytest.fixture
def attention():
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megadlm.model.attention import SDPACoreAttention

    config = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4, attention_dropout=0.5,
                               use_cpu_initialization=True)
    module = SDPACoreAttention(config, layer_number=1, attn_mask_type=AttnMaskType.no_mask).train()
    yield module
    attention_dropout_stream.__init__()  # unseeded again for the next test in this process


def qkv(seq=16, heads=2, dim=8):
    """[s, b, heads, d] inputs that every TP rank would hold for its own (here: the same) heads."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(seq, 1, heads, dim, generator=g) for _ in range(3)]


def one_step(attention, tp_rank):
    """What TP rank `tp_rank` of replica 0, stage 0 draws: an attention output and an MLP mask."""
    seed_dropout_streams(*dropout_seeds(1234, dp_rank=0, pp_rank=0, tp_rank=tp_rank), CPU)
    out = attention(*qkv(), attention_mask=None)
    mlp_mask = F.dropout(torch.ones(64), p=0.5, training=True)
    return out, mlp_mask


def test_tp_ranks_share_mlp_masks_and_draw_their_own_attention_masks(attention):
    out0, mlp0 = one_step(attention, tp_rank=0)
    out1, mlp1 = one_step(attention, tp_rank=1)
    assert torch.equal(mlp0, mlp1)
    assert not torch.equal(out0, out1)
    again, _ = one_step(attention, tp_rank=0)
    assert torch.equal(again, out0)  # a function of the seeds, not of what ran before


def test_attention_draws_leave_the_shared_stream_alone(attention):
    seed_dropout_streams(*dropout_seeds(1234, 0, 0, 0), CPU)
    expected = F.dropout(torch.ones(64), p=0.5, training=True)
    seed_dropout_streams(*dropout_seeds(1234, 0, 0, 0), CPU)
    attention(*qkv(), attention_mask=None)
    assert torch.equal(F.dropout(torch.ones(64), p=0.5, training=True), expected)


def test_a_recomputed_layer_redraws_its_attention_masks(attention):
    def layer(q, k, v):
        return attention(q, k, v, attention_mask=None).sum(dim=-1)

    def grads(recompute):
        seed_dropout_streams(*dropout_seeds(7, 0, 0, 0), CPU)
        q, k, v = (t.requires_grad_() for t in qkv())
        for _ in range(2):  # the second call's masks differ from the first's: the stream moved on
            out = checkpoint(layer, q, k, v) if recompute else layer(q, k, v)
            out.pow(2).sum().backward()
        return [t.grad for t in (q, k, v)], attention_dropout_stream.get_state()

    (plain, plain_state), (recomputed, recomputed_state) = grads(False), grads(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, recomputed))
    assert torch.equal(plain_state, recomputed_state)


def test_an_unseeded_stream_uses_the_default_generator(attention):
    torch.manual_seed(3)
    a = attention(*qkv(), attention_mask=None)
    torch.manual_seed(3)
    assert torch.equal(attention(*qkv(), attention_mask=None), a)
    assert not attention_dropout_stream.seeded
