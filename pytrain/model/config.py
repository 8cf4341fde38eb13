"""The model's hyper-parameters, named as in Hugging Face's `LlamaConfig`, and the size presets.

RoPE scaling (Hugging Face's `rope_scaling` / `rope_parameters` dict) is flattened into `rope_type` and
`rope_`-prefixed fields, so a run config sets them like any other field: rope_type "default" (plain
RoPE), "linear" (positions divided by rope_factor) or "llama3" (Llama 3.1+: low frequencies divided by
rope_factor, high ones kept, a smooth band between, from rope_low_freq_factor, rope_high_freq_factor and
rope_original_max_position_embeddings). Kept free of torch so that the run configuration can be parsed
and checked without importing it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from pytrain.errors import PytrainError, did_you_mean


ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 32000
    hidden_size: int = 768
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int = 4
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    attention_bias: bool = False
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "float") and value <= 0:
                raise PytrainError(f"model.{f.name} must be positive (got {value})")
        if self.hidden_size % self.num_attention_heads:
            raise PytrainError(f"model.hidden_size ({self.hidden_size}) must be divisible by "
                               f"model.num_attention_heads ({self.num_attention_heads})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise PytrainError(f"model.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                               f"model.num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise PytrainError(f"head dimension hidden_size / num_attention_heads = {self.head_dim} must be even "
                               "(rotary embeddings rotate pairs)")
        self._check_rope_scaling()

    def _check_rope_scaling(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            hint = did_you_mean(self.rope_type, ROPE_TYPES)
            raise PytrainError(f'model.rope_type "{self.rope_type}" is not supported{hint}; '
                               f"choose one of {', '.join(ROPE_TYPES)}")
        if self.rope_type == "default" and self.rope_factor != 1.0:
            raise PytrainError(f"model.rope_factor={self.rope_factor} needs model.rope_type linear or llama3 "
                               "(plain RoPE has no factor)")
        if self.rope_type == "llama3":
            original = self.rope_original_max_position_embeddings
            if original is None or original <= 0:
                raise PytrainError("model.rope_type llama3 needs model.rope_original_max_position_embeddings > 0 "
                                   f"(got {original})")
            if not 0 < self.rope_low_freq_factor < self.rope_high_freq_factor:
                raise PytrainError(f"model.rope_low_freq_factor ({self.rope_low_freq_factor}) must be positive and "
                                   f"below model.rope_high_freq_factor ({self.rope_high_freq_factor})")

    @property
    def rope_scaling(self) -> dict | None:
        """The RoPE scaling as Hugging Face writes it (`rope_scaling`), or None for plain RoPE."""
        if self.rope_type == "default":
            return None
        scaling = {"rope_type": self.rope_type, "factor": self.rope_factor}
        if self.rope_type == "llama3":
            scaling.update(low_freq_factor=self.rope_low_freq_factor, high_freq_factor=self.rope_high_freq_factor,
                           original_max_position_embeddings=self.rope_original_max_position_embeddings)
        return scaling

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict:
        return asdict(self)

    def num_params(self) -> int:
        """Parameter count (tied embeddings counted once)."""
        h, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        bias = (2 * h + 2 * kv) if self.attention_bias else 0
        attention = 2 * h * h + 2 * h * kv + bias
        mlp = 3 * h * self.intermediate_size
        per_layer = attention + mlp + 2 * h
        embedding = self.vocab_size * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return embedding + self.num_hidden_layers * per_layer + h + head

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token: 6 x (matmul parameters) + 12 x layers x hidden x seq (attention scores).

        The matmul parameters are every weight a token multiplies through, so the LM head counts (tied or
        not) and the embedding lookup does not; the attention term follows PaLM (appendix B), without
        halving for causality, as torchtitan and nanoGPT report it.
        """
        h, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * self.intermediate_size
        matmul = self.num_hidden_layers * per_layer + self.vocab_size * h
        return 6 * matmul + 12 * self.num_hidden_layers * h * seq_len


# Sizes follow well-known shapes: 125m/350m are GPT-3-like widths with Llama blocks; 1b, 3b and 8b are the
# Llama 3.2 1B, Llama 3.2 3B and Llama 3.1 8B shapes (without Llama 3's long-context RoPE scaling).
PRESETS: dict[str, dict] = {
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
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


def preset(name: str, **overrides) -> ModelConfig:
    """The preset `name` with some fields replaced."""
    if name not in PRESETS:
        raise PytrainError(f'unknown model preset "{name}"{did_you_mean(name, PRESETS)}; '
                           f"choose one of {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})
