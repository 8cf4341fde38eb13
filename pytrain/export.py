"""Hugging Face interop: export a run as a `LlamaForCausalLM` folder, and read one back (`model.init_from`).

    HF_DIR/config.json                  LlamaConfig (model_type llama, architectures LlamaForCausalLM)
    HF_DIR/model.safetensors            the weights, or model-0000i-of-0000n.safetensors shards plus
                                        model.safetensors.index.json when larger than the shard size
    HF_DIR/tokenizer.json               the run's tokenizer, with tokenizer_config.json
    HF_DIR/generation_config.json       BOS/EOS/pad ids

pytrain's parameter names are Hugging Face's without the `model.` prefix, so the mapping is a rename in
both directions and tensors are copied bit for bit: export -> import -> export gives identical files.
A tied LM head is stored once, as `model.embed_tokens.weight`, as `save_pretrained` does.
Only plain RoPE is supported: a folder with RoPE scaling (Llama 3.1+ "llama3", YaRN, ...) is refused.
This module is torch-free at import (the run config reads `hf_model_config` before torch is loaded).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from pytrain.errors import PytrainError
from pytrain.model.config import ModelConfig

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 5 * 10**9  # save_pretrained's classic default
_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# config.json keys whose other values pytrain's Llama cannot reproduce -> the accepted values (first: ours)
_REQUIRED = {"mlp_bias": (False, None), "hidden_act": ("silu", None), "pretraining_tp": (1, None)}


# ----------------------------------------------------------------------------- names
def hf_name(name: str) -> str:
    """pytrain parameter name -> Hugging Face LlamaForCausalLM tensor name."""
    return name if name == "lm_head.weight" else f"model.{name}"


def parse_size(text: str) -> int:
    """'5GB', '200MB', '512KB', '1000' (bytes) -> bytes (decimal units, as Hugging Face counts them)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise PytrainError(f"--max-shard-size: expected a size like 5GB or 200MB, got {text!r}")
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}[(match.group(2) or "B").upper()]
    return int(float(match.group(1)) * scale)


# ----------------------------------------------------------------------------- export
def hf_config(model_config: ModelConfig, *, bos_id: int | None, eos_id: int | None, dtype: str = "fp32") -> dict:
    """config.json for `model_config` (readable by transformers 4.x and 5.x: RoPE theta in both spellings)."""
    mc = model_config
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": mc.vocab_size,
        "hidden_size": mc.hidden_size,
        "intermediate_size": mc.intermediate_size,
        "num_hidden_layers": mc.num_hidden_layers,
        "num_attention_heads": mc.num_attention_heads,
        "num_key_value_heads": mc.num_key_value_heads,
        "head_dim": mc.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": mc.max_position_embeddings,
        "rms_norm_eps": mc.rms_norm_eps,
        "rope_theta": mc.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": mc.rope_theta},
        "rope_scaling": None,
        "attention_bias": mc.attention_bias,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": mc.tie_word_embeddings,
        "initializer_range": mc.initializer_range,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": _DTYPES[dtype],
        "use_cache": True,
    }


def export_model(model, model_config: ModelConfig, tokenizer_path, out, *, dtype: str = "fp32",
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False) -> Path:
    """Write `model` (an unsharded Llama) and its tokenizer as a Hugging Face folder at `out`, atomically."""
    from pytrain.data.tokenizer import BOS_CANDIDATES, EOS_CANDIDATES, load_tokenizer, special_token_id
    from pytrain.fsutil import atomic_directory

    if dtype not in _DTYPES:
        raise PytrainError(f"--dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    if max_shard_bytes <= 0:
        raise PytrainError(f"--max-shard-size must be positive, got {max_shard_bytes} bytes")
    tokenizer = load_tokenizer(tokenizer_path)
    eos_id = special_token_id(tokenizer, None, EOS_CANDIDATES, "EOS", tokenizer_path)
    bos_id = special_token_id(tokenizer, None, BOS_CANDIDATES, "BOS", tokenizer_path)
    pad_id = tokenizer.token_to_id("<pad>")
    tensors = _hf_tensors(model, dtype)
    with atomic_directory(out, overwrite=overwrite, command="export", inputs=[tokenizer_path]) as tmp:
        _write_safetensors(tensors, tmp, max_shard_bytes)
        config = hf_config(model_config, bos_id=bos_id, eos_id=eos_id, dtype=dtype)
        _write_json(tmp / CONFIG, config)
        _write_json(tmp / "generation_config.json",
                    {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id})
        shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
        token = tokenizer.id_to_token
        _write_json(tmp / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": None if bos_id is None else token(bos_id),
            "eos_token": None if eos_id is None else token(eos_id),
            "pad_token": None if pad_id is None else token(pad_id),
            "model_max_length": model_config.max_position_embeddings,
            "clean_up_tokenization_spaces": False,
        })
    return Path(out)


def export_run(run_dir, out, *, step: int | None = None, **options) -> Path:
    """`pytrain export`: a run's checkpoint (latest, or `step`) as a Hugging Face folder."""
    from pytrain.train.run_dir import RunDir

    run = RunDir(run_dir)
    model, model_config = run.load_model(step)
    return export_model(model, model_config, run.tokenizer_file, out, **options)


