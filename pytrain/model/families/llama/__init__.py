"""The llama family (Llama 2, 3, 3.1, 3.2 and Llama-shaped models such as TinyLlama).

    model.py  Llama (pytrain.model.layers: RMSNorm blocks, SwiGLU, q/k/v/o biases when attention_bias)
    hf.py     LlamaConfig <-> ModelConfig, weight names (the Llama-like adapter Qwen and Mistral reuse)

Every family shares one FSDP2 / activation-checkpointing plan (pytrain.train.parallelize): one FSDP unit
and one checkpoint region per block in `model.layers`, the embedding, final norm and LM head in the root.
"""

from pytrain.model.families.family import TINY_SHAPE, Family, llama_like_vector_params

# Sizes follow well-known shapes: 125m/350m are GPT-3-like widths with Llama blocks; 1b, 3b and 8b are the
# Llama 3.2 1B, Llama 3.2 3B and Llama 3.1 8B shapes (without Llama 3's long-context RoPE scaling).
PRESETS = {
    "tiny": TINY_SHAPE,
    "125m": dict(vocab_size=32000, hidden_size=768, intermediate_size=2560, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=2048),
    "350m": dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=24,
                 num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=2048),
    "1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
               rope_theta=500000.0),
    "3b": dict(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
               num_attention_heads=24, num_key_value_heads=8, max_position_embeddings=4096,
               rope_theta=500000.0),
    "8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
               rope_theta=500000.0, tie_word_embeddings=False),
}

FAMILY = Family(
    name="llama", model="pytrain.model.families.llama.model:Llama", adapter="pytrain.model.families.llama.hf",
    hidden_acts=("silu",), presets=PRESETS,
    vector_params=lambda c: llama_like_vector_params(c, qkv_bias=c.attention_bias, out_bias=c.attention_bias),
)
