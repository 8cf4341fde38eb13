"""The Llama model: shapes, parameter/FLOP accounting, fused loss, masking, GQA paths, initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pytrain.errors import PytrainError
from pytrain.model import PRESETS, Llama, ModelConfig, preset


def tiny(**overrides) -> Llama:
    model = Llama(preset("tiny", **overrides))
    model.init_weights(seed=0)
    return model


def batch(vocab=512, b=2, s=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, s + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


@pytest.mark.parametrize("overrides", [{}, {"attention_bias": True, "tie_word_embeddings": False}])
def test_parameter_count_matches_config(overrides):
    model = tiny(**overrides)
    assert sum(p.numel() for p in model.parameters()) == model.config.num_params()


def test_presets_have_their_advertised_sizes():
    sizes = {name: preset(name).num_params() / 1e9 for name in PRESETS}
    assert sizes["1b"] == pytest.approx(1.24, abs=0.01)  # Llama 3.2 1B
    assert sizes["3b"] == pytest.approx(3.21, abs=0.01)  # Llama 3.2 3B
    assert sizes["8b"] == pytest.approx(8.03, abs=0.01)  # Llama 3.1 8B
    assert sizes["125m"] == pytest.approx(0.125, abs=0.005)
    assert sizes["350m"] == pytest.approx(0.35, abs=0.015)


def test_flops_per_token_is_6n_plus_attention():
    config = preset("tiny")
    norms = (2 * config.num_hidden_layers + 1) * config.hidden_size
    # Tied: the embedding table is counted once, as the LM head matmul; norms do no matmul.
    matmul_params = config.num_params() - norms
    attention = 12 * config.num_hidden_layers * config.hidden_size * 100
    assert config.flops_per_token(100) == 6 * matmul_params + attention


@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": False}, {"attention_bias": True}])
def test_flops_per_token_hand_computed(overrides):
    """Constants worked out by hand from the definition (6 x weights a token multiplies through + 12 x layers x
    hidden x seq): the LM head counts once whether tied or not, the embedding lookup and biases are no matmul.
    tiny: per block 2*64*64 (q, o) + 2*64*32 (k, v: 2 KV heads of 16) + 3*64*176 (MLP) = 46080; 2 blocks
    + LM head 512*64 = 124928 weights; 6 * 124928 = 749568; attention 12 * 2 * 64 * 100 = 153600."""
    assert preset("tiny", **overrides).flops_per_token(100) == 903_168


def test_flops_per_token_of_llama_3_2_1b():
    """Llama 3.2 1B at seq 2048: per block 2*2048*2048 + 2*2048*512 + 3*2048*8192 = 60817408, x16 = 973078528,
    LM head 128256*2048 = 262668288; 6 * 1235746816 = 7414480896; attention 12 * 16 * 2048 * 2048 = 805306368."""
    assert preset("1b").flops_per_token(2048) == 8_219_787_264


def test_fused_loss_equals_cross_entropy_of_logits():
    model = tiny()
    inputs, labels = batch()
    logits = model(inputs)
    assert logits.shape == (2, 24, 512)
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    torch.testing.assert_close(model(inputs, labels), expected)
    torch.testing.assert_close(model(inputs, labels, reduction="sum"), expected * labels.numel())


def test_backward_reaches_every_parameter():
    model = tiny(attention_bias=True, tie_word_embeddings=False)
    model(*batch()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_document_mask_keeps_documents_independent():
    model = tiny()
    inputs, _ = batch(s=32)
    segments = torch.cat([torch.zeros(2, 10), torch.ones(2, 22)], 1).long()
    positions = torch.cat([torch.arange(10), torch.arange(22)]).expand(2, -1)
    packed = model(inputs, position_ids=positions, segment_ids=segments)
    alone = model(inputs[:, 10:])
    torch.testing.assert_close(packed[:, 10:], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, :10], model(inputs[:, :10]), atol=1e-5, rtol=1e-5)


def test_grouped_kv_paths_agree():
    """The mask path (k/v repeated per query head) matches the causal GQA path when there is one document."""
    model = tiny()
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    inputs, _ = batch()
    one_doc = torch.zeros_like(inputs)
    torch.testing.assert_close(model(inputs, segment_ids=one_doc), model(inputs), atol=1e-5, rtol=1e-5)


def test_init_depends_on_seed_and_name_only():
    a, b, c = tiny(), tiny(), Llama(preset("tiny"))
    c.init_weights(seed=1)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if name.endswith("norm.weight"):
            assert torch.equal(pa, torch.ones_like(pa))
        else:
            assert not torch.equal(pa, pc), name
            assert pa.std().item() == pytest.approx(0.02, rel=0.2)
    assert a.lm_head.weight is a.embed_tokens.weight


def test_untied_head_is_separate():
    model = tiny(tie_word_embeddings=False)
    assert model.lm_head.weight is not model.embed_tokens.weight
    assert not torch.equal(model.lm_head.weight, model.embed_tokens.weight)


@pytest.mark.parametrize("bad, message", [
    ({"hidden_size": 66}, "divisible by model.num_attention_heads"),
    ({"num_key_value_heads": 3}, "divisible by model.num_key_value_heads"),
    ({"hidden_size": 12, "num_attention_heads": 4}, "must be even"),
    ({"num_hidden_layers": 0}, "must be positive"),
])
def test_invalid_shapes_are_rejected(bad, message):
    with pytest.raises(PytrainError, match=message):
        preset("tiny", **bad)


def test_unknown_preset_names_the_close_match():
    with pytest.raises(PytrainError, match='did you mean "125m"'):
        preset("125M")


def test_model_config_uses_hf_field_names():
    """Every field is a key of some family's transformers config, except `family`, the flattened rope scaling
    dict, two transformers 4 keys that transformers 5 moved into rope_parameters (rope_theta; rotary_pct,
    as the Pythia releases spell it) and pytrain's own mixture-of-experts training options."""
    from dataclasses import fields

    transformers = pytest.importorskip("transformers")
    keys = set()
    for config_class in (transformers.LlamaConfig, transformers.MistralConfig, transformers.Qwen3Config,
                         transformers.GPTNeoXConfig, transformers.Qwen2MoeConfig, transformers.MixtralConfig,
                         transformers.OlmoeConfig):
        keys |= set(config_class().to_dict())
    names = {f.name for f in fields(ModelConfig)}
    scaling = {"rope_type", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
               "rope_original_max_position_embeddings"}
    moe_training = {"router_z_loss_coef", "router_bias_update_rate", "moe_capacity_factor"}
    assert names - keys == {"family", "rope_theta", "rotary_pct", *scaling, *moe_training}