def _hf_tensors(model, dtype: str) -> dict:
    """HF name -> contiguous tensor in `dtype`; named_parameters lists a tied LM head once (as the embedding)."""
    import torch

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    return {hf_name(name): param.detach().to("cpu", torch_dtype).contiguous()
            for name, param in model.named_parameters()}


def _write_safetensors(tensors: dict, folder: Path, max_shard_bytes: int) -> None:
    """One file, or consecutive shards of at most `max_shard_bytes` (a larger tensor gets a shard of its own)."""
    from safetensors.torch import save_file

    shards: list[dict] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], folder / WEIGHTS, metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    _write_json(folder / WEIGHTS_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


# ----------------------------------------------------------------------------- import
def hf_model_config(folder: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of a Hugging Face Llama folder, or a one-line error naming what does not fit."""
    folder = Path(folder)
    path = folder / CONFIG
    if not folder.is_dir():
        raise PytrainError(f"model.init_from: {folder}: no such folder (expected a Hugging Face Llama folder "
                           "with config.json and model.safetensors, e.g. from `pytrain export`)")
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise PytrainError(f"model.init_from: {path}: missing; not a Hugging Face model folder") from None
    except json.JSONDecodeError as error:
        raise PytrainError(f"model.init_from: {path}: invalid JSON ({error})") from None
    if config.get("model_type") != "llama":
        raise PytrainError(f"{path}: model_type is {config.get('model_type')!r}; pytrain trains Llama models "
                           "(model_type llama, LlamaForCausalLM)")
    for key, allowed in _REQUIRED.items():
        if config.get(key, allowed[0]) not in allowed:
            raise PytrainError(f"{path}: {key}={config[key]!r} is not supported by pytrain's Llama "
                               f"(needs {allowed[0]!r})")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise PytrainError(f"{path}: RoPE scaling {rope_type!r} is not supported by pytrain (plain RoPE only)")
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    try:
        heads = config["num_attention_heads"]
        model_config = ModelConfig(
            vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"], num_hidden_layers=config["num_hidden_layers"],
            num_attention_heads=heads, num_key_value_heads=config.get("num_key_value_heads") or heads,
            max_position_embeddings=config["max_position_embeddings"], rms_norm_eps=config["rms_norm_eps"],
            rope_theta=float(theta), attention_bias=bool(config.get("attention_bias", False)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            initializer_range=config.get("initializer_range", 0.02),
        )
    except KeyError as error:
        raise PytrainError(f"{path}: missing key {error.args[0]!r}") from None
    except PytrainError as error:
        raise PytrainError(f"{path}: {error}") from None
    if config.get("head_dim", model_config.head_dim) != model_config.head_dim:
        raise PytrainError(f"{path}: head_dim={config['head_dim']} differs from hidden_size / num_attention_heads "
                           f"= {model_config.head_dim}; pytrain's Llama needs them equal")
    return model_config


class HFWeights:
    """The tensors of a Hugging Face Llama folder, read one at a time by pytrain parameter name.

    Files are memory-mapped (safetensors), so loading a model holds one full tensor at a time however
    large the checkpoint. Every expected tensor is checked for presence up front and for shape on read.
    """

    def __init__(self, folder: str | os.PathLike, model_config: ModelConfig):
        from safetensors import safe_open

        self.folder = Path(folder)
        index = self.folder / WEIGHTS_INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (self.folder / WEIGHTS).is_file():
            with safe_open(self.folder / WEIGHTS, "pt") as handle:
                weight_map = dict.fromkeys(handle.keys(), WEIGHTS)
        else:
            raise PytrainError(f"model.init_from: {self.folder}: no {WEIGHTS} or {WEIGHTS_INDEX} (only safetensors "
                               "weights are read)")
        self._files = {name: self.folder / file for name, file in weight_map.items()}
        self._handles: dict[Path, object] = {}
        self._safe_open = safe_open
        self.shapes = _parameter_shapes(model_config)
        missing = [hf_name(n) for n in self.shapes if hf_name(n) not in self._files]
        if missing:
            raise PytrainError(f"model.init_from: {self.folder}: missing tensor {missing[0]}"
                               f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
        known = {hf_name(n) for n in self.shapes} | {"lm_head.weight"}
        unknown = sorted(n for n in self._files if n not in known and not n.endswith("rotary_emb.inv_freq"))
        if unknown:
            raise PytrainError(f"model.init_from: {self.folder}: unexpected tensor {unknown[0]}: not part of the "
                               "Llama that config.json describes")

    def __call__(self, name: str):
        """The tensor for pytrain parameter `name` (CPU, as stored)."""
        key = hf_name(name)
        file = self._files[key]
        if file not in self._handles:
            self._handles[file] = self._safe_open(file, "pt")
        tensor = self._handles[file].get_tensor(key)
        if tuple(tensor.shape) != self.shapes[name]:
            raise PytrainError(f"model.init_from: {file}: {key} has shape {list(tensor.shape)}, config.json implies "
                               f"{list(self.shapes[name])}")
        return tensor


def _parameter_shapes(model_config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """pytrain parameter name -> shape (a tied LM head is not listed: it is the embedding)."""
    import torch

    from pytrain.model import Llama

    with torch.device("meta"):
        return {name: tuple(param.shape) for name, param in Llama(model_config).named_parameters()}
