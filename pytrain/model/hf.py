"""The Hugging Face format, for every family: config.json <-> ModelConfig, weight names, and `load_hf`.

    folder/config.json                 the family's config (model_type llama, qwen2, qwen3, mistral, gpt_neox,
                                       qwen2_moe, qwen3_moe, mixtral, olmoe)
    folder/model.safetensors           the weights, or model-0000i-of-0000n.safetensors shards plus
                                       model.safetensors.index.json

`model_type` picks the family (pytrain.model.families); its adapter (families/<name>/hf.py) maps the
config keys and names the tensors. Most names map one to one; a mixture-of-experts layer's expert
weights (one 3-D tensor per projection in pytrain) are stacked from, and split into, the per-expert
tensors of the Hub's layout, or read from transformers 5's fused gate_up_proj (a `Layout` per parameter,
pytrain.model.families.moe_hf). Tensors are copied bit for bit in both directions. A tied LM head is
stored once (the embedding's name), as `save_pretrained` does. RoPE
scaling is read from `rope_parameters` (transformers 5) or `rope_scaling` with a top-level `rope_theta`
(transformers 4): rope_type default, linear and llama3 are supported; others (dynamic, yarn, longrope,
...) are refused, as is every option the family's architecture in pytrain does not reproduce.

    from pytrain.model import load_hf
    model, config = load_hf("path/to/Qwen2.5-0.5B")   # a ready, unsharded model in eval mode

Torch-free at import: the run configuration reads `hf_model_config` (model.init_from) before torch is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from pytrain.errors import PytrainError
from pytrain.model.config import ROPE_TYPES, ModelConfig
from pytrain.safe_read import read_json

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _adapter(family_name: str):
    from pytrain.model.families import family

    return family(family_name).hf_adapter()


def _adapter_for_model_type(model_type, path: Path):
    from pytrain.model.families import FAMILIES

    for spec in FAMILIES.values():
        adapter = spec.hf_adapter()
        if adapter.MODEL_TYPE == model_type:
            return spec.name, adapter
    supported = ", ".join(spec.hf_adapter().MODEL_TYPE for spec in FAMILIES.values())
    raise PytrainError(f"{path}: model_type {model_type!r} is not supported by pytrain (supported: {supported})")


def hf_name(name: str, family_name: str = "llama") -> str:
    """pytrain parameter name -> the family's Hugging Face tensor name."""
    return _adapter(family_name).hf_name(name)


