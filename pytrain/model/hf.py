"""The Hugging Face format of pytrain's Llama: config.json <-> ModelConfig, weight names, and `load_hf`.

    folder/config.json                 LlamaConfig (model_type llama, architectures LlamaForCausalLM)
    folder/model.safetensors           the weights, or model-0000i-of-0000n.safetensors shards plus
                                       model.safetensors.index.json

pytrain's parameter names are Hugging Face's without the `model.` prefix, so the mapping is a rename in
both directions and tensors are copied bit for bit. A tied LM head is stored once, as
`model.embed_tokens.weight`, as `save_pretrained` does. RoPE scaling is read from `rope_parameters`
(transformers 5) or `rope_scaling` with a top-level `rope_theta` (transformers 4, Llama 3.1+ folders):
rope_type default, linear and llama3 are supported; others (dynamic, yarn, longrope, ...) are refused.

    from pytrain.model import load_hf
    model, config = load_hf("path/to/Llama-3.2-1B")   # a ready, unsharded model in eval mode

Torch-free at import: the run configuration reads `hf_model_config` (model.init_from) before torch is loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pytrain.errors import PytrainError
from pytrain.model.config import ROPE_TYPES, ModelConfig

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# config.json keys whose other values pytrain's Llama cannot reproduce -> the accepted values (first: ours)
_REQUIRED = {"mlp_bias": (False, None), "hidden_act": ("silu", None), "pretraining_tp": (1, None)}
# ModelConfig fields that config.json carries inside the rope scaling dict, not at the top level
_ROPE_SCALING_FIELDS = ("rope_type", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                        "rope_original_max_position_embeddings")
_OPTIONAL = {"attention_bias": False, "tie_word_embeddings": False, "initializer_range": 0.02, "rope_theta": 10000.0}


def hf_name(name: str) -> str:
    """pytrain parameter name -> Hugging Face LlamaForCausalLM tensor name."""
    return name if name == "lm_head.weight" else f"model.{name}"


# ----------------------------------------------------------------------------- ModelConfig -> config.json
def hf_config(model_config: ModelConfig, *, bos_id: int | None, eos_id: int | None, dtype: str = "fp32") -> dict:
    """config.json for `model_config`, readable by transformers 4.x (rope_theta, rope_scaling) and 5.x
    (rope_parameters)."""
    fields = {k: v for k, v in model_config.to_dict().items() if k not in _ROPE_SCALING_FIELDS}
    scaling = model_config.rope_scaling
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **fields,
        "head_dim": model_config.head_dim,
        "hidden_act": "silu",
        "rope_parameters": {**(scaling or {"rope_type": "default"}), "rope_theta": model_config.rope_theta},
        "rope_scaling": scaling,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": DTYPE_NAMES[dtype],
        "use_cache": True,
    }


def hf_tensors(model, dtype: str = "fp32") -> dict:
    """HF name -> contiguous CPU tensor in `dtype`; named_parameters lists a tied LM head once (the embedding)."""
    import torch

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    return {hf_name(name): param.detach().to("cpu", torch_dtype).contiguous()
            for name, param in model.named_parameters()}


# ----------------------------------------------------------------------------- config.json -> ModelConfig
def hf_model_config(folder: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of a Hugging Face Llama folder, or a one-line error naming the file and the key."""
    folder = Path(folder)
    path = folder / CONFIG
    if not folder.is_dir():
        raise PytrainError(f"{folder}: no such folder (expected a Hugging Face Llama folder with config.json and "
                           "model.safetensors, e.g. from `pytrain export`)")
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise PytrainError(f"{path}: missing; not a Hugging Face model folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PytrainError(f"{path}: invalid JSON ({error})") from None
    if not isinstance(config, dict):
        raise PytrainError(f"{path}: expected a JSON object, got {type(config).__name__}")
    if config.get("model_type") != "llama":
        raise PytrainError(f"{path}: model_type is {config.get('model_type')!r}; pytrain trains Llama models "
                           "(model_type llama, LlamaForCausalLM)")
    for key, allowed in _REQUIRED.items():
        if config.get(key, allowed[0]) not in allowed:
            raise PytrainError(f"{path}: {key}={config[key]!r} is not supported by pytrain's Llama "
                               f"(needs {allowed[0]!r})")
    values = {}
    for name, kind in ModelConfig.__annotations__.items():
        if name in _ROPE_SCALING_FIELDS:
            continue
        if name in config and config[name] is not None:
            values[name] = _typed(config[name], kind, name, path)
        elif name == "num_key_value_heads":
            values[name] = values["num_attention_heads"]  # annotations list the attention heads first
        elif name in _OPTIONAL:
            values[name] = _OPTIONAL[name]
        else:
            raise PytrainError(f"{path}: missing key {name!r}")
    values.update(_rope(config, path))
    try:
        model_config = ModelConfig(**values)
    except PytrainError as error:
        raise PytrainError(f"{path}: {error}") from None
    if config.get("head_dim") not in (None, model_config.head_dim):
        raise PytrainError(f"{path}: head_dim={config['head_dim']} differs from hidden_size / num_attention_heads "
                           f"= {model_config.head_dim}; pytrain's Llama needs them equal")
    return model_config


def _typed(value, kind: str, key: str, path: Path):
    """`value` checked against ModelConfig's annotation `kind` ("int", "float", "bool", "str", "int | None")."""
    if "int" in kind and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "str" and isinstance(value, str):
        return value
    expected = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
    raise PytrainError(f"{path}: {key} must be {expected.get(kind.split(' ')[0], kind)}, got {value!r}")


def _rope(config: dict, path: Path) -> dict:
    """rope_theta and the rope_* scaling fields, from rope_parameters (5.x) or rope_scaling + rope_theta (4.x)."""
    key = "rope_parameters" if config.get("rope_parameters") is not None else "rope_scaling"
    rope = config.get(key) or {}
    if not isinstance(rope, dict):
        raise PytrainError(f"{path}: {key} must be an object like {{\"rope_type\": \"llama3\", ...}}, got {rope!r}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise PytrainError(f"{path}: {key}.rope_type {rope_type!r} is not supported by pytrain "
                           f"(supported: {', '.join(ROPE_TYPES)})")
    theta = rope.get("rope_theta", config.get("rope_theta"))
    values = {"rope_type": rope_type}
    if theta is not None:
        values["rope_theta"] = _typed(theta, "float", f"{key}.rope_theta", path)
    wanted = {"linear": {"factor": "float"},
              "llama3": {"factor": "float", "low_freq_factor": "float", "high_freq_factor": "float",
                         "original_max_position_embeddings": "int"}}.get(rope_type, {})
    for name, kind in wanted.items():
        if rope.get(name) is None:
            raise PytrainError(f"{path}: {key}.{name} is missing (rope_type {rope_type} needs it)")
        values[f"rope_{name}"] = _typed(rope[name], kind, f"{key}.{name}", path)
    return values


# ----------------------------------------------------------------------------- weights
class HFWeights:
    """The tensors of a Hugging Face Llama folder, read one at a time by pytrain parameter name.

    Files are memory-mapped (safetensors), so loading a model holds one full tensor at a time however
    large the checkpoint. Every expected tensor is checked for presence up front and for shape on read.
    """

    def __init__(self, folder: str | os.PathLike, model_config: ModelConfig):
        from safetensors import safe_open

        self.folder = Path(folder)
        self._handles: dict[Path, object] = {}
        self._safe_open = safe_open
        index = self.folder / WEIGHTS_INDEX
        if index.is_file():
            weight_map = _read_weight_map(index)
        elif (self.folder / WEIGHTS).is_file():
            weight_map = dict.fromkeys(self._handle(self.folder / WEIGHTS).keys(), WEIGHTS)
        else:
            raise PytrainError(f"{self.folder}: no {WEIGHTS} or {WEIGHTS_INDEX} (only safetensors weights are read)")
        self._files = {name: self.folder / file for name, file in weight_map.items()}
        self.shapes = _parameter_shapes(model_config)
        missing = [hf_name(n) for n in self.shapes if hf_name(n) not in self._files]
        if missing:
            raise PytrainError(f"{self.folder}: missing tensor {missing[0]}"
                               f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
        for name, shape in self.shapes.items():  # from the files' headers, before anything is allocated
            key = hf_name(name)
            stored = tuple(self._handle(self._files[key]).get_slice(key).get_shape())
            if stored != shape:
                raise PytrainError(f"{self._files[key]}: {key} has shape {list(stored)}, config.json implies "
                                   f"{list(shape)}")
        known = {hf_name(n) for n in self.shapes} | {"lm_head.weight"}
        unknown = sorted(n for n in self._files if n not in known and not n.endswith("rotary_emb.inv_freq"))
        if unknown:
            raise PytrainError(f"{self.folder}: unexpected tensor {unknown[0]}: not part of the Llama that "
                               "config.json describes")

    def _handle(self, file: Path):
        if file not in self._handles:
            try:
                self._handles[file] = self._safe_open(file, "pt")
            except Exception as error:  # missing, truncated or not safetensors: one line naming the file
                raise PytrainError(f"{file}: not a readable safetensors file ({' '.join(str(error).split())[:200]})") from None
        return self._handles[file]

    def __call__(self, name: str):
        """The tensor for pytrain parameter `name` (CPU, as stored; its shape was checked at construction)."""
        key = hf_name(name)
        return self._handle(self._files[key]).get_tensor(key)


def _read_weight_map(index: Path) -> dict:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise PytrainError(f"{index}: not a safetensors index (needs a weight_map object): {error}") from None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) and "/" not in f and "\\" not in f
                                                   for f in weight_map.values()):
        raise PytrainError(f"{index}: weight_map must map tensor names to file names in the folder")
    return weight_map


