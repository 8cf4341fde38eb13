"""Each family through the CLI on the CPU: `pytrain train` from its tiny preset and from a Hugging Face folder
that transformers wrote (model.init_from: the first loss is transformers' loss on that batch), then
`pytrain generate` and `pytrain export` (transformers loads the export with the trained model's logits).
Bad folders and unsupported options are one-line errors naming the key, exit 2, with nothing written."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from _family_references import save_reference
from _train_fixtures import base_config, losses, packed_data, train  # noqa: F401
from pytrain.cli import main
from pytrain.train import load_model_for_inference

transformers = pytest.importorskip("transformers")

SHORT = ("train.steps=2", "schedule.warmup_steps=0", "train.eval_every=0", "logging.sample_every=0",
         "checkpoint.every=2")


@pytest.mark.parametrize("family,variant", [("qwen2", "tied"), ("qwen3", "head_dim32"), ("mistral", "window"),
                                            ("gpt_neox", "parallel"), ("qwen3_moe", "norm_topk"),
                                            ("qwen2_moe", "shared"), ("mixtral", "top2"), ("olmoe", "bias")])
def test_family_trains_from_an_hf_folder_generates_and_exports(base_config, packed_data, tmp_path, capsys,
                                                             family, variant):
    """The first step's loss is transformers' loss on that batch (for a mixture of experts: its LM loss,
    and its load-balancing loss logged apart)."""
    from pytrain.sampling.dataset import PackedDataset

    reference = save_reference(tmp_path / "hf", family, variant)
    run_dir = tmp_path / "run"
    train(base_config, f"train.run_dir={run_dir}", f"model.init_from={tmp_path / 'hf'}", *SHORT)
    batch = PackedDataset(packed_data, 64, split="train", seed=0).next_batch(8)
    with torch.no_grad():
        output = reference(batch["input_ids"], output_router_logits=True) if "moe" in family or family == "mixtral" \
            else reference(batch["input_ids"])
    expected = F.cross_entropy(output.logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100).item()
    assert losses(run_dir)[1] == pytest.approx(expected, rel=1e-4)
    if getattr(output, "aux_loss", None) is not None:
        first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
        assert first["aux_loss"] == pytest.approx(output.aux_loss.item(), rel=1e-5)
        assert first["expert_load"] >= 1.0 and "dropped_tokens" not in first and "z_loss" not in first
    assert f"family: {family}" in (run_dir / "config.yaml").read_text()

    capsys.readouterr()
    assert main(["generate", "--run", str(run_dir), "--prompt", "def ", "--max-new-tokens", "6",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "out")]) == 0
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    model, _, _ = load_model_for_inference(run_dir)
    with torch.no_grad():
        torch.testing.assert_close(exported(batch["input_ids"]).logits, model(batch["input_ids"]), atol=1e-4,
                                   rtol=1e-4)


@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-qwen3", "tiny-mistral", "tiny-gpt_neox", "tiny-moe",
                                    "tiny-qwen2_moe", "tiny-mixtral", "tiny-olmoe"])
def test_family_preset_trains_from_scratch(base_config, tmp_path, preset):
    run_dir = tmp_path / "run"
    train(base_config, f"train.run_dir={run_dir}", f"model.preset={preset}", *SHORT, "train.steps=4")
    trained = losses(run_dir)
    assert len(trained) == 4 and all(loss == loss for loss in trained.values())
    assert trained[4] < trained[1]


def _edited(tmp_path, family, variant, **changes):
    folder = tmp_path / f"{family}-{'-'.join(changes)}"
    save_reference(folder, family, variant)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("family,variant,changes,message", [
    ("llama", "tied", {"model_type": "gpt2"}, "model_type 'gpt2' is not supported by pytrain"),
    ("llama", "tied", {"mlp_bias": True}, "mlp_bias=True is not supported by pytrain's llama"),
    ("llama", "tied", {"hidden_act": "gelu"}, "hidden_act='gelu' is not supported by pytrain's llama"),
    ("llama", "tied", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}},
     "rope_parameters.rope_type 'yarn' is not supported"),
    ("qwen2", "tied", {"use_sliding_window": True}, "use_sliding_window=True is not supported by pytrain's qwen2"),
    ("qwen3", "bias", {"attention_dropout": 0.1}, "attention_dropout=0.1 is not supported by pytrain's qwen3"),
    ("mistral", "window", {"attention_bias": True}, "attention_bias=True is not supported by pytrain's mistral"),
    ("gpt_neox", "parallel", {"hidden_act": "relu"}, "hidden_act='relu' is not supported by pytrain's gpt_neox"),
    ("gpt_neox", "parallel", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4,
                                                  "partial_rotary_factor": 0.25}},
     "rope scaling 'linear' is not supported by pytrain's gpt_neox"),
    ("gpt_neox", "parallel", {"tie_word_embeddings": "yes"}, "tie_word_embeddings must be true or false"),
    ("qwen3_moe", "norm_topk", {"mlp_only_layers": [1]}, "mlp_only_layers=[1] is not supported by pytrain's qwen3_moe"),
    ("qwen3_moe", "norm_topk", {"decoder_sparse_step": 2},
     "decoder_sparse_step=2 is not supported by pytrain's qwen3_moe"),
    ("qwen3_moe", "norm_topk", {"use_sliding_window": True},
     "use_sliding_window=True is not supported by pytrain's qwen3_moe"),
    ("qwen2_moe", "shared", {"qkv_bias": False}, "qkv_bias=False is not supported by pytrain's qwen2_moe"),
    ("qwen2_moe", "shared", {"shared_expert_intermediate_size": 0},
     "model.shared_expert_intermediate_size must be positive (got 0)"),
    ("mixtral", "top2", {"router_jitter_noise": 0.1}, "router_jitter_noise=0.1 is not supported by pytrain's mixtral"),
    ("olmoe", "bias", {"clip_qkv": 8.0}, "clip_qkv=8.0 is not supported by pytrain's olmoe"),
    ("olmoe", "bias", {"num_experts_per_tok": 9}, "model.num_experts_per_tok (9) exceeds model.num_experts (8)"),
])
def test_unsupported_folders_are_one_line_errors(base_config, tmp_path, capsys, family, variant, changes, message):
    folder = _edited(tmp_path, family, variant, **changes)
    run_dir = tmp_path / "run"
    capsys.readouterr()
    assert train(base_config, f"train.run_dir={run_dir}", f"model.init_from={folder}", *SHORT, check=False) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "config.json" in error and len(error.splitlines()) == 1, error
    assert not run_dir.exists()


def test_a_sliding_window_shorter_than_the_sequence_is_refused(base_config, tmp_path, capsys):
    run_dir = tmp_path / "run"
    capsys.readouterr()
    assert train(base_config, f"train.run_dir={run_dir}", "model.preset=tiny-mistral", "model.sliding_window=32",
                 *SHORT, check=False) == 2
    error = capsys.readouterr().err.strip()
    assert "data.seq_len (64) exceeds model.sliding_window (32)" in error and len(error.splitlines()) == 1
    assert not run_dir.exists()


def test_an_option_of_another_family_is_refused(base_config, tmp_path, capsys):
    capsys.readouterr()
    assert train(base_config, f"train.run_dir={tmp_path / 'run'}", "model.preset=tiny", "model.rotary_pct=0.5",
                 *SHORT, check=False) == 2
    assert "model.rotary_pct is not an option of family llama" in capsys.readouterr().err
    assert train(base_config, f"train.run_dir={tmp_path / 'run'}", "model.family=gpt-neox", *SHORT, check=False) == 2
    assert 'model.family "gpt-neox" is not supported (did you mean "gpt_neox"?)' in capsys.readouterr().err
