"""From a checked config and its data to everything the training loop needs, decided once.

`resolve_run` turns the user's config (presets, nulls meaning "derive it") into one frozen `ResolvedRun`:
the model config (preset or init_from folder, plus overrides, vocab from the data), sequence length,
warmup, dtype, activation-checkpoint cadence and the per-rank batch geometry. The loop reads only this,
and the run directory records `resolved.config` (every model field spelled out).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace

from pytrain.config import ModelSection, RunConfig, activation_checkpoint_every
from pytrain.errors import PytrainError
from pytrain.model.config import ModelConfig, preset
from pytrain.ops._backend import interpreter_enabled
from pytrain.train.expert_parallel import check_expert_parallel

# Fields that fix the weights' shapes: with model.init_from they must be the folder's.
SHAPE_FIELDS = ("family", "head_dim", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "attention_bias", "tie_word_embeddings")


@dataclass(frozen=True)
class ResolvedRun:
    config: RunConfig        # the user's config with the model section and derived values filled in
    model: ModelConfig
    seq_len: int
    warmup_steps: int
    dtype: str               # bf16 | fp16 | fp32
    ac_every: int            # activation checkpointing: every k-th block, 0 none
    micro_batch_size: int    # sequences per rank per forward
    accumulation: int        # micro-batches per optimizer step


def resolve_run(config: RunConfig, data_vocab_size: int, world_size: int, device_type: str) -> ResolvedRun:
    if config.train.kernels == "triton" and device_type != "cuda" and not interpreter_enabled():
        raise PytrainError("train.kernels=triton needs a CUDA device (on CPU only with TRITON_INTERPRET=1, slow, for "
                           "tests); use train.kernels=auto")
    model = resolve_model(config.model, data_vocab_size)
    seq_len = config.data.seq_len or model.context_length
    if seq_len > model.max_position_embeddings:
        raise PytrainError(f"data.seq_len ({seq_len}) exceeds model.max_position_embeddings "
                           f"({model.max_position_embeddings})")
    if seq_len > model.context_length:
        raise PytrainError(f"data.seq_len ({seq_len}) exceeds model.sliding_window ({model.sliding_window}): pytrain "
                           "attends over the whole causal prefix, which is the window's attention only up to its "
                           "length; set data.seq_len <= the window")
    check_expert_parallel(model, config.train.expert_parallel, compile=config.train.compile)
    micro, accumulation = batch_geometry(config.train.batch_size, config.train.micro_batch_size, world_size)
    warmup = config.schedule.warmup_steps
    if warmup is None:
        warmup = round(0.02 * config.train.steps)
    dtype = config.train.dtype if config.train.dtype != "auto" else ("bf16" if device_type == "cuda" else "fp32")
    recorded = copy.deepcopy(config)
    recorded.model = ModelSection(preset=config.model.preset, init_from=config.model.init_from, **model.to_dict())
    recorded.data.seq_len = seq_len
    recorded.schedule.warmup_steps = warmup
    return ResolvedRun(config=recorded, model=model, seq_len=seq_len, warmup_steps=warmup, dtype=dtype,
                       ac_every=activation_checkpoint_every(config.train), micro_batch_size=micro,
                       accumulation=accumulation)


def resolve_model(section: ModelSection, data_vocab_size: int) -> ModelConfig:
    """The preset (or init_from's config.json) with this section's fields applied; vocab_size defaults to the
    data's tokenizer's."""
    chosen = {k: v for k, v in asdict(section).items() if k not in ("preset", "init_from") and v is not None}
    if section.init_from:
        from pytrain.model.hf import hf_model_config

        base = hf_model_config(section.init_from)
        for key in SHAPE_FIELDS:
            if key in chosen and chosen[key] != getattr(base, key):
                raise PytrainError(f"model.{key}={chosen[key]} conflicts with model.init_from {section.init_from} "
                                   f"({key}={getattr(base, key)}); remove it from the model section")
        model = replace(base, **chosen)
    else:
        model = preset(section.preset, **{"vocab_size": data_vocab_size, **chosen})
    if model.vocab_size < data_vocab_size:
        raise PytrainError(f"model.vocab_size ({model.vocab_size}) is smaller than the dataset's tokenizer "
                           f"vocabulary ({data_vocab_size})")
    return model


def batch_geometry(batch_size: int, micro_batch_size: int | None, world: int) -> tuple[int, int]:
    """(sequences per rank per forward, micro-batches per step) for a global batch on `world` ranks."""
    if micro_batch_size is None:
        if batch_size % world:
            raise PytrainError(f"train.batch_size ({batch_size}) must be divisible by the number of ranks ({world})")
        return batch_size // world, 1
    if batch_size % (micro_batch_size * world):
        raise PytrainError(f"train.batch_size ({batch_size}) must be a multiple of train.micro_batch_size "
                           f"({micro_batch_size}) x ranks ({world})")
    return micro_batch_size, batch_size // (micro_batch_size * world)
