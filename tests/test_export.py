"""Hugging Face interop: the exported folder loads in transformers with pytrain's logits and tokens; import
maps the weights exactly (export -> import -> export is byte-identical); `model.init_from` trains from a folder;
a missing or incompatible folder is a one-line error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from _train_fixtures import base_config, base_run, losses, packed_data, train  # noqa: F401
from pytrain.cli import main
from pytrain.config import ModelSection
from pytrain.train.resolve import resolve_model
from pytrain.errors import PytrainError
from pytrain.export import export_model, parse_size
from pytrain.model.generation import generate_tokens
from pytrain.model import Llama, preset
from pytrain.model.hf import HFWeights, hf_model_config
from pytrain.train import load_model_for_inference

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def exported(base_run, tmp_path_factory):
    """base_run exported with 100 kB shards (so the sharded layout is what transformers reads)."""
    out = tmp_path_factory.mktemp("export") / "hf"
    assert main(["export", "--run", str(base_run), "--out", str(out), "--max-shard-size", "100KB"]) == 0
    return out


def hf_logits(folder, ids):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model, model(ids).logits


def test_export_loads_in_transformers_with_the_same_logits_and_tokens(base_run, exported):
    files = sorted(p.name for p in exported.iterdir())
    shards = [name for name in files if name.startswith("model-0000")]
    assert "model.safetensors.index.json" in files and len(shards) > 1 and "model.safetensors" not in files
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    model, config, tokenizer_path = load_model_for_inference(base_run)
    ids = torch.randint(0, config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    hf, logits = hf_logits(exported, ids)
    assert type(hf).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        torch.testing.assert_close(logits, model(ids), atol=1e-5, rtol=1e-5)

    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    text = "def parse(self, data):\n    return data"
    prompt = hf_tokenizer(text).input_ids
    assert prompt == model_tokenizer_ids(tokenizer_path, text) and hf_tokenizer.eos_token == "<|endoftext|>"
    ours = list(generate_tokens(model, prompt, max_new_tokens=16, max_len=config.max_position_embeddings))
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False)[0, len(prompt):].tolist()
    assert len(ours) >= 1 and theirs[:len(ours)] == ours  # ours stops before EOS, theirs after it


def model_tokenizer_ids(path, text):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path)).encode(text).ids


def test_untied_head_and_biases_export(tmp_path, tokenizer_path):
    config = preset("tiny", vocab_size=600, attention_bias=True, tie_word_embeddings=False, num_key_value_heads=1)
    model = Llama(config)
    model.init_weights(seed=3)
    export_model(model, config, tokenizer_path, tmp_path / "hf", dtype="fp32")
    assert hf_model_config(tmp_path / "hf") == config
    ids = torch.randint(0, 600, (1, 30), generator=torch.Generator().manual_seed(1))
    _, logits = hf_logits(tmp_path / "hf", ids)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(ids), atol=1e-5, rtol=1e-5)


def test_export_import_export_is_byte_identical(exported, tmp_path):
    config = hf_model_config(exported)
    model, weights = Llama(config), HFWeights(exported, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(weights(name))
    export_model(model, config, exported / "tokenizer.json", tmp_path / "again", max_shard_bytes=100_000)
    names = sorted(p.name for p in exported.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "again").iterdir())
    for name in names:
        assert (exported / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


def test_training_starts_from_an_hf_folder(base_config, base_run, exported, packed_data, tmp_path):
    from pytrain.sampling.dataset import PackedDataset

    run_dir = tmp_path / "continued"
    train(base_config, f"train.run_dir={run_dir}", f"model.init_from={exported}", "train.steps=1",
          "schedule.warmup_steps=0", "train.eval_every=0", "logging.sample_every=0")
    # the first step's loss is measured before its update: the imported model's loss on the first batch
    model, _, _ = load_model_for_inference(base_run)
    batch = PackedDataset(packed_data, 64, split="train", seed=0).next_batch(8)
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["labels"]).item()
    assert losses(run_dir)[1] == pytest.approx(expected, rel=1e-5)
    assert f"weights from {exported} (model.init_from)" in (run_dir / "train.log").read_text()
    assert f"init_from: {exported}" in (run_dir / "config.yaml").read_text()


def test_incompatible_folders_are_one_line_errors(exported, tmp_path):
    with pytest.raises(PytrainError, match="no such folder"):
        hf_model_config(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PytrainError, match="config.json: missing"):
        hf_model_config(tmp_path / "empty")

    def edited(name, **changes):
        folder = tmp_path / name
        shutil.copytree(exported, folder)
        config = json.loads((folder / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps(config))
        return folder

    with pytest.raises(PytrainError, match="model_type 'gpt2' is not supported"):
        hf_model_config(edited("gpt2", model_type="gpt2"))
    with pytest.raises(PytrainError, match="rope_parameters.rope_type 'yarn' is not supported"):
        hf_model_config(edited("yarn", rope_parameters={"rope_type": "yarn", "rope_theta": 5e5, "factor": 8.0}))
    with pytest.raises(PytrainError, match="hidden_act='gelu' is not supported"):
        hf_model_config(edited("gelu", hidden_act="gelu"))
    wider = edited("wider", hidden_size=128, head_dim=32)
    with pytest.raises(PytrainError, match=r"embed_tokens.weight has shape \[600, 64\], config.json implies \[600, 1"):
        weights = HFWeights(wider, hf_model_config(wider))
        for name in weights.shapes:
            weights(name)
    untied = edited("untied", tie_word_embeddings=False)
    with pytest.raises(PytrainError, match="missing tensor lm_head.weight"):
        HFWeights(untied, hf_model_config(untied))
    with pytest.raises(PytrainError, match="model.hidden_size=128 conflicts with model.init_from"):
        resolve_model(ModelSection(init_from=str(exported), hidden_size=128), data_vocab_size=600)
    assert resolve_model(ModelSection(init_from=str(exported), rope_theta=5e5), 600).rope_theta == 5e5


def test_export_refuses_to_overwrite(base_run, exported, capsys):
    assert main(["export", "--run", str(base_run), "--out", str(exported)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", "--run", str(base_run), "--out", str(exported.parent / "x"), "--max-shard-size", "?"]) == 2
    assert "expected a size like 5GB or 200MB" in capsys.readouterr().err
    assert [parse_size(s) for s in ("5GB", "200mb", "1.5 KB", "1000")] == [5 * 10**9, 200 * 10**6, 1500, 1000]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_files_follow_the_umask(base_run, tmp_path, umask):
    """Every exported file (model.safetensors too, which safetensors writes 0600) gets the mode a plain
    open() makes under the same umask, so colleagues on a shared machine can read an export."""
    import os

    previous = os.umask(umask)
    try:
        with open(tmp_path / "plain", "w"):
            pass
        assert main(["export", "--run", str(base_run), "--out", str(tmp_path / "hf")]) == 0
    finally:
        os.umask(previous)
    plain = (tmp_path / "plain").stat().st_mode & 0o777
    assert plain == 0o666 & ~umask
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "hf").iterdir()}
    assert "model.safetensors" in modes and modes == dict.fromkeys(modes, plain)
    assert (tmp_path / "hf").stat().st_mode & 0o777 == 0o777 & ~umask


def test_a_run_recorded_before_rope_scaling_still_loads(base_run, tmp_path):
    """config.yaml of a run from before the rope_* model fields: they take their defaults (plain RoPE)."""
    old = tmp_path / "old"
    shutil.copytree(base_run, old)
    lines = (old / "config.yaml").read_text().splitlines(keepends=True)
    (old / "config.yaml").write_text("".join(line for line in lines if not line.strip().startswith("rope_")
                                             or line.strip().startswith("rope_theta")))
    assert "rope_type" not in (old / "config.yaml").read_text()
    model, config, _ = load_model_for_inference(old)
    assert config.rope_type == "default" and config == load_model_for_inference(base_run)[1]


@pytest.mark.parametrize("dtype, torch_dtype, name", [("bf16", torch.bfloat16, "bfloat16"),
                                                      ("fp16", torch.float16, "float16")])
def test_export_dtype(base_run, tmp_path, dtype, torch_dtype, name):
    """--dtype bf16/fp16: every tensor stored in that dtype, holding the trained weights rounded to it, and
    transformers (computing in fp32) gives the logits of our model with the same rounded weights."""
    from safetensors.torch import load_file

    out = tmp_path / dtype
    assert main(["export", "--run", str(base_run), "--out", str(out), "--dtype", dtype]) == 0
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == name
    stored = load_file(out / "model.safetensors")
    model, config, _ = load_model_for_inference(base_run)
    params = dict(model.named_parameters())
    assert len(stored) == len(params)  # a tied LM head is one parameter and one tensor
    for key, tensor in stored.items():
        assert tensor.dtype == torch_dtype, key
        assert torch.equal(tensor, params[key.removeprefix("model.")].detach().to(torch_dtype)), key
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.to(torch_dtype))
    ids = torch.randint(0, config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    _, logits = hf_logits(out, ids)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(ids), atol=1e-5, rtol=1e-5)
