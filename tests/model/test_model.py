"""The megatron-core model as built for each objective, in-process on one gloo rank.

Each regulariser knob is shown to act where it should and nowhere else."""
import pytest
import torch

from megadlm.config.loader import load_config
from megadlm.config.schema import Config


@pytest.fixture(scope="module", autouse=True)
def process_group():
    """A one-rank gloo group in this process; its environment variables are removed afterwards."""
    import os

    from megadlm.parallel.distributed import init_distributed, shutdown
    from tests.conftest import DIST_VARS, restore_env

    before = {k: os.environ.get(k) for k in DIST_VARS}
    init_distributed(1, 1)
    yield
    shutdown()
    restore_env(before)


def small_config(objective="ar", **objective_kw) -> Config:
    cfg = load_config("tiny_ar" if objective == "ar" else "tiny_mdm", [
        "model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128", "data.seq_len=16"])
    for k, v in objective_kw.items():
        setattr(cfg.objective, k, v)
    return cfg


def build(cfg, vocab=384):
    from megadlm.model.build import build_model

    return build_model(cfg, vocab, seed=3)


def logits(model, ids):
    pos = torch.arange(ids.size(1)).unsqueeze(0).expand_as(ids)
    out = model(ids, pos, None)  # no labels: logits [b, s, v]
    return out


def test_parameter_inventory_matches_the_built_model_tensor_by_tensor():
    from megadlm.model.inventory import count_parameters, parameter_inventory

    for overrides in ([], ["model.tie_embeddings=false"], ["model.position_embedding=learned_absolute",
                      "model.normalization=LayerNorm", "model.add_bias_linear=true", "model.activation=gelu"],
                      ["model.kv_channels=32", "model.num_query_groups=1"]):
        cfg = load_config("tiny_ar", ["model.num_layers=2", "data.seq_len=16", *overrides])
        model = build(cfg)
        built = {n: tuple(p.shape) for n, p in model.named_parameters()}
        listed = {p.name: p.shape for p in parameter_inventory(cfg, 384)}
        assert built == listed, overrides
        assert sum(p.numel() for p in model.parameters()) == count_parameters(cfg, 384)["total"]
        for spec in parameter_inventory(cfg, 384):  # the TP dimension is megatron's
            param = dict(model.named_parameters())[spec.name]
            sharded = getattr(param, "tensor_model_parallel", False)
            assert (param.partition_dim if sharded else None) == spec.tp_dim, spec.name


def test_qwen3_shape_per_layer_matches_the_built_layers():
    """Two layers of the real Qwen3-0.6B shape (a full 28-layer build is 2.4 GB of fp32)."""
    from megadlm.model.build import count_parameters

    cfg = load_config("presets/qwen3-0.6b", ["model.num_layers=2", "data.seq_len=64"])
    model = build(cfg, vocab=1024)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(cfg, 1024)["total"]
    full = load_config("presets/qwen3-0.6b")
    n = count_parameters(full, 151936)
    # Qwen3-0.6B: 0.44B non-embedding, 0.6B total with its 151,936-token tied embedding.
    assert 0.43e9 < n["non_embedding"] < 0.45e9 and 0.59e9 < n["total"] < 0.61e9


def test_mdm_attention_is_bidirectional_and_ar_is_causal():
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 7) % 256
    for objective, expect_change in (("mdm", True), ("ar", False)):
        model = build(small_config(objective)).eval()
        with torch.no_grad():
            delta = (logits(model, ids)[:, 0] - logits(model, changed)[:, 0]).abs().max().item()
        assert (delta > 1e-4) == expect_change, (objective, delta)


def _branch_outputs(model, ids):
    """Outputs of layer 0's attention branch and MLP (after its bias-dropout-add) per call."""
    seen = {}
    layer = model.decoder.layers[0]
    hooks = [layer.self_attention.register_forward_hook(
                 lambda m, i, o: seen.__setitem__("attn", o[0].detach().clone())),
             layer.mlp.register_forward_hook(lambda m, i, o: seen.__setitem__("mlp", o[0].detach().clone()))]
    out = logits(model, ids)
    for h in hooks:
        h.remove()
    return seen["attn"], out.detach()


