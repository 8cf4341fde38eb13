"""The run configuration: typed sections, read from one YAML (or JSON) file plus dotted overrides.

    model:      preset + any Hugging Face LlamaConfig field to change
    data:       the packed dataset directory (or a weighted mixture of them), sequence length, document masking
    optim:      AdamW and gradient clipping
    schedule:   learning-rate warmup and decay
    train:      steps, batch sizes, precision, parallelism, evaluation cadence, run directory
    checkpoint: cadence, retention, resume
    logging:    progress, metrics sinks, MFU peak, sample generation

Strict: an unknown section or key is an error naming the closest valid one; values are checked
against each field's type (so `lr: 3e-4`, which YAML reads as a string, still becomes a float).
Torch-free, so a bad config fails before any heavy import.
"""

from __future__ import annotations

import copy
import json
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from pytrain.errors import PytrainError, did_you_mean
from pytrain.model.config import PRESETS, ModelConfig


@dataclass
class ModelSection:
    """A preset, then any field set here replaces the preset's (vocab_size: null = the tokenizer's).

    init_from: a Hugging Face Llama folder (e.g. from `pytrain export`) to continue training from: its
    config.json replaces the preset and its weights the random initialisation; shape fields set here
    must agree with it, the others (max_position_embeddings, rope_theta, ...) may change.
    """
    preset: str = "125m"
    init_from: str | None = None
    vocab_size: int | None = None
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    max_position_embeddings: int | None = None
    rms_norm_eps: float | None = None
    rope_theta: float | None = None
    attention_bias: bool | None = None
    tie_word_embeddings: bool | None = None
    initializer_range: float | None = None


@dataclass
class DataSection:
    path: str | None = None           # a directory written by `pytrain pack` (this or mixture is required)
    mixture: list[dict] | None = None  # weighted sources: [{name, path (pack, sharded pack or glob), weight}]
    seq_len: int | None = None        # null: the model's max_position_embeddings
    document_masking: bool = False    # attend within documents only, positions restart per document
    shuffle: bool = True


@dataclass
class OptimSection:
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1         # not applied to norms, biases and embeddings
    grad_clip: float = 1.0            # max global gradient norm; 0 disables clipping
    fused: bool | None = None         # null: fused AdamW on CUDA


@dataclass
class ScheduleSection:
    name: str = "cosine"              # cosine | linear | constant | wsd (warmup-stable-decay)
    warmup_steps: int | None = None   # null: 2% of train.steps
    min_lr_ratio: float = 0.1         # final lr / peak lr (cosine, linear, wsd)
    decay_fraction: float = 0.2       # wsd: fraction of the steps spent decaying at the end


@dataclass
class TrainSection:
    steps: int = 1000
    batch_size: int = 32              # sequences per optimizer step, all ranks together
    micro_batch_size: int | None = None  # sequences per rank per forward; null: no accumulation
    seed: int = 0
    dtype: str = "auto"               # parameter/compute dtype: auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    reduce_dtype: str = "fp32"        # gradient reduction dtype: fp32 | bf16
    activation_checkpointing: int | str = "none"  # none | full | k (every k-th block)
    compile: bool = False             # torch.compile each block
    kernels: str = "auto"             # pytrain.ops backend: auto | triton | torch
    cpu_offload: bool = False         # FSDP2 CPU offload of parameters, gradients, optimizer state
    hsdp: bool = False                # shard within a node, replicate across nodes
    hsdp_shard_size: int | None = None  # null: processes per node (LOCAL_WORLD_SIZE)
    eval_every: int = 500             # 0 disables evaluation
    eval_max_batches: int = 20        # validation micro-batches per rank per evaluation
    device: str = "auto"              # auto | cuda | cpu
    run_dir: str | None = None        # null: runs/<config file name without extension>


@dataclass
class CheckpointSection:
    every: int = 1000                 # 0: only at the end
    keep_last_k: int = 3              # 0 keeps all
    resume: str = "auto"              # auto (this run's latest, if any) | none | a run or checkpoint directory
    resume_step: int | None = None    # null: the latest


@dataclass
class LoggingSection:
    every: int = 10
    progress: str = "auto"            # auto (bar on a terminal, else lines) | bar | lines | none
    tensorboard: bool = True          # when the tensorboard package is installed
    wandb: bool = False               # when the wandb package is installed
    wandb_project: str = "pytrain"
    peak_tflops: float | None = None  # per-device peak for MFU; null: from the GPU table
    sample_every: int = 0             # 0 disables sample generation
    sample_prompts: list[str] = field(default_factory=list)
    sample_max_tokens: int = 32
    sample_temperature: float = 0.0   # 0: greedy


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


