"""Tiny random models of every family that transformers itself builds and saves (no downloads): the
independent reference the family tests compare pytrain with."""

from __future__ import annotations

import pytest
import torch

VOCAB = 600  # the test tokenizer's vocabulary, so these folders can also be trained from (model.init_from)
SHAPE = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)

# (family, variant) -> (transformers model class, its config); each variant exercises one option
REFERENCES = {
    ("llama", "tied"): ("LlamaForCausalLM", "LlamaConfig",
                        dict(intermediate_size=128, num_key_value_heads=2, tie_word_embeddings=True)),
    ("qwen2", "untied"): ("Qwen2ForCausalLM", "Qwen2Config",
                          dict(intermediate_size=128, num_key_value_heads=2, tie_word_embeddings=False)),
    ("qwen2", "tied"): ("Qwen2ForCausalLM", "Qwen2Config",
                        dict(intermediate_size=128, num_key_value_heads=1, tie_word_embeddings=True)),
    ("qwen3", "head_dim32"): ("Qwen3ForCausalLM", "Qwen3Config",
                              dict(intermediate_size=128, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True)),
    ("qwen3", "bias"): ("Qwen3ForCausalLM", "Qwen3Config",
                        dict(intermediate_size=128, num_key_value_heads=2, head_dim=16, attention_bias=True,
                             tie_word_embeddings=False)),
    ("mistral", "window"): ("MistralForCausalLM", "MistralConfig",
                            dict(intermediate_size=128, num_key_value_heads=2, sliding_window=4096)),
    ("mistral", "no_window"): ("MistralForCausalLM", "MistralConfig",
                               dict(intermediate_size=128, num_key_value_heads=1, sliding_window=None,
                                    rope_scaling={"rope_type": "linear", "factor": 2.0})),
    ("gpt_neox", "parallel"): ("GPTNeoXForCausalLM", "GPTNeoXConfig",
                               dict(intermediate_size=256, rotary_pct=0.25, use_parallel_residual=True,
                                    rotary_emb_base=10000, layer_norm_eps=1e-5)),
    ("gpt_neox", "sequential"): ("GPTNeoXForCausalLM", "GPTNeoXConfig",
                                 dict(intermediate_size=256, rotary_pct=0.5, use_parallel_residual=False,
                                      attention_bias=False, tie_word_embeddings=False)),
    # mixtures of experts: 8 experts, 2 per token (transformers stores them fused in memory, per expert on disk)
    ("qwen3_moe", "norm_topk"): ("Qwen3MoeForCausalLM", "Qwen3MoeConfig",
                                 dict(intermediate_size=96, num_key_value_heads=2, head_dim=32, num_experts=8,
                                      num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
                                      router_aux_loss_coef=0.01)),
    ("qwen2_moe", "shared"): ("Qwen2MoeForCausalLM", "Qwen2MoeConfig",
                              dict(intermediate_size=96, num_key_value_heads=2, num_experts=8, num_experts_per_tok=2,
                                   moe_intermediate_size=32, shared_expert_intermediate_size=48,
                                   tie_word_embeddings=True)),
    ("mixtral", "top2"): ("MixtralForCausalLM", "MixtralConfig",
                          dict(intermediate_size=32, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2,
                               router_aux_loss_coef=0.02)),
    ("olmoe", "bias"): ("OlmoeForCausalLM", "OlmoeConfig",
                        dict(intermediate_size=32, num_key_value_heads=4, num_experts=8, num_experts_per_tok=3,
                             attention_bias=True, eos_token_id=2, pad_token_id=1)),
}
CASES = [pytest.param(*key, id=f"{key[0]}-{key[1]}") for key in REFERENCES]
MOE_CASES = [pytest.param(*key, id=f"{key[0]}-{key[1]}") for key, (_, _, options) in REFERENCES.items()
             if "num_experts_per_tok" in options]


def save_reference(folder, family, variant):
    """transformers' model of (family, variant) with every weight random (biases and norms included, so a
    misplaced bias or LayerNorm shift shows), written with save_pretrained."""
    import transformers

    model_class, config_class, options = REFERENCES[(family, variant)]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**SHAPE, **options)
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.2 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.1)
    model.save_pretrained(folder)
    return model