def _two_train_passes(cfg):
    model = build(cfg).train()
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    a_attn, a_out = _branch_outputs(model, ids)
    b_attn, b_out = _branch_outputs(model, ids)
    return a_attn, b_attn, a_out, b_out


def test_no_dropout_is_deterministic_in_train_mode():
    a_attn, b_attn, a_out, b_out = _two_train_passes(small_config("ar"))
    assert torch.equal(a_attn, b_attn) and torch.equal(a_out, b_out)


def test_mlp_dropout_leaves_the_attention_branch_deterministic():
    a_attn, b_attn, a_out, b_out = _two_train_passes(small_config("ar", mlp_dropout=0.3))
    assert torch.equal(a_attn, b_attn)  # layer 0 attention sees the same input: untouched
    assert not torch.equal(a_out, b_out)  # but the MLP branch output is dropped out


def test_mlp_dropout_acts_on_the_mlp_residual_branch():
    cfg = small_config("ar", mlp_dropout=0.5)
    model = build(cfg).train()
    layer = model.decoder.layers[0]
    h = torch.randn(16, 2, 64)
    x_with_bias = (h, None)
    residual = torch.zeros_like(h)
    out = layer.mlp_bda(True, False)(x_with_bias, residual, 0.0)
    zero_fraction = (out == 0).float().mean().item()
    assert 0.4 < zero_fraction < 0.6  # half the MLP output dropped, the rest scaled by 2
    assert torch.allclose(out[out != 0], 2 * h[out != 0])
    # the attention branch's bias-dropout-add is megatron's plain one: no dropout at hidden_dropout=0
    assert torch.equal(layer.self_attn_bda(True, False)(x_with_bias, residual, 0.0), h)


def test_attention_dropout_changes_attention_outputs():
    a_attn, b_attn, _, _ = _two_train_passes(small_config("ar", attention_dropout=0.3))
    assert not torch.equal(a_attn, b_attn)


def test_hidden_dropout_acts_on_both_branches():
    cfg = small_config("ar", hidden_dropout=0.5)
    layer = build(cfg).train().decoder.layers[0]
    h = torch.randn(16, 2, 64)
    for bda in (layer.self_attn_bda, layer.mlp_bda):
        out = bda(True, False)((h, None), torch.zeros_like(h), layer.hidden_dropout)
        assert 0.4 < (out == 0).float().mean().item() < 0.6


def test_dropouts_are_off_in_eval_mode():
    model = build(small_config("ar", mlp_dropout=0.5, attention_dropout=0.5, hidden_dropout=0.5)).eval()
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert torch.equal(logits(model, ids), logits(model, ids))


def test_tiny_preset_is_in_the_1_to_10M_range():
    from megadlm.model.build import count_parameters

    n = count_parameters(load_config("tiny"), 384)["total"]
    assert 1e6 <= n <= 10e6, n


def test_no_gloo_copies_of_the_process_groups():
    """megatron's extra gloo groups are not created (nothing uses them; on NCCL nodes with several
    network interfaces they hang)."""
    from megatron.core import parallel_state as ps

    with pytest.raises(AssertionError, match="not initialized"):
        ps.get_data_parallel_group_gloo()


@pytest.mark.parametrize("choice,wrapped", [("none", [False, False]), (False, [False, False]),
                                            (1, [True, False]), ("full", [True, True]), (True, [True, True])])
def test_activation_checkpointing_recomputes_the_first_n_layers(choice, wrapped):
    cfg = small_config()
    cfg.model.activation_checkpointing = choice
    model = build(cfg)
    assert ["forward" in layer.__dict__ for layer in model.decoder.layers] == wrapped


def test_a_world_of_one_meets_in_memory_without_a_tcp_port():
    """A plain one-process run needs no rendezvous port: picking a free one before binding it raced
    every other run starting on the host (EADDRINUSE under `megadlm sweep --local --parallel 2`)."""
    import os

    from torch.distributed import distributed_c10d

    store = distributed_c10d._get_default_store()
    while isinstance(store, torch.distributed.PrefixStore):
        store = store.underlying_store
    assert isinstance(store, torch.distributed.HashStore)
    assert "MASTER_PORT" not in os.environ
