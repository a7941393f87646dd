"""`megadlm plan`: exact parameter counts, fit verdicts and activation bytes. Its model-state bytes are
checked against real CPU runs of every layout in tests/parallel/test_layouts.py, on the runs that test
already makes."""
import json

import pytest

from megadlm.config.loader import load_config
from tests.conftest import run_cli, sets


def test_plan_counts_the_exact_parameters_and_refuses_bad_layouts():
    from megadlm.model.inventory import count_parameters
    from megadlm.plan import make_plan

    cfg = load_config("presets/qwen3-0.6b")
    plan = make_plan(cfg, 151669, nodes=1, gpus_per_node=8, gpu_mem_gib=80)
    assert plan.params_total == count_parameters(cfg, 151680)["total"]
    assert plan.dp == 8 and plan.fits
    proc = run_cli("plan", "presets/qwen3-0.6b", "--nodes", "1", "--gpus-per-node", "3", "--vocab", "151669",
                   "--set", "parallel.tp=2", check=False)
    assert proc.returncode != 0 and "not divisible by tp*pp=2" in proc.stderr


def test_plan_says_when_it_does_not_fit():
    proc = run_cli("plan", "presets/qwen3-0.6b", "--nodes", "1", "--gpus-per-node", "1", "--vocab", "151669",
                   "--gpu-mem", "8",
                   *sets("model.activation_checkpointing=false", "schedule.micro_batch_size=16"))
    assert "DOES NOT FIT" in proc.stdout
    proc = run_cli("plan", "presets/qwen3-0.6b", "--nodes", "2", "--gpus-per-node", "8", "--vocab", "151669",
                   "--json")
    plan = json.loads(proc.stdout)
    assert plan["world_size"] == 16 and plan["fits"] and plan["tokens_per_step"] == 256 * 2048


def saved_for_backward(layer, hidden, rotary, parameters) -> int:
    """Bytes of the distinct storages autograd keeps for one layer's backward (weights excluded)."""
    import torch

    weights = {p.untyped_storage().data_ptr() for p in parameters}
    kept: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(hidden, attention_mask=None, rotary_pos_emb=rotary)
    return sum(kept.values())


@pytest.mark.parametrize("shape", [
    # Qwen3-like: SwiGLU, QK-norm, GQA, head_dim * heads != hidden
    ["model.hidden_size=64", "model.ffn_hidden_size=192", "model.num_attention_heads=4",
     "model.num_query_groups=2", "model.kv_channels=32"],
    # GPT-2-like: GELU, LayerNorm, no QK-norm, multi-head attention
    ["model.hidden_size=96", "model.ffn_hidden_size=384", "model.num_attention_heads=6",
     "model.activation=gelu", "model.normalization=LayerNorm", "model.qk_layernorm=false"],
    # SwiGLU without QK-norm, with MLP and hidden dropout masks
    ["model.hidden_size=128", "model.ffn_hidden_size=320", "model.num_attention_heads=8",
     "model.num_query_groups=4", "model.qk_layernorm=false", "objective.mlp_dropout=0.1",
     "objective.hidden_dropout=0.1"],
])
def test_activation_bytes_per_layer_match_what_autograd_keeps(single_rank_groups, shape):
    import torch

    from megadlm.model.build import build_model
    from megadlm.plan import layer_activation_bytes

    cfg = load_config("tiny_ar", ["model.num_layers=1", "data.seq_len=128", "schedule.micro_batch_size=2",
                                  *shape])
    model = build_model(cfg, 256).train()
    hidden = torch.randn(128, 2, cfg.model.hidden_size, requires_grad=True)
    measured = saved_for_backward(model.decoder.layers[0], hidden, model.rotary_pos_emb(128),
                                  model.parameters())
    predicted = layer_activation_bytes(cfg, tp=1, elem=4, mask_bytes=4)  # CPU dropout keeps float masks
    print(f"{shape}: predicted {predicted:,.0f} B, measured {measured:,} B, ratio {predicted / measured:.3f}")
    assert abs(predicted - measured) <= 0.10 * measured
