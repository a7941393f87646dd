"""Tests of megadlm.config.validate: each refusal and its message, manifest checks, vocab padding."""
from __future__ import annotations

import dataclasses

import pytest

from megadlm.config.loader import load_config
from megadlm.config.schema import Config
from megadlm.config.validate import padded_vocab_size, validate_config
from megadlm.errors import ConfigError


def tiny(**sections) -> Config:
    """The tiny preset with some fields replaced: tiny(model={"hidden_size": 100})."""
    cfg = load_config("tiny")
    for name, changes in sections.items():
        setattr(cfg, name, dataclasses.replace(getattr(cfg, name), **changes))
    return cfg


def error_of(cfg: Config, **kwargs) -> str:
    with pytest.raises(ConfigError) as ei:
        validate_config(cfg, **kwargs)
    return str(ei.value)


def test_defaults_and_tiny_are_valid():
    validate_config(Config())
    validate_config(tiny())
    validate_config(tiny(), world_size=2)


@pytest.mark.parametrize(
    "sections, words",
    [
        ({"objective": {"type": "diffusion"}}, ["objective.type", "mdm, ar"]),
        ({"model": {"activation_checkpointing": "selective"}}, ["activation_checkpointing", "none, full"]),
        ({"model": {"activation_checkpointing": -1}}, ["model.activation_checkpointing", "0 or more"]),
        ({"parallel": {"precision": "bf16", "zero_stage": 0}}, ["zero_stage=0 with bf16", "zero_stage=1"]),
        ({"checkpoint": {"keep_best": "val_acc"}}, ["checkpoint.keep_best", "none, val_loss"]),
        ({"objective": {"type": "ar", "token_dropout": 1.5}}, ["objective.token_dropout", "[0, 1]"]),
        ({"objective": {"type": "ar", "token_dropout": "gaussian"}}, ["objective.token_dropout", "uniform"]),
        ({"objective": {"mlp_dropout": 1.0}}, ["objective.mlp_dropout", "[0, 1)"]),
        ({"objective": {"attention_dropout": -0.1}}, ["objective.attention_dropout"]),
        ({"objective": {"hidden_dropout": 1.0}}, ["objective.hidden_dropout"]),
        ({"objective": {"eps": 0.0}}, ["objective.eps", "(0, 1)"]),
        ({"objective": {"eps": 1.0}}, ["objective.eps"]),
        ({"objective": {"random_length_prob": 1.5}}, ["objective.random_length_prob"]),
        ({"objective": {"token_dropout": 0.1}},
         ["AR regulariser", "objective.token_dropout=0", "objective.type=ar"]),
        ({"objective": {"token_dropout": "uniform"}}, ["MDM already masks"]),
    ],
)
def test_objective_refusals(sections, words):
    msg = error_of(tiny(**sections))
    for w in words:
        assert w in msg


def test_ar_token_dropout_ok():
    validate_config(tiny(objective={"type": "ar", "token_dropout": "uniform"}))
    validate_config(tiny(objective={"type": "ar", "token_dropout": 1.0}))


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"hidden_size": 130}, ["model.hidden_size=130", "num_attention_heads=4", "kv_channels"]),
        ({"num_query_groups": 3}, ["model.num_query_groups=3", "1, 2, 4"]),
        ({"position_embedding": "alibi"}, ["model.position_embedding", "rope, learned_absolute"]),
        ({"normalization": "rmsnorm"}, ["model.normalization", "RMSNorm, LayerNorm"]),
        ({"activation": "relu"}, ["model.activation", "swiglu, gelu"]),
        ({"num_layers": 0}, ["model.num_layers"]),
    ],
)
def test_model_refusals(changes, words):
    msg = error_of(tiny(model=changes))
    for w in words:
        assert w in msg


def test_kv_channels_allows_indivisible_hidden():
    validate_config(tiny(model={"hidden_size": 130, "kv_channels": 32}))


