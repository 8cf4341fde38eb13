"""Every preset of every family against transformers: the config.json pytrain writes for the preset builds, in
transformers, the same architecture pytrain builds (the same tensor names and shapes, the same parameter
count, which is also the count pytrain logs), with the preset's RoPE base, norm epsilon and context; large
presets are built on the meta device (nothing allocated), tiny ones are exported with random weights and give
transformers' logits. The Llama 3.x shapes have the parameter counts Meta published for those models."""

from __future__ import annotations

import json

import pytest
import torch

from pytrain.export import export_model
from pytrain.model import build_model, preset
from pytrain.model.config import PRESETS
from pytrain.model.families import family
from pytrain.model.hf import hf_config, layouts

transformers = pytest.importorskip("transformers")

# Published totals (the model cards' safetensors parameter counts) of the models whose shapes the presets take.
PUBLISHED = {"1b": 1_235_814_400, "3b": 3_212_749_824, "8b": 8_030_261_248}  # Llama 3.2 1B, 3.2 3B, 3.1 8B
VOCAB = 600  # the test tokenizer's


def _transformers_model(config, folder):
    """transformers' model of pytrain's config.json for `config`, on the meta device, and its config."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config(config, bos_id=None, eos_id=0)))
    hf_config_object = transformers.AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(hf_config_object), hf_config_object


def _loaded_name(checkpoint_name: str, model) -> str:
    """A checkpoint tensor name as transformers renames it on loading (transformers 5 loads GPT-NeoX's published
    `embed_out` into `lm_head`; older releases rename nothing)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
    except ImportError:
        return checkpoint_name
    for transform in get_model_conversion_mapping(model):
        if type(transform).__name__ == "WeightRenaming":
            checkpoint_name = transform.rename_source_key(checkpoint_name)[0]
    return checkpoint_name


def _shapes_as_transformers_holds_them(ours, config, theirs) -> dict:
    """Our parameters' shapes under the names transformers' model holds them by: of the layouts a parameter
    may be stored in (one tensor; one per expert; half of transformers 5's fused gate_up_proj), the one whose
    tensors that model has, with the shapes those tensors must have."""
    adapter = family(config.family).hf_adapter()
    their_names = {n for n, _ in theirs.named_parameters()}
    shapes = {}
    for name, param in ours.named_parameters():
        candidates = layouts(adapter, name, tuple(param.shape))
        for layout in candidates:
            loaded = [_loaded_name(stored, theirs) for stored in layout.names]
            if all(n in their_names for n in loaded):
                break
        else:  # none matches: show the export layout's names, so the assertion names the difference
            layout = candidates[0]
            loaded = [_loaded_name(stored, theirs) for stored in layout.names]
        shapes.update(zip(loaded, layout.stored_shapes(tuple(param.shape))))
    return shapes


@pytest.mark.parametrize("name", list(PRESETS))
def test_the_preset_is_the_architecture_transformers_builds_from_its_config(tmp_path, name):
    config = preset(name)
    theirs, hf = _transformers_model(config, tmp_path / "hf")
    with torch.device("meta"):
        ours = build_model(config)
    assert _shapes_as_transformers_holds_them(ours, config, theirs) == {n: tuple(p.shape) for n, p in theirs.named_parameters()}
    count = sum(p.numel() for p in theirs.parameters())
    assert config.num_params() == count == sum(p.numel() for p in ours.parameters())
    if name in PUBLISHED:
        assert count == PUBLISHED[name]
    rope = getattr(hf, "rope_parameters", None) or {"rope_theta": hf.rope_theta}
    eps = hf.layer_norm_eps if config.family == "gpt_neox" else hf.rms_norm_eps
    assert (rope["rope_theta"], eps, hf.max_position_embeddings, hf.tie_word_embeddings) == (
        config.rope_theta, config.layer_norm_eps if config.family == "gpt_neox" else config.rms_norm_eps,
        config.max_position_embeddings, config.tie_word_embeddings)
    # Qwen2MoeConfig holds "no window" as 0, the others as None
    assert (getattr(hf, "sliding_window", None) or None) == config.sliding_window


@pytest.mark.parametrize("name", [n for n in PRESETS if n.startswith("tiny")])
def test_a_tiny_preset_exported_gives_transformers_logits(tmp_path, tokenizer_path, name):
    config = preset(name, vocab_size=VOCAB)
    model = build_model(config)
    torch.manual_seed(0)
    with torch.no_grad():  # every weight random, norms and biases included, so a misplaced one shows
        for param_name, param in model.named_parameters():
            if "norm" in param_name and param_name.endswith("weight"):
                param.copy_(1 + 0.2 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.1)
    model.eval()
    export_model(model, config, tokenizer_path, tmp_path / "out")
    theirs, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32,
                                                                     output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    theirs.eval()
    ids = torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), theirs(ids).logits, atol=1e-4, rtol=1e-4)
