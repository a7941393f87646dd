"""Typed configuration of a megadlm run.

Every YAML key maps onto a field of one of these dataclasses; `megadlm.config.loader` turns YAML
(with `extends:` and `--set` overrides) into a `Config` and rejects unknown keys and wrong types.
This module imports nothing heavy so `megadlm --help` stays fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union


@dataclass
class ModelConfig:
    num_layers: int = 2
    hidden_size: int = 64
    ffn_hidden_size: int = 256
    num_attention_heads: int = 4
    # Number of key/value heads (GQA). None means multi-head attention (= num_attention_heads).
    num_query_groups: Optional[int] = None
    # Head dimension; None derives hidden_size // num_attention_heads (Qwen3 sets it explicitly).
    kv_channels: Optional[int] = None
    position_embedding: str = "rope"  # rope | learned_absolute
    rotary_base: int = 10000
    normalization: str = "RMSNorm"  # RMSNorm | LayerNorm
    norm_epsilon: float = 1e-6
    activation: str = "swiglu"  # swiglu | gelu
    qk_layernorm: bool = True
    add_bias_linear: bool = False
    tie_embeddings: bool = True
    init_std: float = 0.02
    # Vocabulary is padded up to a multiple of lcm(this, TP size): the same model for every TP size
    # that divides it (unlike Megatron's multiple of this * TP, which changes with TP).
    make_vocab_size_divisible_by: int = 128
    # Model vocabulary before padding. None takes it from the data manifest (tokenizer size incl. [MASK]).
    vocab_size: Optional[int] = None
    # Recompute layers in backward instead of keeping their activations: "none", "full" (every
    # layer), or N, the first N layers of each pipeline stage (megatron's "block" recompute). true
    # and false mean "full" and "none". `megadlm plan` shows the memory each choice needs.
    activation_checkpointing: Union[bool, int, str] = "none"
    # "scored": project and score only the positions with a loss weight (MDM: the masked ones),
    # chunked so that no [tokens x vocab] logits tensor exists (parallel/output_head.py). "full":
    # megatron's output layer on every position, then the cross-entropy (the path it replaces).
    # Pipelines (PP > 1) use the full head either way.
    output_head: str = "scored"
    # Start from these weights instead of random ones: a weights file written by `megadlm import`
    # (full tensors by parameter name; every TP/PP layout slices them). Ignored when resuming.
    init_from: Optional[str] = None

    def recomputed_layers(self, layers_per_stage: int) -> int:
        """How many of a pipeline stage's layers (the first ones) recompute their activations."""
        choice = self.activation_checkpointing
        if choice is True or choice == "full":
            return layers_per_stage
        if choice is False or choice == "none":
            return 0
        return min(int(choice), layers_per_stage)


@dataclass
class ObjectiveConfig:
    type: str = "mdm"  # mdm | ar
    # --- MDM ---
    eps: float = 1e-3  # mask probability p = (1 - eps) * t + eps
    # count_form: weight each sequence's masked CE by L/k (mean over masked tokens) instead of 1/p.
    count_form: bool = False
    # antithetic_t: stratify t over each optimizer step's global batch, t_j = (u + j/B) mod 1.
    antithetic_t: bool = False
    # Probability of truncating a micro-batch to a random length (LLaDA / SMDM use 0.01).
    random_length_prob: float = 0.0
    # --- AR regularisers (the paper's knobs) ---
    # Input token dropout: a rate in [0, 1], or "uniform" (rate r ~ U(0,1) drawn per sequence).
    token_dropout: Union[float, str] = 0.0
    mlp_dropout: float = 0.0  # dropout on the MLP residual branch only
    attention_dropout: float = 0.0  # dropout on attention probabilities
    hidden_dropout: float = 0.0  # megatron's hidden dropout: both residual branches
    # Seed of the MDM masks used for validation, fixed so curves are comparable across evaluations.
    val_mask_seed: int = 1234


@dataclass
class DataConfig:
    # Directory written by `megadlm prepare` (holds manifest.json, train/, val/).
    path: str = ""
    seq_len: int = 128
    # Cap on unique training tokens (rounded down to whole global batches). None uses all shards.
    unique_tokens: Optional[int] = None
    # Passes over the unique data. Training length = epochs unless schedule.max_steps is set.
    epochs: float = 1.0
    shuffle: bool = True
    shuffle_algo: str = "py1e"
    num_canonical_nodes: int = 1
    num_workers: int = 0
    # Remote shards (S3 etc.) are read via mosaicml-streaming's remote/local cache.
    remote: Optional[str] = None
    # Where each node caches the shards its ranks read (None: node-local scratch in a Slurm job,
    # $SLURM_TMPDIR or $TMPDIR; else RUN_DIR/.cache).
    cache_dir: Optional[str] = None
    # Validation: at most this many val sequences are scored (None = all).
    val_max_samples: Optional[int] = None


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr: float = 0.0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0


@dataclass
class ScheduleConfig:
    type: str = "cosine"  # cosine | constant | wsd
    warmup_steps: int = 0
    # Total optimizer steps. None derives it from data.epochs.
    max_steps: Optional[int] = None
    # WSD: fraction of the steps spent in the final linear decay.
    decay_fraction: float = 0.1
    global_batch_size: int = 8
    micro_batch_size: int = 4


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    zero_stage: int = 1
    # auto: bf16 on GPU, fp32 on CPU. Or force fp32 / bf16; fp64 proves layout parity (tests).
    precision: str = "auto"


@dataclass
class CheckpointConfig:
    interval: int = 0  # save every N steps (0 = only at the end)
    keep_last: int = 2  # newest complete checkpoints kept (0 = keep all)
    keep_every: int = 0  # also keep every checkpoint whose step is a multiple of this (0 = none)
    save_final: bool = True
    # "val_loss": also save at every validation that beats all earlier ones and keep that checkpoint
    # beyond keep_last (marked "best" in its manifest), so an early-stopped model can be evaluated
    # directly; "none": off.
    keep_best: str = "none"


@dataclass
class LoggingConfig:
    log_interval: int = 1
    eval_interval: int = 0  # steps between validations (0 = once per epoch)
    wandb_mode: str = "disabled"  # online | offline | disabled
    wandb_project: str = "megadlm"
    wandb_name: Optional[str] = None
    progress_bar: bool = True
    # Peak TFLOP/s of one device for MFU; None = known GPUs auto-detected, otherwise MFU is not reported.
    peak_tflops: Optional[float] = None
    # Record every step's global-batch sample ids in metrics.jsonl (audits the data order, e.g.
    # across a resume at another data-parallel size). One gather per step.
    sample_ids: bool = False


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 1234
    run_dir: Optional[str] = None
    # Stop (and checkpoint) once this step is reached without changing the schedule: for
    # time-sliced jobs. Re-running the same run directory continues to schedule.max_steps.
    stop_at_step: Optional[int] = None
    # What a NaN/inf loss or gradient norm does: "stop" exits with code 3 and never saves the step;
    # "skip" rolls back to the newest checkpoint, marks that global batch to be skipped and goes on
    # (at most max_skips times per run). Either way the bad step never reaches a checkpoint.
    on_nan: str = "stop"
    max_skips: int = 10
    # Watchdog: when no step (nor validation, nor checkpoint save) completes within this many
    # seconds, every rank dumps its Python stacks to RUN_DIR/logs/ and the run exits with code 4,
    # a failure that is not requeued. 0 turns it off. Covers the slowest step, validation or save.
    hang_timeout_s: float = 1800.0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    run: RunConfig = field(default_factory=RunConfig)