def test_world_size_not_divisible_by_model_parallel():
    cfg = tiny(parallel={"tp": 2}, schedule={"global_batch_size": 16, "micro_batch_size": 8})
    msg = error_of(cfg, world_size=3)
    assert "world size 3 is not divisible by tp*pp=2" in msg
    assert "launch a multiple of 2 processes or change parallel.tp/pp" in msg


@pytest.mark.parametrize(
    "parallel, words",
    [
        ({"tp": 0}, ["parallel.tp"]),
        ({"zero_stage": 4}, ["parallel.zero_stage", "0, 1, 2 or 3"]),
        ({"precision": "fp16"}, ["parallel.precision", "auto, fp32, bf16, fp64"]),
        ({"pp": 2, "precision": "fp64"}, ["parallel.precision=fp64 with parallel.pp=2", "precision=fp32"]),
        ({"pp": 2, "zero_stage": 0}, ["zero_stage=0 with parallel.pp=2", "gradient norm", "zero_stage=1"]),
        ({"pp": 4}, ["model.num_layers=6 is not divisible by parallel.pp=4", "[1, 2, 3, 6]"]),
    ],
)
def test_parallel_refusals(parallel, words):
    msg = error_of(tiny(parallel=parallel), world_size=2)
    for w in words:
        assert w in msg


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stage_2_and_3_with_pp_refused(stage):
    msg = error_of(tiny(parallel={"pp": 2, "zero_stage": stage}), world_size=2)
    assert f"parallel.zero_stage={stage} with parallel.pp=2" in msg
    assert "DeepSpeed refuses" in msg and "parallel.zero_stage=1" in msg


def test_pipeline_with_zero1_is_accepted():
    validate_config(tiny(parallel={"pp": 2, "tp": 2, "zero_stage": 1}), world_size=8)


def test_random_length_truncation_refused_with_pp():
    msg = error_of(tiny(parallel={"pp": 2}, objective={"random_length_prob": 0.01}), world_size=2)
    assert "objective.random_length_prob" in msg and "fixed-shape" in msg


def test_heads_and_groups_divisible_by_tp():
    msg = error_of(tiny(parallel={"tp": 8}), world_size=8)
    assert "model.num_attention_heads=4 is not divisible by parallel.tp=8" in msg
    assert "model.num_query_groups=2 is not divisible by parallel.tp=8" in msg
    msg = error_of(tiny(parallel={"tp": 4}), world_size=4)
    assert "num_query_groups=2 is not divisible by parallel.tp=4" in msg
    assert "num_attention_heads=4 is not" not in msg
    # None means one group per head
    msg = error_of(tiny(model={"num_query_groups": None}, parallel={"tp": 8}), world_size=8)
    assert "num_query_groups=4 is not divisible" in msg


def test_tp2_valid():
    validate_config(tiny(parallel={"tp": 2}), world_size=4)  # dp=2: 16 = 8 * 2


def test_global_batch_divisibility_message():
    cfg = tiny(schedule={"global_batch_size": 20, "micro_batch_size": 4})
    validate_config(cfg, world_size=1)
    msg = error_of(cfg, world_size=2)
    assert "schedule.global_batch_size=20" in msg
    assert "4*2 = 8" in msg
    assert "16 or 24" in msg  # suggested values
    assert "micro_batch_size" in msg


def test_global_batch_smaller_than_step_suggests_positive():
    msg = error_of(tiny(schedule={"global_batch_size": 4, "micro_batch_size": 8}))
    assert "schedule.global_batch_size=8" in msg


@pytest.mark.parametrize(
    "schedule, words",
    [
        ({"type": "linear"}, ["schedule.type", "cosine, constant, wsd"]),
        ({"micro_batch_size": 0}, ["schedule.micro_batch_size"]),
        ({"warmup_steps": -1}, ["schedule.warmup_steps"]),
        ({"max_steps": 0}, ["schedule.max_steps"]),
        ({"decay_fraction": 0.0}, ["schedule.decay_fraction", "(0, 1]"]),
        ({"decay_fraction": 1.5}, ["schedule.decay_fraction"]),
    ],
)
def test_schedule_refusals(schedule, words):
    msg = error_of(tiny(schedule=schedule))
    for w in words:
        assert w in msg


