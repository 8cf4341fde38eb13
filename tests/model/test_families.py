"""Every model family against transformers' own implementation: random tiny models that transformers builds
and saves here (no downloads) load with `load_hf` and give its logits (fp32, within 1e-4) and its greedy
tokens; `pytrain export` writes a folder transformers' AutoModelForCausalLM loads with the same logits, and
export -> import -> export is byte-identical. Mixtures of experts also give transformers' load-balancing
loss, and load from transformers 5's fused expert layout as well as the Hub's per-expert one."""

from __future__ import annotations

import os

import pytest
import torch

from pytrain import ops
from pytrain.export import export_model
from pytrain.model import build_model, load_hf, preset
from pytrain.model.generation import generate_tokens
from pytrain.model.hf import hf_model_config
from pytrain.model.moe import moe_layers, router_losses

from _family_references import CASES, MOE_CASES, REFERENCES, VOCAB, save_reference

transformers = pytest.importorskip("transformers")


def ids(batch=2, seq=40, seed=1):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family,variant", CASES)
def test_load_hf_gives_transformers_logits_and_tokens(tmp_path, family, variant):
    reference = save_reference(tmp_path / "hf", family, variant)
    model, config = load_hf(tmp_path / "hf")
    assert config.family == family
    inputs = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), reference(inputs).logits, atol=1e-4, rtol=1e-4)
    prompt = inputs[0, :10].tolist()
    ours = list(generate_tokens(model, prompt, max_new_tokens=12, max_len=config.context_length))
    theirs = reference.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, min_new_tokens=12,
                                pad_token_id=0)[0, len(prompt):].tolist()
    assert ours == theirs  # no EOS id given: ours runs all 12 steps too


@pytest.mark.parametrize("family,variant", CASES)
def test_export_loads_in_transformers_and_round_trips_byte_identical(tmp_path, tokenizer_path, family, variant):
    save_reference(tmp_path / "hf", family, variant)
    model, config = load_hf(tmp_path / "hf")
    export_model(model, config, tokenizer_path, tmp_path / "out")
    assert hf_model_config(tmp_path / "out") == config
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert type(exported).__name__ == REFERENCES[(family, variant)][0]
    inputs = ids(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(exported(inputs).logits, model(inputs), atol=1e-4, rtol=1e-4)

    again, again_config = load_hf(tmp_path / "out")
    export_model(again, again_config, tokenizer_path, tmp_path / "again")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "again").iterdir())
    assert {"config.json", "model.safetensors"} <= set(names)
    for name in names:
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


@pytest.mark.parametrize("family,variant", MOE_CASES)
def test_moe_auxiliary_loss_is_transformers(tmp_path, family, variant):
    """The load-balancing loss of one forward, from the routing the MoE layers leave behind, is the value
    transformers' load_balancing_loss_func gives for the same batch (all layers' routers together)."""
    reference = save_reference(tmp_path / "hf", family, variant)
    model, _ = load_hf(tmp_path / "hf")
    inputs = ids(batch=3, seq=24, seed=5)
    with torch.no_grad():
        expected = reference(inputs, output_router_logits=True).aux_loss
        model(inputs)
    losses = router_losses(moe_layers(model))
    torch.testing.assert_close(losses.aux_loss, expected, atol=1e-6, rtol=1e-6)
    assert losses.counts.shape == (reference.config.num_hidden_layers, 8)
    assert losses.counts.sum().item() == 2 * 3 * 24 * reference.config.num_experts_per_tok  # every slot routed
    assert losses.dropped is None


@pytest.mark.parametrize("family,variant", MOE_CASES)
def test_moe_folder_in_transformers_5_fused_layout_loads(tmp_path, family, variant):
    """A folder holding transformers 5's in-memory expert tensors (mlp.experts.gate_up_proj / down_proj, as a
    raw state_dict saved with safetensors writes them) loads with the same logits as the Hub layout."""
    from safetensors.torch import save_file

    reference = save_reference(tmp_path / "hub", family, variant)
    (tmp_path / "fused").mkdir()
    (tmp_path / "fused" / "config.json").write_bytes((tmp_path / "hub" / "config.json").read_bytes())
    state = {name: tensor.contiguous() for name, tensor in reference.state_dict().items()
             if not (name == "lm_head.weight" and reference.config.tie_word_embeddings)}
    assert any(name.endswith("experts.gate_up_proj") for name in state)
    save_file(state, tmp_path / "fused" / "model.safetensors")
    model, _ = load_hf(tmp_path / "fused")
    inputs = ids(seed=6)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), reference(inputs).logits, atol=1e-4, rtol=1e-4)