CHOICES = {
    "schedule.name": ("cosine", "linear", "constant", "wsd"),
    "train.dtype": ("auto", "bf16", "fp32"),
    "train.reduce_dtype": ("fp32", "bf16"),
    "train.kernels": ("auto", "triton", "torch"),
    "train.device": ("auto", "cuda", "cpu"),
    "logging.progress": ("auto", "bar", "lines", "none"),
    "model.preset": tuple(PRESETS),
}


# ----------------------------------------------------------------------------- reading
def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read `path` (.yaml/.yml/.json), apply `section.key=value` overrides, check, fill derived defaults."""
    path = Path(path)
    raw = _read(path)
    config = _build(raw, str(path))
    for item in overrides:
        config = _override(config, item)
    if config.train.run_dir is None:
        config.train.run_dir = str(Path("runs") / path.stem)
    _validate(config)
    return config


def _read(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PytrainError(f"{path}: config file not found") from None
    try:
        if path.suffix == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as error:  # yaml/json syntax errors: one line naming the file
        detail = " ".join(str(error).split())
        raise PytrainError(f"{path}: cannot parse config: {detail}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PytrainError(f"{path}: a config is a mapping of sections (model, data, ...), got {type(raw).__name__}")
    return raw


def _build(raw: dict, where: str) -> RunConfig:
    config = RunConfig()
    sections = {f.name for f in fields(RunConfig)}
    for name, values in raw.items():
        if name not in sections:
            raise PytrainError(f'{where}: unknown section "{name}"{did_you_mean(str(name), sections)}; '
                               f"sections are {', '.join(sorted(sections))}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise PytrainError(f'{where}: section "{name}" must be a mapping of keys, got {values!r}')
        for key, value in values.items():
            _set(config, f"{name}.{key}", value, where)
    return config


def _override(config: RunConfig, item: str) -> RunConfig:
    import yaml

    key, sep, text = item.partition("=")
    if not sep or "." not in key:
        raise PytrainError(f'override "{item}": expected section.key=value, e.g. train.steps=100')
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    _set(config, key.strip(), value, f'override "{item}"')
    return config


def _set(config: RunConfig, dotted: str, value, where: str) -> None:
    section_name, _, key = dotted.partition(".")
    if not hasattr(config, section_name):
        sections = [f.name for f in fields(RunConfig)]
        raise PytrainError(f'{where}: unknown section "{section_name}"{did_you_mean(section_name, sections)}')
    section = getattr(config, section_name)
    hints = typing.get_type_hints(type(section))
    if key not in hints:
        valid = [f"{section_name}.{k}" for k in hints]
        raise PytrainError(f'{where}: unknown key "{dotted}"{did_you_mean(dotted, valid)}')
    setattr(section, key, _coerce(value, hints[key], dotted, where))


def _coerce(value, tp, key: str, where: str):
    """`value` as type `tp` (int, float, bool, str, X | None, list[X], int | str), or a one-line error."""
    args = typing.get_args(tp)
    if type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        rest = [a for a in args if a is not type(None)]
        tp = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]
        args = typing.get_args(tp)
    if typing.get_origin(tp) is list:
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, args[0], key, where) for v in value]
    if args:  # int | str: take the first that fits
        for option in args:
            try:
                return _coerce(value, option, key, where)
            except PytrainError:
                continue
        raise _type_error(value, "/".join(a.__name__ for a in args), key, where)
    if tp is dict:
        if isinstance(value, dict):
            return value
        raise _type_error(value, "a mapping", key, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(value, "true/false", key, where)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise _type_error(value, "an integer", key, where) from None
            if number.is_integer():
                return int(number)
        raise _type_error(value, "an integer", key, where)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(value, "a number", key, where)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise _type_error(value, "a string", key, where)
    raise AssertionError(f"config field {key} has unsupported type {tp}")


def _type_error(value, expected: str, key: str, where: str) -> PytrainError:
    return PytrainError(f"{where}: {key} must be {expected}, got {value!r}")


# ----------------------------------------------------------------------------- checks
def _validate(config: RunConfig) -> None:
    for dotted, options in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if value not in options:
            raise PytrainError(f'{dotted}: unknown value "{value}"{did_you_mean(str(value), options)}; '
                               f"choose one of {', '.join(options)}")
    if bool(config.data.path) == bool(config.data.mixture):
        raise PytrainError("set data.path (a directory written by `pytrain pack`) or data.mixture (weighted "
                           "sources), not both" if config.data.path else
                           "data.path is required: a directory written by `pytrain pack` (or set data.mixture)")
    if config.data.mixture:
        _validate_mixture(config.data.mixture)
    positive = ["train.steps", "train.batch_size", "train.micro_batch_size", "data.seq_len",
                "train.eval_max_batches", "logging.every", "logging.sample_max_tokens"]
    non_negative = ["train.eval_every", "checkpoint.every", "checkpoint.keep_last_k", "logging.sample_every",
                    "schedule.warmup_steps", "optim.grad_clip", "optim.weight_decay", "checkpoint.resume_step",
                    "logging.sample_temperature"]
    for dotted in positive + non_negative:
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if value is not None and (value < 0 or (value == 0 and dotted in positive)):
            raise PytrainError(f"{dotted} must be {'positive' if dotted in positive else '>= 0'}, got {value}")
    if config.optim.lr <= 0:
        raise PytrainError(f"optim.lr must be positive, got {config.optim.lr}")
    if len(config.optim.betas) != 2 or not all(0 <= b < 1 for b in config.optim.betas):
        raise PytrainError(f"optim.betas must be two numbers in [0, 1), got {config.optim.betas}")
    if not 0 <= config.schedule.min_lr_ratio <= 1 or not 0 < config.schedule.decay_fraction <= 1:
        raise PytrainError("schedule.min_lr_ratio must be in [0, 1] and schedule.decay_fraction in (0, 1]")
    if config.schedule.warmup_steps is not None and config.schedule.warmup_steps > config.train.steps:
        raise PytrainError(f"schedule.warmup_steps ({config.schedule.warmup_steps}) exceeds train.steps "
                           f"({config.train.steps})")
    activation_checkpoint_every(config.train)


MIXTURE_KEYS = ("name", "path", "weight")


def _validate_mixture(entries: list[dict]) -> None:
    """Each entry {name, path, weight}: a unique non-empty name, a path string, a weight > 0."""
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = f"data.mixture[{i}]"
        for key in entry:
            if key not in MIXTURE_KEYS:
                raise PytrainError(f'{where}: unknown key "{key}"{did_you_mean(str(key), MIXTURE_KEYS)}; '
                                   f"an entry has {', '.join(MIXTURE_KEYS)}")
        missing = [key for key in MIXTURE_KEYS if key not in entry]
        if missing:
            raise PytrainError(f"{where}: missing {', '.join(missing)}; an entry is {{name, path, weight}}")
        name, path, weight = entry["name"], entry["path"], entry["weight"]
        if not isinstance(name, str) or not name:
            raise PytrainError(f"{where}: name must be a non-empty string, got {name!r}")
        where = f"{where} ({name})"
        if name in seen:
            raise PytrainError(f'{where}: duplicate name "{name}" (also data.mixture[{seen[name]}]); names must differ')
        seen[name] = i
        if not isinstance(path, str) or not path:
            raise PytrainError(f"{where}: path must be a pack directory or a glob of them, got {path!r}")
        try:
            number = float(weight) if not isinstance(weight, bool) else float("nan")
        except (TypeError, ValueError):
            number = float("nan")
        if not 0 < number < float("inf"):
            raise PytrainError(f"{where}: weight must be a number > 0, got {weight!r}")
        entry["weight"] = number


def activation_checkpoint_every(train: TrainSection) -> int:
    """train.activation_checkpointing as "checkpoint every k-th block": 0 none, 1 every block (full)."""
    value = train.activation_checkpointing
    if value in ("none", "full"):
        return 0 if value == "none" else 1
    if isinstance(value, int) and value >= 0:
        return value
    raise PytrainError(f'train.activation_checkpointing must be "none", "full" or k >= 0 (every k-th block), '
                       f"got {value!r}")


def warmup_steps(config: RunConfig) -> int:
    if config.schedule.warmup_steps is not None:
        return config.schedule.warmup_steps
    return round(0.02 * config.train.steps)


# Fields that fix the weights' shapes: with model.init_from they must be the folder's.
SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "attention_bias", "tie_word_embeddings")


def resolve_model(section: ModelSection, data_vocab_size: int) -> ModelConfig:
    """The preset (or init_from's config.json) with this section's fields applied; vocab_size defaults to the
    data's tokenizer's."""
    from pytrain.model.config import preset

    chosen = {k: v for k, v in asdict(section).items() if k not in ("preset", "init_from") and v is not None}
    if section.init_from:
        from pytrain.export import hf_model_config

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


def with_resolved_model(config: RunConfig, model: ModelConfig) -> RunConfig:
    """A deep copy whose model section lists every field of `model` (what the run directory records)."""
    return replace(copy.deepcopy(config), model=ModelSection(preset=config.model.preset,
                                                              init_from=config.model.init_from, **model.to_dict()))