def test_decay_fraction_one_ok():
    validate_config(tiny(schedule={"type": "wsd", "decay_fraction": 1.0, "max_steps": 5}))


@pytest.mark.parametrize(
    "data, words",
    [
        ({"seq_len": 0}, ["data.seq_len"]),
        ({"epochs": 0.0}, ["data.epochs"]),
        ({"unique_tokens": 0}, ["data.unique_tokens"]),
        ({"shuffle_algo": "random"}, ["data.shuffle_algo", "py1e"]),
    ],
)
def test_data_refusals(data, words):
    msg = error_of(tiny(data=data))
    for w in words:
        assert w in msg


def test_seq_len_need_not_divide_by_tp():
    # sequence parallelism is off, so TP ranks each see the whole sequence
    validate_config(tiny(data={"seq_len": 127}, parallel={"tp": 2}), world_size=2)


def test_logging_and_run_choices():
    assert "online, offline, disabled" in error_of(tiny(logging={"wandb_mode": "yes"}))
    msg = error_of(tiny(run={"on_nan": "ignore"}))
    assert "run.on_nan" in msg and "stop, skip" in msg
    assert "run.max_skips" in error_of(tiny(run={"max_skips": -1}))


# ---------------------------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------------------------

MANIFEST = {
    "seq_len": 128,
    "vocab_size": 258,
    "mask_id": 257,
    "eos_id": 256,
    "tokenizer": {"name": "bytes"},
}


def test_manifest_ok():
    validate_config(tiny(data={"path": "/d"}), manifest=MANIFEST)
    validate_config(tiny(model={"vocab_size": 384}), manifest=MANIFEST)


def test_manifest_seq_len_mismatch():
    msg = error_of(tiny(data={"path": "/data/x", "seq_len": 256}), manifest=MANIFEST)
    assert "data.seq_len=256 but the shards in /data/x hold 128-token sequences" in msg
    assert "set data.seq_len=128" in msg
    assert "megadlm prepare --seq-len 256" in msg


def test_manifest_vocab_too_small():
    msg = error_of(tiny(model={"vocab_size": 200}), manifest=MANIFEST)
    assert "model.vocab_size=200" in msg and "258" in msg and "bytes" in msg


def test_keep_best_needs_a_validation_split():
    keep_best = tiny(data={"path": "/data/x"}, checkpoint={"keep_best": "val_loss"})
    msg = error_of(keep_best, manifest=MANIFEST)
    assert "keep_best=val_loss needs a validation split" in msg and "/data/x" in msg and "--val-input" in msg
    validate_config(keep_best, manifest=dict(MANIFEST, splits={"val": {"samples": 4}}))


def test_manifest_mask_id_outside_vocab():
    bad = dict(MANIFEST, mask_id=258)
    msg = error_of(tiny(), manifest=bad)
    assert "mask_id=258" in msg and "258" in msg


# ---------------------------------------------------------------------------------------------
# aggregation and padding
# ---------------------------------------------------------------------------------------------


def test_several_problems_reported_together():
    msg = error_of(tiny(objective={"type": "x"}, schedule={"type": "y"}))
    assert "2 problems" in msg and "objective.type" in msg and "schedule.type" in msg


@pytest.mark.parametrize(
    "vocab, div, tp, expected",
    [(258, 128, 1, 384), (256, 128, 1, 256), (258, 128, 2, 384), (258, 128, 8, 384), (400, 128, 3, 768),
     (151669, 128, 1, 151680), (1, 1, 1, 1)],
)
def test_padded_vocab_size(vocab, div, tp, expected):
    padded = padded_vocab_size(vocab, div, tp)
    assert padded == expected and padded % tp == 0  # every TP rank gets an equal shard
