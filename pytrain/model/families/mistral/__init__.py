"""The mistral family (Mistral 7B v0.1-v0.3 and Mistral-shaped models).

The architecture is Llama's without attention biases, so its model is pytrain's Llama; what differs is
the Hugging Face format (hf.py: MistralConfig, `sliding_window`). pytrain attends over the whole causal
prefix, which equals sliding-window attention as long as no sequence is longer than the window: training
refuses a data.seq_len above `sliding_window`, and generation keeps its context within it.
"""

from pytrain.errors import PytrainError
from pytrain.model.families.family import Family, llama_like_vector_params


def _check(config) -> None:
    if config.attention_bias:
        raise PytrainError("model.attention_bias is not an option of family mistral (its projections have no "
                           "biases); remove it")


FAMILY = Family(
    name="mistral", model="pytrain.model.families.llama.model:Llama", adapter="pytrain.model.families.mistral.hf",
    hidden_acts=("silu",), options=("sliding_window",),
    presets={"tiny-mistral": dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=256,
                          rms_norm_eps=1e-6, sliding_window=128, tie_word_embeddings=False)},
    vector_params=lambda c: llama_like_vector_params(c, qkv_bias=False, out_bias=False),
    extra_check=_check,
)
