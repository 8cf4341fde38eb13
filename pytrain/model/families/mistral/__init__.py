"""The mistral family (Mistral 7B v0.1-v0.3 and Mistral-shaped models).

The architecture is Llama's without attention biases, so its model is pytrain's Llama; what differs is
the Hugging Face format (hf.py: MistralConfig, `sliding_window`). pytrain attends over the whole causal
prefix, which equals sliding-window attention as long as no sequence is longer than the window: training
refuses a data.seq_len above `sliding_window`, and generation keeps its context within it.
"""

from pytrain.model.families.family import TINY_SHAPE, Family, llama_like_vector_params, refuse_attention_bias

FAMILY = Family(
    name="mistral", model="pytrain.model.families.llama.model:Llama", adapter="pytrain.model.families.mistral.hf",
    hidden_acts=("silu",), options=("sliding_window",),
    presets={"tiny-mistral": dict(TINY_SHAPE, rms_norm_eps=1e-6, sliding_window=128, tie_word_embeddings=False)},
    vector_params=lambda c: llama_like_vector_params(c, qkv_bias=False, out_bias=False),
    extra_check=refuse_attention_bias("mistral", "its projections have no biases"),
)
