"""The run configuration: typed sections, read from one YAML (or JSON) file plus dotted overrides.

    model:      preset (its family: llama, qwen2, qwen3, mistral, gpt_neox) + any model field to change
    data:       the packed dataset directory (or a weighted mixture of them), sequence length, document masking
    optim:      the optimizer (AdamW or Muon) and gradient clipping
    schedule:   learning-rate warmup and decay
    train:      steps, batch sizes, precision, parallelism, evaluation cadence, run directory
    checkpoint: cadence, retention, resume
    logging:    progress, metrics sinks, MFU peak, sample generation
    eval:       downstream tasks (lm-evaluation-harness) scored during training

Strict: an unknown section or key is an error naming the closest valid one; values are checked
against each field's type (so `lr: 3e-4`, which YAML reads as a string, still becomes a float).
Torch-free, so a bad config fails before any heavy import.
"""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from pathlib import Path

from pytrain.config_names import suggest_key, suggest_section
from pytrain.errors import PytrainError, did_you_mean, shown
from pytrain.model.config import PRESETS, ModelConfig
from pytrain.safe_read import MAX_JSON_BYTES, check_yaml, parse_json, read_bytes


def _model_section():
    """The `model:` section: a preset, init_from, then every ModelConfig field as an optional override
    (derived from ModelConfig, so a model field is declared once)."""
    overrides = [(f.name, typing.get_type_hints(ModelConfig)[f.name] | None, field(default=None))
                 for f in fields(ModelConfig)]
    section = make_dataclass("ModelSection", [("preset", str, field(default="125m")),
                                              ("init_from", typing.Optional[str], field(default=None)),
                                              *overrides])
    section.__doc__ = """A preset, then any field set here replaces the preset's (vocab_size: null = the tokenizer's).

    family: the architecture (pytrain.model.families); null: the preset's, or init_from's model_type.
    init_from: a Hugging Face folder of a supported family (e.g. from `pytrain export`) to continue training
    from: its config.json replaces the preset and its weights the random initialisation; shape fields set
    here must agree with it, the others (max_position_embeddings, rope_theta, ...) may change.
    """
    section.__module__ = __name__
    return section


ModelSection = _model_section()


@dataclass
class DataSection:
    path: str | None = None           # a pack, `pack --shard` folder or glob: a one-source mixture (this or mixture)
    mixture: list[dict] | None = None  # weighted sources: [{name, path (pack, sharded pack or glob), weight}]
    seq_len: int | None = None        # null: the model's max_position_embeddings
    document_masking: bool = False    # attend within documents only, positions restart per document
    shuffle: bool = True
    verify: str = "full"              # before the first step: full (checksums too) | quick (structure, ids) | none


@dataclass
class OptimSection:
    """The optimizer (docs/optimizers.md). `lr`, `weight_decay` and the schedule mean the same for both:
    Muon's update is scaled to AdamW's RMS. AdamW's keys also apply to Muon's AdamW groups."""
    name: str = "adamw"               # adamw | muon (Muon on the blocks' matrices, AdamW on the rest)
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1         # not applied to norms, biases and embeddings
    grad_clip: float = 1.0            # max global gradient norm; 0 disables clipping
    fused: bool | None = None         # null: fused AdamW (CUDA and CPU)
    momentum: float = 0.95            # muon: momentum of the matrices' updates, in [0, 1)
    nesterov: bool = True             # muon: Nesterov momentum
    ns_steps: int = 5                 # muon: Newton-Schulz iterations, 1 to 99
    ns_coefficients: list[float] = field(default_factory=lambda: [3.4445, -4.775, 2.0315])  # muon: (a, b, c)


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
    dtype: str = "auto"               # compute dtype: auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    reduce_dtype: str = "fp32"        # gradient reduction dtype: fp32 | bf16 (fp16 runs reduce in fp32)
    loss_scale_init: float = 65536.0  # fp16: the dynamic loss scale's start (torch.amp.GradScaler's 2^16)
    loss_scale_growth_interval: int = 2000  # fp16: overflow-free steps in a row before the scale doubles
    activation_checkpointing: int | str = "none"  # none | full | k (every k-th block)
    compile: bool = False             # torch.compile each block
    kernels: str = "auto"             # pytrain.ops backend: auto | triton | torch
    cpu_offload: bool = False         # FSDP2 CPU offload of parameters, gradients, optimizer state
    hsdp: bool = False                # shard within a node, replicate across nodes
    hsdp_shard_size: int | None = None  # null: processes per node (LOCAL_WORLD_SIZE)
    expert_parallel: int = 1          # MoE: ranks each layer's experts are split over (all-to-all); 1: none
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
    resume_other_config: bool = False  # continue a run directory that another config file created
    resume_other_data: bool = False   # continue although the data was re-packed since the checkpoint (a note says so)
    async_: bool = False              # `checkpoint.async`: write in the background while training goes on


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
class EvalSection:
    """Downstream evaluation during training (pytrain.train.downstream; the validation loss is train.eval_every)."""
    tasks: list[str] = field(default_factory=list)  # lm-evaluation-harness task names; empty: none
    every: int = 0                    # steps between evaluations; 0: at the last step only
    include_path: str | None = None   # a folder of task YAML files (local data)
    limit: int | None = None          # documents per task; null: all
    num_fewshot: int | None = None    # null: each task's own
    batch_size: int = 8               # sequences per forward


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def to_dict(self) -> dict:
        return {name: {KEYWORD_FIELDS.get(key, key): value for key, value in section.items()}
                for name, section in asdict(self).items()}

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# Config keys that are Python keywords -> the field holding each (a dataclass field cannot be named `async`)
KEYWORD_KEYS = {"async": "async_"}
KEYWORD_FIELDS = {field_name: key for key, field_name in KEYWORD_KEYS.items()}

