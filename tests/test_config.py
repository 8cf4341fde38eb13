"""The run configuration: defaults, strict keys with close matches, types, overrides, model resolution."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pytrain.config import load_config
from pytrain.train.resolve import resolve_model, resolve_run
from pytrain.errors import PytrainError

MINIMAL = """\
model:
  preset: tiny
data:
  path: data/
train: {steps: 100, batch_size: 8}
"""


@pytest.fixture
def minimal(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(MINIMAL)
    return path


def test_minimal_config_gets_defaults(minimal):
    config = load_config(minimal)
    assert config.model.preset == "tiny" and config.data.path == "data/"
    assert config.train.steps == 100 and config.train.micro_batch_size is None
    assert config.optim.lr == 3e-4 and config.schedule.name == "cosine"
    assert config.train.run_dir == "runs/run"  # from the config file's name


def test_torch_is_not_needed_to_read_a_config(minimal):
    code = ("import sys; from pytrain.config import load_config; "
            f"load_config({str(minimal)!r}); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_json_is_accepted(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"data": {"path": "d"}, "optim": {"lr": 1e-3, "betas": [0.9, 0.99]}}))
    config = load_config(path)
    assert config.optim.lr == 1e-3 and config.optim.betas == [0.9, 0.99]


def test_overrides_are_typed(minimal):
    config = load_config(minimal, ["optim.lr=6e-4", "train.compile=true", "train.activation_checkpointing=2",
                                   "logging.sample_prompts=[Once upon, The]", "model.vocab_size=null"])
    assert config.optim.lr == 6e-4  # YAML reads "6e-4" as a string; the field's type makes it a float
    assert config.train.compile is True and config.train.activation_checkpointing == 2
    assert config.logging.sample_prompts == ["Once upon", "The"]


@pytest.mark.parametrize("text, message", [
    ("train: {stpes: 10}\n", 'unknown key "train.stpes" (did you mean "train.steps"?)'),
    ("trian: {steps: 10}\n", 'unknown section "trian" (did you mean "train"?)'),
    ("optim: {learning_rate: 1}\n", 'unknown key "optim.learning_rate"'),
    ("train: {steps: ten}\n", "train.steps must be an integer, got 'ten'"),
    ("train: {compile: 1}\n", "train.compile must be true/false"),
    ("schedule: {name: cosin}\n", 'schedule.name: unknown value "cosin" (did you mean "cosine"?)'),
    ("model: {preset: 350M}\n", 'unknown value "350M" (did you mean "350m"?)'),
    ("train: {steps: 0}\n", "train.steps must be positive"),
    ("train: {activation_checkpointing: some}\n", 'train.activation_checkpointing must be "none", "full" or k'),
    ("train: {dtype: fp16, reduce_dtype: bf16}\n", "train.dtype=fp16 reduces gradients in fp32"),
    ("train: {dtype: fp16, loss_scale_init: 0}\n", "train.loss_scale_init must be positive"),
    ("train: [1, 2]\n", 'section "train" must be a mapping'),
    ("train: {steps: [\n", "cannot parse config"),
])
def test_errors_are_one_line_and_name_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {path: d}\n" + text)
    with pytest.raises(PytrainError) as error:
        load_config(path)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_override_errors(minimal):
    with pytest.raises(PytrainError, match='override "optim.lrr=1": unknown key "optim.lrr" \\(did you mean "optim.lr"'):
        load_config(minimal, ["optim.lrr=1"])
    with pytest.raises(PytrainError, match="expected section.key=value"):
        load_config(minimal, ["steps=3"])


def test_missing_file_and_data_path(tmp_path):
    with pytest.raises(PytrainError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "run.yaml"
    path.write_text("train: {steps: 3}\n")
    with pytest.raises(PytrainError, match="data.path is required"):
        load_config(path)


def test_model_resolution(minimal):
    config = load_config(minimal, ["model.hidden_size=128"])
    model = resolve_model(config.model, data_vocab_size=600)
    assert model.vocab_size == 600 and model.hidden_size == 128 and model.num_hidden_layers == 2
    resolved = resolve_run(config, data_vocab_size=600, world_size=1, device_type="cpu").config
    assert resolved.model.vocab_size == 600 and resolved.model.rope_theta == 10000.0
    assert config.model.vocab_size is None  # the user's config is never mutated
    with pytest.raises(PytrainError, match="smaller than the dataset's tokenizer vocabulary"):
        resolve_model(load_config(minimal, ["model.vocab_size=100"]).model, data_vocab_size=600)


def test_resolved_config_round_trips(minimal, tmp_path):
    config = load_config(minimal, ["optim.betas=[0.8, 0.9]"])
    saved = tmp_path / "config.yaml"
    saved.write_text(config.to_yaml())
    assert load_config(saved) == config


def test_cli_reports_config_errors_in_one_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(MINIMAL)
    proc = subprocess.run([sys.executable, "-m", "pytrain", "train", "--config", str(path), "train.setps=5"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ('pytrain train: error: override "train.setps=5": unknown key "train.setps" '
                                   '(did you mean "train.steps"?)')


@pytest.mark.parametrize("text,message", [
    ("optim: {learning_rate: 0.001}\n", 'unknown key "optim.learning_rate" (did you mean "optim.lr"?)'),
    ("train: {max_steps: 10}\n", 'unknown key "train.max_steps" (did you mean "train.steps"?)'),
    ("train: {per_device_train_batch_size: 4}\n", '(did you mean "train.micro_batch_size"?)'),
    ("learning_rate: 0.001\n", 'unknown section "learning_rate" (did you mean "optim.lr"?)'),
    ("optimizer: {lr: 0.001}\n", 'unknown section "optimizer" (did you mean "optim"?)'),
    ("training: {steps: 10}\n", 'unknown section "training" (did you mean "train"?)'),
    ("train: {lr: 0.001}\n", 'unknown key "train.lr" (did you mean "optim.lr"?)'),  # a key of another section
    ("checkpoint: {interval: 100}\n", 'unknown key "checkpoint.interval" (did you mean "checkpoint.every"?)'),
    ("train: {stpes: 10}\n", 'unknown key "train.stpes" (did you mean "train.steps"?)'),  # spelling still works
])
def test_other_trainers_names_point_at_pytrains(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(PytrainError) as caught:
        load_config(path)
    assert message in str(caught.value)


def test_every_foreign_name_points_at_a_real_key_and_hf_names_are_training_arguments(minimal):
    import dataclasses

    from pytrain.config_names import FOREIGN_KEYS, FOREIGN_SECTIONS, HF_TRAINING_ARGUMENTS

    transformers = pytest.importorskip("transformers")
    assert set(HF_TRAINING_ARGUMENTS) <= {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    defaults = load_config(minimal).to_dict()
    for name, target in FOREIGN_KEYS.items():
        section, key = target.split(".")
        assert key in defaults[section], target
        if name not in defaults["data"]:
            with pytest.raises(PytrainError, match=f'unknown key "data.{name}" \\(did you mean "{target}"'):
                load_config(minimal, [f"data.{name}=1"])
    assert set(FOREIGN_SECTIONS.values()) <= set(defaults)