class Layout(NamedTuple):
    """How one pytrain parameter is stored in a Hugging Face folder.

    kind "same": the tensor `names[0]` itself; "stack": the tensors `names` (one per expert) stacked on a
    new dim 0; "half": half `half` (0: first, 1: second) of dim 1 of `names[0]` (transformers 5's fused
    gate_up_proj [E, 2I, H] holds gate_proj then up_proj)."""
    kind: str
    names: tuple[str, ...]
    half: int = 0

    def stored_shapes(self, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """The shape each of `names` must have for a parameter of `shape`."""
        if self.kind == "stack":
            return [shape[1:]] * len(self.names)
        if self.kind == "half":
            return [(shape[0], 2 * shape[1], *shape[2:])]
        return [shape]

    def read(self, tensor):
        """The parameter from `tensor(name)` of each stored name."""
        if self.kind == "stack":
            import torch

            return torch.stack([tensor(name) for name in self.names])
        full = tensor(self.names[0])
        if self.kind == "half":
            width = full.shape[1] // 2
            return full[:, self.half * width:(self.half + 1) * width]
        return full

    def split(self, value) -> dict:
        """HF name -> tensor for writing `value` in this layout (not "half": exports write the Hub's)."""
        if self.kind == "stack":
            return {name: value[i].contiguous() for i, name in enumerate(self.names)}
        if self.kind != "same":
            raise ValueError(f"cannot write layout {self.kind}")
        return {self.names[0]: value}


def layouts(adapter, name: str, shape: tuple[int, ...]) -> list[Layout]:
    """The ways `adapter`'s family stores parameter `name` of `shape`, the one exports write first."""
    if hasattr(adapter, "hf_layouts"):
        return adapter.hf_layouts(name, shape)
    return [Layout("same", (adapter.hf_name(name),))]


# ----------------------------------------------------------------------------- ModelConfig -> config.json
def hf_config(model_config: ModelConfig, *, bos_id: int | None, eos_id: int | None, dtype: str = "fp32") -> dict:
    """config.json for `model_config`, readable by transformers 4.x and 5.x."""
    return {
        **_adapter(model_config.family).config_json(model_config),
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": DTYPE_NAMES[dtype],
        "use_cache": True,
    }


def rope_json(model_config: ModelConfig, **extra) -> dict:
    """The RoPE keys of config.json: `rope_parameters` (transformers 5, with `extra`, e.g. partial_rotary_factor)
    and `rope_scaling` (transformers 4; rope_theta is a top-level key there)."""
    scaling = model_config.rope_scaling
    return {"rope_theta": model_config.rope_theta,
            "rope_parameters": {**(scaling or {"rope_type": "default"}), "rope_theta": model_config.rope_theta, **extra},
            "rope_scaling": scaling}


def hf_tensors(model, dtype: str = "fp32") -> dict:
    """HF name -> contiguous CPU tensor in `dtype`; named_parameters lists a tied LM head once (the embedding)."""
    import torch

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    adapter = _adapter(model.config.family)
    tensors = {}
    for name, param in model.named_parameters():
        value = param.detach().to("cpu", torch_dtype).contiguous()
        tensors.update(layouts(adapter, name, tuple(param.shape))[0].split(value))
    return tensors


# ----------------------------------------------------------------------------- config.json -> ModelConfig
def read_config_json(folder: str | os.PathLike) -> tuple[dict, Path]:
    """(config.json as a dict, its path), or a one-line error naming the file."""
    folder = Path(folder)
    path = folder / CONFIG
    if not folder.is_dir():
        raise PytrainError(f"{folder}: no such folder (expected a Hugging Face model folder with config.json and "
                           "model.safetensors, e.g. from `pytrain export`)")
    try:
        config = read_json(path)
    except FileNotFoundError:
        raise PytrainError(f"{path}: missing; not a Hugging Face model folder") from None
    if not isinstance(config, dict):
        raise PytrainError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config, path


def hf_model_config(folder: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of a Hugging Face folder of a supported family, or a one-line error naming the file
    and the key."""
    config, path = read_config_json(folder)
    family_name, adapter = _adapter_for_model_type(config.get("model_type"), path)
    values = adapter.model_config_values(config, path)
    try:
        return ModelConfig(family=family_name, **values)
    except PytrainError as error:
        raise PytrainError(f"{path}: {error}") from None


def require(config: dict, path: Path, accepted: dict, family_name: str) -> None:
    """Refuse config.json keys whose value the family's pytrain model cannot reproduce (`accepted`: key ->
    the values it can, the first being what pytrain writes)."""
    for key, allowed in accepted.items():
        if config.get(key, allowed[0]) not in allowed:
            raise PytrainError(f"{path}: {key}={config[key]!r} is not supported by pytrain's {family_name} "
                               f"(needs {allowed[0]!r})")


def read_fields(config: dict, path: Path, names, defaults: dict) -> dict:
    """The ModelConfig fields `names`, read from config.json under the same key and type-checked; a missing
    (or null) key takes `defaults[name]`, and one without a default is an error."""
    kinds = ModelConfig.__annotations__
    values = {}
    for name in names:
        if config.get(name) is not None:
            values[name] = _typed(config[name], kinds[name], name, path)
        elif name in defaults:
            values[name] = defaults[name]
        else:
            raise PytrainError(f"{path}: missing key {name!r}")
    return values


def _typed(value, kind: str, key: str, path: Path):
    """`value` checked against ModelConfig's annotation `kind` ("int", "float", "bool", "str", "int | None", ...)."""
    kind = kind.removesuffix(" | None")
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "str" and isinstance(value, str):
        return value
    expected = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
    raise PytrainError(f"{path}: {key} must be {expected.get(kind.split(' ')[0], kind)}, got {value!r}")


def read_rope(config: dict, path: Path) -> dict:
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
    """The tensors of a Hugging Face folder, read one at a time by pytrain parameter name.

    Files are memory-mapped (safetensors), so loading a model holds one full tensor at a time however
    large the checkpoint. Every expected tensor is checked for presence up front and for shape on read.
    """

    def __init__(self, folder: str | os.PathLike, model_config: ModelConfig):
        from safetensors import safe_open

        self.folder = Path(folder)
        self._handles: dict[Path, object] = {}
        self._safe_open = safe_open
        adapter = _adapter(model_config.family)
        index = self.folder / WEIGHTS_INDEX
        if index.is_file():
            weight_map = _read_weight_map(index)
        elif (self.folder / WEIGHTS).is_file():
            weight_map = dict.fromkeys(self._handle(self.folder / WEIGHTS).keys(), WEIGHTS)
        else:
            raise PytrainError(f"{self.folder}: no {WEIGHTS} or {WEIGHTS_INDEX} (only safetensors weights are read)")
        self._files = {name: self.folder / file for name, file in weight_map.items()}
        self.shapes = _parameter_shapes(model_config)
        self._layouts: dict[str, Layout] = {}
        missing = []
        for name, shape in self.shapes.items():  # the first layout the folder holds completely
            options = layouts(adapter, name, shape)
            found = next((o for o in options if all(n in self._files for n in o.names)), None)
            if found is None:
                missing += [n for n in options[0].names if n not in self._files]
            else:
                self._layouts[name] = found
        if missing:
            raise PytrainError(f"{self.folder}: missing tensor {missing[0]}"
                               f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
        for name, shape in self.shapes.items():  # from the files' headers, before anything is allocated
            layout = self._layouts[name]
            for key, expected in zip(layout.names, layout.stored_shapes(shape)):
                stored = tuple(self._handle(self._files[key]).get_slice(key).get_shape())
                if stored != tuple(expected):
                    raise PytrainError(f"{self._files[key]}: {key} has shape {list(stored)}, config.json implies "
                                       f"{list(expected)}")
        known = {key for layout in self._layouts.values() for key in layout.names}
        known.add(adapter.hf_name("lm_head.weight"))  # a tied head stored too
        unknown = sorted(n for n in self._files if n not in known and not n.endswith(("rotary_emb.inv_freq",
                                                                                      "attention.bias",
                                                                                      "attention.masked_bias")))
        if unknown:
            raise PytrainError(f"{self.folder}: unexpected tensor {unknown[0]}: not part of the {model_config.family} "
                               "model that config.json describes")

    def _handle(self, file: Path):
        if file not in self._handles:
            try:
                self._handles[file] = self._safe_open(file, "pt")
            except Exception as error:  # missing, truncated or not safetensors: one line naming the file
                raise PytrainError(f"{file}: not a readable safetensors file ({' '.join(str(error).split())[:200]})") from None
        return self._handles[file]

    def __call__(self, name: str):
        """The tensor for pytrain parameter `name` (CPU, as stored; its shape was checked at construction)."""
        return self._layouts[name].read(lambda key: self._handle(self._files[key]).get_tensor(key))


def _read_weight_map(index: Path) -> dict:
    try:
        weight_map = read_json(index)["weight_map"]
    except (KeyError, TypeError) as error:
        raise PytrainError(f"{index}: not a safetensors index (needs a weight_map object): {error}") from None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) and "/" not in f and "\\" not in f
                                                   for f in weight_map.values()):
        raise PytrainError(f"{index}: weight_map must map tensor names to file names in the folder")
    return weight_map


def _parameter_shapes(model_config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """pytrain parameter name -> shape (a tied LM head is not listed: it is the embedding)."""
    import torch

    from pytrain.model.families import build_model

    with torch.device("meta"):
        return {name: tuple(param.shape) for name, param in build_model(model_config).named_parameters()}


# ----------------------------------------------------------------------------- load_hf
def load_hf(folder: str | os.PathLike, *, device="cpu", dtype=None):
    """Load a Hugging Face folder of a supported family as a ready pytrain model (unsharded, eval mode).

    Returns (model, model_config). `dtype` (a torch dtype, default float32) is the parameters' dtype;
    the weights are read one tensor at a time from the memory-mapped safetensors files. Folders from
    `pytrain export`, from transformers' `save_pretrained` and the families' releases load (RoPE scaling
    llama3 or linear included); anything pytrain cannot reproduce is a one-line PytrainError naming the
    file and the key.
    """
    import torch

    from pytrain.model.families import build_model
    from pytrain.model.materialize import materialize

    model_config = hf_model_config(folder)
    weights = HFWeights(folder, model_config)
    with torch.device("meta"):
        model = build_model(model_config)
    materialize(model, device, lambda name, full: full.copy_(weights(name)), dtype=dtype)
    return model.eval(), model_config
