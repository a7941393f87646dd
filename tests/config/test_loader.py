"""Tests of megadlm.config.loader: extends composition, --set overrides, strict conversion, errors."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from megadlm.config.loader import (
    config_from_dict,
    config_to_dict,
    dump_config,
    find_config,
    load_config,
    parse_override,
)
from megadlm.config.schema import Config
from megadlm.config.validate import validate_config
from megadlm.errors import ConfigError


def write(dirpath: Path, name: str, text: str) -> Path:
    p = dirpath / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return p


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as ei:
        fn(*args, **kwargs)
    return str(ei.value)


# ---------------------------------------------------------------------------------------------
# basic loading and extends
# ---------------------------------------------------------------------------------------------


def test_empty_file_gives_defaults(tmp_path):
    p = write(tmp_path, "empty.yaml", "")
    assert load_config(p) == Config()


def test_empty_section_gives_defaults(tmp_path):
    p = write(tmp_path, "c.yaml", "model:\n")
    assert load_config(p).model == Config().model


def test_three_level_extends_chain(tmp_path):
    write(tmp_path, "base.yaml", """
        model: {num_layers: 2, hidden_size: 64}
        optim: {lr: 1.0e-3, weight_decay: 0.1}
        run: {name: base}
    """)
    write(tmp_path, "mid/mid.yaml", """
        extends: ../base.yaml
        model: {num_layers: 3}
        run: {name: mid}
    """)
    top = write(tmp_path, "mid/top/top.yaml", """
        extends: ../mid.yaml
        optim: {weight_decay: 0.5}
    """)
    cfg = load_config(top)
    assert cfg.model.num_layers == 3  # mid overrides base
    assert cfg.model.hidden_size == 64  # kept from base: deep merge, not section replacement
    assert cfg.optim.lr == 1e-3
    assert cfg.optim.weight_decay == 0.5  # top overrides
    assert cfg.run.name == "mid"


def test_list_extends_later_bases_win_and_own_keys_win_last(tmp_path):
    write(tmp_path, "a.yaml", "model: {num_layers: 1, hidden_size: 32}\nrun: {seed: 1}\n")
    write(tmp_path, "b.yaml", "model: {num_layers: 2}\nrun: {seed: 2, name: b}\n")
    top = write(tmp_path, "top.yaml", "extends: [a.yaml, b.yaml]\nrun: {seed: 3}\n")
    cfg = load_config(top)
    assert cfg.model.num_layers == 2
    assert cfg.model.hidden_size == 32
    assert cfg.run.name == "b"
    assert cfg.run.seed == 3


def test_overrides_apply_after_files_in_order(tmp_path):
    p = write(tmp_path, "c.yaml", "optim: {lr: 0.1}\n")
    cfg = load_config(p, ["optim.lr=0.2", "optim.lr=0.3"])
    assert cfg.optim.lr == 0.3


def test_extends_resolves_in_yaml_configs(tmp_path):
    p = write(tmp_path, "mine.yaml", "extends: presets/tiny.yaml\nrun: {name: mine}\n")
    cfg = load_config(p)
    assert cfg.model.hidden_size == 128
    assert cfg.run.name == "mine"
    p2 = write(tmp_path, "bare.yaml", "extends: tiny\n")
    assert load_config(p2).model == cfg.model


def test_find_config_bare_preset_name():
    assert find_config("tiny").name == "tiny.yaml"
    assert find_config("tiny").parent.name == "presets"
    assert find_config("tiny_ar").name == "tiny_ar.yaml"


def test_extends_cycle_is_detected(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: c.yaml\n")
    write(tmp_path, "c.yaml", "extends: a.yaml\n")
    msg = error_of(load_config, tmp_path / "a.yaml")
    assert "cycle" in msg
    assert "a.yaml -> " in msg and "b.yaml -> " in msg and "c.yaml -> " in msg


def test_self_extends_is_a_cycle(tmp_path):
    p = write(tmp_path, "self.yaml", "extends: self.yaml\n")
    assert "cycle" in error_of(load_config, p)


def test_missing_extends_target(tmp_path):
    p = write(tmp_path, "c.yaml", "extends: nowhere.yaml\n")
    msg = error_of(load_config, p)
    assert "nowhere.yaml" in msg and "c.yaml" in msg and "not found" in msg


def test_bad_extends_value(tmp_path):
    p = write(tmp_path, "c.yaml", "extends: {a: 1}\n")
    msg = error_of(load_config, p)
    assert "extends" in msg and "c.yaml" in msg


# ---------------------------------------------------------------------------------------------
# --set
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("model.num_layers=3", ["model", "num_layers"], 3),
        ("optim.lr=1e-3", ["optim", "lr"], 1e-3),
        ("optim.lr=3.0e-4", ["optim", "lr"], 3e-4),
        ("model.qk_layernorm=false", ["model", "qk_layernorm"], False),
        ("data.unique_tokens=null", ["data", "unique_tokens"], None),
        ("objective.token_dropout=uniform", ["objective", "token_dropout"], "uniform"),
        ("data.path=/a/b=c", ["data", "path"], "/a/b=c"),
        ("data.path=", ["data", "path"], ""),
        ("run.name=[oops", ["run", "name"], "[oops"),  # not YAML: taken verbatim
    ],
)
def test_parse_override(text, key, value):
    k, v = parse_override(text)
    assert k == key
    assert v == value and type(v) is type(value)


def test_overrides_of_every_type(tmp_path):
    p = write(tmp_path, "c.yaml", "")
    cfg = load_config(
        p,
        [
            "model.num_layers=3",
            "optim.lr=1e-3",
            "model.tie_embeddings=false",
            "model.num_query_groups=null",
            "objective.token_dropout=uniform",
            "objective.type=ar",
            "data.path=/tmp/data",
        ],
    )
    assert cfg.model.num_layers == 3
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.model.tie_embeddings is False
    assert cfg.model.num_query_groups is None
    assert cfg.objective.token_dropout == "uniform"
    assert cfg.objective.type == "ar"
    assert cfg.data.path == "/tmp/data"


def test_override_without_equals(tmp_path):
    p = write(tmp_path, "c.yaml", "")
    msg = error_of(load_config, p, ["optim.lr"])
    assert "optim.lr" in msg and "section.key=value" in msg


def test_override_with_empty_key(tmp_path):
    p = write(tmp_path, "c.yaml", "")
    assert "section.key=value" in error_of(load_config, p, ["optim..lr=1"])


def test_override_unknown_key_names_set(tmp_path):
    p = write(tmp_path, "c.yaml", "")
    msg = error_of(load_config, p, ["model.hiden_size=3"])
    assert "model.hiden_size" in msg and "--set" in msg and "'hidden_size'" in msg


def test_override_bad_type_names_set(tmp_path):
    p = write(tmp_path, "c.yaml", "model: {num_layers: 2}\n")
    msg = error_of(load_config, p, ["model.num_layers=two"])
    assert "model.num_layers" in msg and "--set" in msg and "integer" in msg


def test_override_into_scalar_is_reported(tmp_path):
    p = write(tmp_path, "c.yaml", "")
    msg = error_of(load_config, p, ["model.num_layers.x=1"])
    assert "model.num_layers" in msg and "--set" in msg and "mapping" in msg


# ---------------------------------------------------------------------------------------------
# strict conversion errors
# ---------------------------------------------------------------------------------------------


def test_unknown_key_suggests_and_lists(tmp_path):
    p = write(tmp_path, "bad.yaml", "model:\n  hiden_size: 64\n")
    msg = error_of(load_config, p)
    assert "model.hiden_size" in msg
    assert "bad.yaml" in msg
    assert "Did you mean 'hidden_size'" in msg
    assert "Valid model keys: num_layers, hidden_size" in msg and "ffn_hidden_size" in msg


def test_unknown_section_suggests(tmp_path):
    p = write(tmp_path, "bad.yaml", "modle:\n  hidden_size: 64\n")
    msg = error_of(load_config, p)
    assert "modle" in msg and "bad.yaml" in msg and "Did you mean 'model'" in msg
    assert "Valid sections: model, objective" in msg


def test_unknown_key_without_close_match_still_lists_valid(tmp_path):
    p = write(tmp_path, "bad.yaml", "optim:\n  zzzzzz: 1\n")
    msg = error_of(load_config, p)
    assert "optim.zzzzzz" in msg and "Did you mean" not in msg and "beta1" in msg


def test_error_names_the_base_file_that_set_the_value(tmp_path):
    write(tmp_path, "base.yaml", "model:\n  num_layers: lots\n")
    write(tmp_path, "mid.yaml", "extends: base.yaml\nmodel: {hidden_size: 64}\n")
    top = write(tmp_path, "top.yaml", "extends: mid.yaml\n")
    msg = error_of(load_config, top)
    assert "model.num_layers" in msg and "base.yaml" in msg
    assert "top.yaml" not in msg and "mid.yaml" not in msg


def test_unknown_key_in_base_file_names_base(tmp_path):
    write(tmp_path, "base.yaml", "optim: {learning_rate: 0.1}\n")
    top = write(tmp_path, "top.yaml", "extends: base.yaml\noptim: {lr: 0.1}\n")
    msg = error_of(load_config, top)
    assert "optim.learning_rate" in msg and "base.yaml" in msg and "top.yaml" not in msg


@pytest.mark.parametrize(
    "yaml_text, key, words",
    [
        ("model: {num_layers: true}", "model.num_layers", "integer"),  # bools are not ints
        ("model: {num_layers: 3.0}", "model.num_layers", "integer 3"),  # strict ints, with a hint
        ("data: {unique_tokens: 1e9}", "data.unique_tokens", "integer 1000000000"),
        ("optim: {lr: fast}", "optim.lr", "number"),
        ("optim: {lr: true}", "optim.lr", "number"),
        ("run: {name: 3}", "run.name", "string"),
        ("model: {qk_layernorm: 1}", "model.qk_layernorm", "true or false"),
        ("model: {num_query_groups: two}", "model.num_query_groups", "null"),
        ("objective: {token_dropout: [0.1]}", "objective.token_dropout", "a number or a string"),
        ("run: {seed: null}", "run.seed", "integer"),
    ],
)
def test_type_errors(tmp_path, yaml_text, key, words):
    p = write(tmp_path, "types.yaml", yaml_text + "\n")
    msg = error_of(load_config, p)
    assert key in msg and "types.yaml" in msg and words in msg


def test_lenient_where_unambiguous(tmp_path):
    p = write(tmp_path, "ok.yaml", """
        optim: {lr: 1}              # int into float field
        model: {num_query_groups: null, vocab_size: 300}
        objective: {token_dropout: 0.25}
        logging: {peak_tflops: 989}
    """)
    cfg = load_config(p)
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.model.vocab_size == 300
    assert cfg.objective.token_dropout == 0.25
    assert cfg.logging.peak_tflops == 989.0


def test_section_must_be_mapping(tmp_path):
    p = write(tmp_path, "sec.yaml", "model: 3\n")
    msg = error_of(load_config, p)
    assert "model" in msg and "mapping" in msg and "sec.yaml" in msg


def test_top_level_must_be_mapping(tmp_path):
    p = write(tmp_path, "list.yaml", "- a\n- b\n")
    msg = error_of(load_config, p)
    assert "list.yaml" in msg and "mapping" in msg


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = write(tmp_path, "broken.yaml", "model:\n  num_layers: 2\n  hidden_size: [1, 2\nrun: {}\n")
    msg = error_of(load_config, p)
    assert "broken.yaml" in msg and "line " in msg and "invalid YAML" in msg
    assert "started at line 3" in msg  # where the unclosed flow sequence began


def test_malformed_yaml_line_number(tmp_path):
    p = write(tmp_path, "tabs.yaml", "model:\n  num_layers: 2\n\thidden_size: 3\n")
    assert "line 3" in error_of(load_config, p)


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    msg = error_of(load_config, missing)
    assert str(missing) in msg and "not found" in msg


# ---------------------------------------------------------------------------------------------
# dict round trips
# ---------------------------------------------------------------------------------------------


def test_dump_then_load_round_trip(tmp_path):
    cfg = load_config("tiny", ["objective.token_dropout=uniform", "data.path=/d", "optim.eps=1e-8"])
    out = tmp_path / "run" / "config.yaml"
    dump_config(cfg, out)
    assert load_config(out) == cfg
    # sections are written in schema order, not sorted
    text = out.read_text()
    assert text.index("model:") < text.index("objective:") < text.index("data:")


def test_round_trip_of_defaults(tmp_path):
    out = tmp_path / "c.yaml"
    dump_config(Config(), out)
    assert load_config(out) == Config()


def test_config_from_dict(tmp_path):
    cfg = load_config("tiny_ar_regularised")
    assert config_from_dict(config_to_dict(cfg)) == cfg
    msg = error_of(config_from_dict, {"model": {"hidden": 1}}, source="run/config.yaml")
    assert "model.hidden" in msg and "run/config.yaml" in msg
    assert "<dict>" in error_of(config_from_dict, {"optim": {"lr": "x"}})


# ---------------------------------------------------------------------------------------------
# shipped configs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["tiny", "qwen3-0.6b", "tiny_mdm", "tiny_ar", "tiny_ar_regularised"]
)
def test_shipped_configs_load_and_validate(name):
    cfg = load_config(name)
    validate_config(cfg)
    assert cfg.data.path == ""


def test_tiny_preset_shape():
    cfg = load_config("tiny")
    m = cfg.model
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size) == (6, 128, 512)
    assert (m.num_attention_heads, m.num_query_groups) == (4, 2)
    assert m.qk_layernorm and not m.add_bias_linear and m.tie_embeddings
    assert cfg.objective.type == "mdm"
    assert (cfg.data.seq_len, cfg.data.epochs) == (128, 2)
    assert (cfg.schedule.global_batch_size, cfg.schedule.micro_batch_size) == (16, 8)
    assert cfg.optim.lr == 1e-3 and cfg.logging.wandb_mode == "disabled"


def test_qwen3_preset_shape():
    cfg = load_config("qwen3-0.6b")
    m = cfg.model
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size) == (28, 1024, 3072)
    assert (m.num_attention_heads, m.num_query_groups, m.kv_channels) == (16, 8, 128)
    assert m.rotary_base == 1_000_000 and m.norm_epsilon == 1e-6
    assert (m.position_embedding, m.normalization, m.activation) == ("rope", "RMSNorm", "swiglu")
    assert m.qk_layernorm and not m.add_bias_linear and m.tie_embeddings
    assert m.activation_checkpointing == "none"  # `megadlm plan` says it fits without recompute
    assert cfg.data.seq_len == 2048
    assert (cfg.optim.lr, cfg.optim.beta1, cfg.optim.beta2, cfg.optim.weight_decay) == (3e-4, 0.9, 0.95, 0.1)
    assert (cfg.schedule.type, cfg.schedule.warmup_steps) == ("constant", 2000)
    assert (cfg.schedule.global_batch_size, cfg.schedule.micro_batch_size) == (256, 4)
    assert (cfg.parallel.precision, cfg.parallel.zero_stage) == ("auto", 1)
    assert cfg.logging.wandb_mode == "offline"
    validate_config(cfg, world_size=8)


def test_ar_configs():
    assert load_config("tiny_mdm").objective.type == "mdm"
    assert load_config("tiny_ar").objective.type == "ar"
    reg = load_config("tiny_ar_regularised")
    o = reg.objective
    assert (o.type, o.token_dropout, o.mlp_dropout, o.attention_dropout) == ("ar", 0.1, 0.1, 0.1)
    assert reg.optim.weight_decay == 0.5
    assert reg.model == load_config("tiny").model