def test_a_mistral_config_without_sliding_window_reads_as_transformers_reads_it(tmp_path, tokenizer_path):
    """Mistral v0.1-style config.json files may leave `sliding_window` out: transformers then uses its default
    window, so pytrain must too (not "no window"): the context it generates within, the longest data.seq_len it
    trains on, and what its export writes back."""
    import json

    save_reference(tmp_path / "hf", "mistral", "window")
    config_json = json.loads((tmp_path / "hf" / "config.json").read_text())
    del config_json["sliding_window"]
    config_json["max_position_embeddings"] = 16384  # longer than any default window: the window is what limits
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config_json))
    window = transformers.AutoConfig.from_pretrained(tmp_path / "hf").sliding_window
    assert window is not None and window < 16384
    model, config = load_hf(tmp_path / "hf")
    assert config.sliding_window == window and config.context_length == window
    export_model(model, config, tokenizer_path, tmp_path / "out")
    assert transformers.AutoConfig.from_pretrained(tmp_path / "out").sliding_window == window


requires_triton = pytest.mark.skipif(not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
                                     reason="Triton needs a CUDA GPU or TRITON_INTERPRET=1 (CI sets it)")


@requires_triton
def test_the_triton_path_gives_transformers_qwen3_loss_and_gradients(tmp_path):
    """Qwen3 takes every kernel (RMSNorm, its per-head q/k RMSNorm, RoPE, the fused LM-head loss); compared with
    transformers' own model, not with pytrain's other path, so a q/k norm (or any op) dropped from both fails."""
    import torch.nn.functional as F

    from pytrain.model.hf import hf_name

    reference = save_reference(tmp_path / "hf", "qwen3", "head_dim32")
    model, _ = load_hf(tmp_path / "hf")
    inputs, labels = ids(batch=1, seq=16, seed=3), ids(batch=1, seq=16, seed=4)
    expected_logits = reference(inputs).logits
    expected_loss = F.cross_entropy(expected_logits.flatten(0, 1), labels.flatten())
    expected_loss.backward()
    previous = ops.get_backend()
    ops.set_backend("triton")
    try:
        with torch.no_grad():
            logits = model(inputs)
        loss = model(inputs, labels)
        loss.backward()
    finally:
        ops.set_backend(previous)
    torch.testing.assert_close(logits, expected_logits.detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss, expected_loss.detach(), atol=1e-5, rtol=1e-5)
    expected_grads = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected_grads[hf_name(name, "qwen3")].grad, atol=1e-5, rtol=1e-4,
                                   msg=name)


@requires_triton
@pytest.mark.parametrize("preset_name", ["tiny", "tiny-qwen2", "tiny-qwen3", "tiny-mistral", "tiny-gpt_neox",
                                         "tiny-qwen2_moe"])
def test_each_family_takes_the_kernels_that_fit(preset_name):
    """The Triton kernels (RMSNorm, Qwen3's per-head q/k RMSNorm, RoPE, the fused LM-head loss, the grouped
    GEMM of a mixture of experts) give each family the reference path's loss and gradients; GPT-NeoX's
    LayerNorm and partial rotary stay on the PyTorch path under backend triton too."""
    model = build_model(preset(preset_name, vocab_size=VOCAB))
    model.init_weights(seed=0)
    inputs, labels = ids(batch=1, seq=16, seed=3), ids(batch=1, seq=16, seed=4)
    results = {}
    for backend in ("triton", "torch"):
        previous = ops.get_backend()
        ops.set_backend(backend)
        try:
            model.zero_grad()
            loss = model(inputs, labels)
            loss.backward()
        finally:
            ops.set_backend(previous)
        results[backend] = loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    torch.testing.assert_close(results["triton"][0], results["torch"][0], atol=1e-5, rtol=1e-5)
    for name, grad in results["torch"][1].items():
        torch.testing.assert_close(results["triton"][1][name], grad, atol=1e-5, rtol=1e-4, msg=name)