CHOICES = {
    "optim.name": ("adamw", "muon"),
    "schedule.name": ("cosine", "linear", "constant", "wsd"),
    "data.verify": ("full", "quick", "none"),
    "train.dtype": ("auto", "bf16", "fp16", "fp32"),
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
        data = read_bytes(path, MAX_JSON_BYTES, "config file")
    except FileNotFoundError:
        raise PytrainError(f"{path}: config file not found") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PytrainError(f"{path}: not UTF-8 text (byte {error.start}); save the config as UTF-8") from None
    if path.suffix == ".json":
        return _mapping(parse_json(text, str(path), object_pairs_hook=_unique_keys_object), path)
    check_yaml(text, str(path))
    try:
        raw = _yaml_unique_keys(text)
    except PytrainError as error:
        raise PytrainError(f"{path}: {error}") from None
    except Exception as error:  # yaml/json syntax errors: one line naming the file
        detail = " ".join(str(error).split())
        raise PytrainError(f"{path}: cannot parse config: {detail}") from None
    return _mapping(raw, path)


def _mapping(raw, path: Path) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PytrainError(f"{path}: a config is a mapping of sections (model, data, ...), got {type(raw).__name__}")
    return raw


def _unique_keys_object(pairs: list) -> dict:
    keys = [key for key, _ in pairs]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    if duplicated:
        raise PytrainError(f'key "{duplicated[0]}" appears twice in one object; merge the two into one')
    return dict(pairs)


def _yaml_unique_keys(text: str):
    """yaml.safe_load, but a key given twice in one mapping is an error (YAML would keep only the last)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise PytrainError(f'line {key_node.start_mark.line + 1}: key "{key}" appears twice in one '
                                       f"mapping (first on line {seen[key]}); YAML would silently keep only the "
                                       "last: merge them into one")
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep)

    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506  (a SafeLoader subclass)


def _build(raw: dict, where: str) -> RunConfig:
    config = RunConfig()
    sections = {f.name for f in fields(RunConfig)}
    for name, values in raw.items():
        if name not in sections:
            raise PytrainError(f'{where}: unknown section "{name}"{suggest_section(str(name), sections)}; '
                               f"sections are {', '.join(sorted(sections))}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise PytrainError(f'{where}: section "{name}" must be a mapping of keys, got {shown(values)}')
        for key, value in values.items():
            _set(config, f"{name}.{key}", value, where)
    return config


def _override(config: RunConfig, item: str) -> RunConfig:
    import yaml

    key, sep, text = item.partition("=")
    given = item if len(item) <= 80 else item[:80] + "..."  # echoed in full, a long value would hide the message
    if not sep or "." not in key:
        raise PytrainError(f'override "{given}": expected section.key=value, e.g. train.steps=100')
    check_yaml(text, f'override "{key}"')
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except (yaml.YAMLError, ValueError):  # ValueError: an integer of more than 4300 digits
        value = text
    _set(config, key.strip(), value, f'override "{given}"')
    return config


def _set(config: RunConfig, dotted: str, value, where: str) -> None:
    section_name, _, key = dotted.partition(".")
    if not hasattr(config, section_name):
        sections = [f.name for f in fields(RunConfig)]
        raise PytrainError(f'{where}: unknown section "{section_name}"{suggest_section(section_name, sections)}')
    section = getattr(config, section_name)
    hints = typing.get_type_hints(type(section))
    name = KEYWORD_KEYS.get(key, key)
    if name not in hints or key in KEYWORD_FIELDS:
        valid = [f"{section_name}.{KEYWORD_FIELDS.get(k, k)}" for k in hints]
        every = [f"{f.name}.{KEYWORD_FIELDS.get(k, k)}" for f in fields(RunConfig)
                 for k in typing.get_type_hints(type(getattr(config, f.name)))]
        raise PytrainError(f'{where}: unknown key "{dotted}"{suggest_key(dotted, valid, every)}')
    setattr(section, name, _coerce(value, hints[name], dotted, where))


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
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None or not math.isfinite(number):
            raise _type_error(value, "a finite number", key, where)
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise _type_error(value, "a string", key, where)
    raise AssertionError(f"config field {key} has unsupported type {tp}")


def _type_error(value, expected: str, key: str, where: str) -> PytrainError:
    return PytrainError(f"{where}: {key} must be {expected}, got {shown(value)}")


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
    positive = ["train.steps", "train.batch_size", "train.micro_batch_size", "data.seq_len", "train.expert_parallel",
                "train.loss_scale_init", "train.loss_scale_growth_interval",
                "train.eval_max_batches", "logging.every", "logging.sample_max_tokens", "optim.eps", "logging.peak_tflops",
                "eval.limit", "eval.batch_size"]
    non_negative = ["train.eval_every", "checkpoint.every", "checkpoint.keep_last_k", "logging.sample_every",
                    "schedule.warmup_steps", "optim.grad_clip", "optim.weight_decay", "checkpoint.resume_step",
                    "logging.sample_temperature", "eval.every", "eval.num_fewshot"]
    for dotted in positive + non_negative:
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if value is not None and (value < 0 or (value == 0 and dotted in positive)):
            raise PytrainError(f"{dotted} must be {'positive' if dotted in positive else '>= 0'}, got {value}")
    if not 0 <= config.train.seed < 2**32:
        raise PytrainError(f"train.seed must be an integer in [0, 2^32), got {config.train.seed}")
    if config.optim.lr <= 0:
        raise PytrainError(f"optim.lr must be positive, got {config.optim.lr}")
    if len(config.optim.betas) != 2 or not all(0 <= b < 1 for b in config.optim.betas):
        raise PytrainError(f"optim.betas must be two numbers in [0, 1), got {config.optim.betas}")
    _validate_muon(config.optim)
    if not 0 <= config.schedule.min_lr_ratio <= 1 or not 0 < config.schedule.decay_fraction <= 1:
        raise PytrainError("schedule.min_lr_ratio must be in [0, 1] and schedule.decay_fraction in (0, 1]")
    if config.schedule.warmup_steps is not None and config.schedule.warmup_steps > config.train.steps:
        raise PytrainError(f"schedule.warmup_steps ({config.schedule.warmup_steps}) exceeds train.steps "
                           f"({config.train.steps})")
    if config.train.dtype == "fp16" and config.train.reduce_dtype != "fp32":
        raise PytrainError(f"train.dtype=fp16 reduces gradients in fp32 (fp16 would overflow, bf16 would lose the "
                           f"loss-scaled precision): remove train.reduce_dtype={config.train.reduce_dtype}")
    if not all(isinstance(task, str) and task.strip() for task in config.eval.tasks):
        raise PytrainError(f"eval.tasks must be lm-evaluation-harness task names, got {config.eval.tasks!r}")
    activation_checkpoint_every(config.train)


def _validate_muon(optim: OptimSection) -> None:
    if not 0 <= optim.momentum < 1:
        raise PytrainError(f"optim.momentum must be in [0, 1), got {shown(optim.momentum)}")
    if not 1 <= optim.ns_steps <= 99:
        raise PytrainError(f"optim.ns_steps (Newton-Schulz iterations) must be 1 to 99, got {shown(optim.ns_steps)}")
    if len(optim.ns_coefficients) != 3:
        raise PytrainError(f"optim.ns_coefficients must be three numbers (a, b, c), got {shown(optim.ns_coefficients)}")


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
            raise PytrainError(f"{where}: name must be a non-empty string, got {shown(name)}")
        where = f"{where} ({name})"
        if name in seen:
            raise PytrainError(f'{where}: duplicate name "{name}" (also data.mixture[{seen[name]}]); names must differ')
        seen[name] = i
        if not isinstance(path, str) or not path:
            raise PytrainError(f"{where}: path must be a pack directory or a glob of them, got {shown(path)}")
        try:
            number = float(weight) if not isinstance(weight, bool) else float("nan")
        except (TypeError, ValueError):
            number = float("nan")
        if not 0 < number < float("inf"):
            raise PytrainError(f"{where}: weight must be a number > 0, got {shown(weight)}")
        entry["weight"] = number


def activation_checkpoint_every(train: TrainSection) -> int:
    """train.activation_checkpointing as "checkpoint every k-th block": 0 none, 1 every block (full)."""
    value = train.activation_checkpointing
    if value in ("none", "full"):
        return 0 if value == "none" else 1
    if isinstance(value, int) and value >= 0:
        return value
    raise PytrainError(f'train.activation_checkpointing must be "none", "full" or k >= 0 (every k-th block), '
                       f"got {shown(value)}")