def _parameter_shapes(model_config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """pytrain parameter name -> shape (a tied LM head is not listed: it is the embedding)."""
    import torch

    from pytrain.model.llama import Llama

    with torch.device("meta"):
        return {name: tuple(param.shape) for name, param in Llama(model_config).named_parameters()}


# ----------------------------------------------------------------------------- load_hf
def load_hf(folder: str | os.PathLike, *, device="cpu", dtype=None):
    """Load a Hugging Face Llama folder as a ready pytrain `Llama` (unsharded, eval mode).

    Returns (model, model_config). `dtype` (a torch dtype, default float32) is the parameters' dtype;
    the weights are read one tensor at a time from the memory-mapped safetensors files. Folders from
    `pytrain export`, from transformers' `save_pretrained` and Llama 2/3/3.1/3.2 releases load (RoPE
    scaling llama3 or linear included); anything pytrain's Llama cannot reproduce is a one-line
    PytrainError naming the file and the key.
    """
    import torch

    from pytrain.model.llama import Llama

    model_config = hf_model_config(folder)
    weights = HFWeights(folder, model_config)
    with torch.device("meta"):
        model = Llama(model_config)
    model.to_empty(device=device)
    if dtype is not None:
        model.to(dtype)
    if model_config.tie_word_embeddings:  # to_empty gave each module its own tensor: share them again
        model.lm_head.weight = model.embed_tokens.weight
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(weights(name))
    return model.eval(), model_config
