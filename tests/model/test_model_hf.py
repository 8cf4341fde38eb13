"""pytrain.model.hf: folders written by transformers' own save_pretrained load with `load_hf` and give
transformers' logits, RoPE scaling (linear, llama3) included, far past the original context; the scaling
survives export, the run configuration and generation; malformed folders are one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from pytrain.config import ModelSection, load_config
from pytrain.train.resolve import resolve_model, resolve_run
from pytrain.errors import PytrainError
from pytrain.export import export_model
from pytrain.model.generation import generate_tokens
from pytrain.model import load_hf
from pytrain.model.hf import hf_model_config

transformers = pytest.importorskip("transformers")

VOCAB = 600
ROPE = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    # head_dim 16, theta 10000: wavelengths 6.3 ... 19869, so all three bands (kept, smoothed, divided) occur
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32},
}


def save_transformers_model(folder, rope, tie=False, kv_heads=2):
    """A random tiny LlamaForCausalLM built by transformers itself, written with save_pretrained."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, max_position_embeddings=256, rope_theta=10000.0,
        rope_scaling=rope and dict(rope), tie_word_embeddings=tie, rms_norm_eps=1e-6)  # (it edits the dict)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    return model


def hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("rope_type,tie,kv_heads", [("default", True, 4), ("linear", False, 2), ("llama3", False, 1)])
def test_load_hf_gives_transformers_logits(tmp_path, rope_type, tie, kv_heads):
    reference = save_transformers_model(tmp_path / "hf", ROPE[rope_type], tie, kv_heads)
    model, config = load_hf(tmp_path / "hf")
    assert config.rope_type == rope_type and config.rope_scaling == ROPE[rope_type]
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 300), generator=generator)  # past 8 x 32 = the scaled band, past 256
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_logits(reference, ids), atol=1e-4, rtol=1e-4)


def test_export_writes_the_scaling_back(tmp_path, tokenizer_path):
    save_transformers_model(tmp_path / "hf", ROPE["llama3"])
    model, config = load_hf(tmp_path / "hf")
    export_model(model, config, tokenizer_path, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["rope_scaling"] == ROPE["llama3"]
    assert written["rope_parameters"] == {**ROPE["llama3"], "rope_theta": 10000.0}
    assert hf_model_config(tmp_path / "out") == config
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    ids = torch.randint(0, VOCAB, (1, 300), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(reloaded, ids), model(ids), atol=1e-4, rtol=1e-4)


def test_greedy_generation_matches_transformers_with_scaling(tmp_path):
    reference = save_transformers_model(tmp_path / "hf", ROPE["llama3"])
    model, _ = load_hf(tmp_path / "hf")
    prompt = torch.randint(0, VOCAB, (40,), generator=torch.Generator().manual_seed(3)).tolist()
    ours = list(generate_tokens(model, prompt, max_new_tokens=24, max_len=128))
    reference.generation_config.eos_token_id = None  # neither side stops early: 24 tokens each
    theirs = reference.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, pad_token_id=0)
    assert len(ours) == 24 and ours == theirs[0, len(prompt):].tolist()


def test_run_config_carries_the_scaling(tmp_path):
    """model.init_from with a llama3 folder: the resolved model (what config.yaml records and generate/export
    rebuild from) keeps the scaling, and a run config can set or change it."""
    from pytrain.config import DataSection, RunConfig

    save_transformers_model(tmp_path / "hf", ROPE["llama3"])
    resolved = resolve_model(ModelSection(init_from=str(tmp_path / "hf")), data_vocab_size=VOCAB)
    assert resolved.rope_scaling == ROPE["llama3"]
    user_config = RunConfig(data=DataSection(path="data"))
    user_config.model.init_from = str(tmp_path / "hf")
    run_config = resolve_run(user_config, VOCAB, world_size=1, device_type="cpu").config
    (tmp_path / "run.yaml").write_text(run_config.to_yaml())
    section = load_config(tmp_path / "run.yaml").model
    assert resolve_model(section, VOCAB) == resolved
    changed = load_config(tmp_path / "run.yaml", ["model.rope_factor=16"]).model
    assert resolve_model(changed, VOCAB).rope_scaling["factor"] == 16.0
    linear = load_config(tmp_path / "run.yaml", ["model.rope_type=linear"]).model
    assert resolve_model(linear, VOCAB).rope_scaling == {"rope_type": "linear", "factor": 8.0}


@pytest.mark.parametrize("change,message", [
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}},
     "config.json: rope_parameters.rope_type 'dynamic' is not supported by pytrain "
     "(supported: default, linear, llama3)"),
    ({"rope_parameters": None, "rope_scaling": {"type": "yarn", "factor": 2.0}},
     "config.json: rope_scaling.rope_type 'yarn' is not supported"),
    ({"rope_parameters": "llama3"}, "config.json: rope_parameters must be an object"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}},
     "config.json: rope_parameters.original_max_position_embeddings is missing (rope_type llama3 needs it)"),
    ({"rope_parameters": {"rope_type": "linear", "factor": "x"}},
     "config.json: rope_parameters.factor must be a number"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
                          "original_max_position_embeddings": 32}},
     "config.json: model.rope_low_freq_factor"),
    ({"hidden_size": "64"}, "config.json: hidden_size must be an integer, got '64'"),
    ({"num_hidden_layers": None}, "config.json: missing key 'num_hidden_layers'"),
    ({"rms_norm_eps": -1.0}, "config.json: model.rms_norm_eps must be positive"),
])
def test_malformed_config_is_a_one_line_error_naming_file_and_key(tmp_path, change, message):
    save_transformers_model(tmp_path / "hf", ROPE["llama3"])
    path = tmp_path / "hf" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(PytrainError) as error:
        load_hf(tmp_path / "hf")
    assert message in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)


def test_malformed_files_are_one_line_errors(tmp_path):
    save_transformers_model(tmp_path / "hf", None)
    (tmp_path / "hf" / "config.json").write_text("[1, 2]")
    with pytest.raises(PytrainError, match="config.json: expected a JSON object, got list"):
        load_hf(tmp_path / "hf")
    save_transformers_model(tmp_path / "sharded", None)
    shutil.move(tmp_path / "sharded" / "model.safetensors", tmp_path / "sharded" / "part.safetensors")
    index = tmp_path / "sharded" / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"model.norm.weight": "../elsewhere.safetensors"}}))
    with pytest.raises(PytrainError, match="weight_map must map tensor names to file names in the folder"):
        load_hf(tmp_path / "sharded")
    index.write_text("{}")
    with pytest.raises(PytrainError, match="not a safetensors index"):
        load_hf(tmp_path / "sharded")


def test_a_config_that_disagrees_with_the_weights_is_refused_before_allocating(tmp_path):
    """A crafted config.json (vocab_size 10^12: terabytes of embedding) meets the tensors' headers first."""
    save_transformers_model(tmp_path / "hf", None)
    path = tmp_path / "hf" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "vocab_size": 10**12}))
    with pytest.raises(PytrainError, match=r"model.safetensors: model.embed_tokens.weight has shape \[\d+, \d+\], "
                                           r"config.json implies \[1000000000000, "):
        load_hf(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"not safetensors")
    path.write_text(json.dumps({**json.loads(path.read_text()), "vocab_size": VOCAB}))
    with pytest.raises(PytrainError, match="model.safetensors: "):
        load_hf(tmp_path / "hf")
