"""`pytrain export`: a run's checkpoint as a Hugging Face folder of its family (LlamaForCausalLM,
Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM, GPTNeoXForCausalLM).

    HF_DIR/config.json                  the family's config (pytrain.model.families.<family>.hf)
    HF_DIR/model.safetensors            the weights, or model-0000i-of-0000n.safetensors shards plus
                                        model.safetensors.index.json when larger than the shard size
    HF_DIR/tokenizer.json               the run's tokenizer, with tokenizer_config.json
    HF_DIR/generation_config.json       BOS/EOS/pad ids

The format itself (config mapping, RoPE scaling, weight names, reading folders back) is
pytrain.model.hf; this module writes the folder: export -> import -> export gives identical files.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from pytrain.errors import PytrainError
from pytrain.model.config import ModelConfig
from pytrain.model.hf import CONFIG, DTYPE_NAMES, WEIGHTS, WEIGHTS_INDEX, hf_config, hf_tensors

DEFAULT_SHARD_BYTES = 5 * 10**9  # save_pretrained's classic default


def parse_size(text: str) -> int:
    """'5GB', '200MB', '512KB', '1000' (bytes) -> bytes (decimal units, as Hugging Face counts them)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise PytrainError(f"--max-shard-size: expected a size like 5GB or 200MB, got {text!r}")
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}[(match.group(2) or "B").upper()]
    return int(float(match.group(1)) * scale)




def export_model(model, model_config: ModelConfig, tokenizer_path, out, *, dtype: str = "fp32",
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False) -> Path:
    """Write `model` (unsharded, any family) and its tokenizer as a Hugging Face folder at `out`, atomically."""
    from pytrain.tokenizer.files import BOS_CANDIDATES, EOS_CANDIDATES, load_tokenizer, special_token_id
    from pytrain.fsutil import atomic_directory

    if dtype not in DTYPE_NAMES:
        raise PytrainError(f"--dtype must be one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
    if max_shard_bytes <= 0:
        raise PytrainError(f"--max-shard-size must be positive, got {max_shard_bytes} bytes")
    tokenizer = load_tokenizer(tokenizer_path)
    eos_id = special_token_id(tokenizer, None, EOS_CANDIDATES, "EOS", tokenizer_path)
    bos_id = special_token_id(tokenizer, None, BOS_CANDIDATES, "BOS", tokenizer_path)
    pad_id = tokenizer.token_to_id("<pad>")
    tensors = hf_tensors(model, dtype)
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
