"""The model's hyper-parameters, named as in Hugging Face's configs, and the size presets.

One dataclass serves every model family (pytrain.model.families): `family` names the architecture,
the shared fields (sizes, RoPE, norms) mean what they mean in Hugging Face's `LlamaConfig`, and the
family-specific ones (sliding_window, rotary_pct, use_parallel_residual, layer_norm_eps) stay null for
families that do not have them. A null `head_dim` or `hidden_act` takes the family's default; the
family also refuses values its architecture cannot reproduce (its `check`).

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
# numeric fields for which 0 means "off"; every other number must be positive
MAY_BE_ZERO = ("router_aux_loss_coef", "router_z_loss_coef", "router_bias_update_rate")


@dataclass(frozen=True)
class ModelConfig:
    family: str = "llama"
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
    head_dim: int | None = None                 # null: hidden_size / num_attention_heads
    hidden_act: str | None = None               # null: the family's (silu; gelu for gpt_neox)
    sliding_window: int | None = None           # mistral: attention window (longer sequences are refused)
    rotary_pct: float | None = None             # gpt_neox: fraction of each head's dimensions RoPE rotates
    use_parallel_residual: bool | None = None   # gpt_neox: x + attn(ln1(x)) + mlp(ln2(x)) in one step
    layer_norm_eps: float | None = None         # gpt_neox: its LayerNorms' epsilon
    # mixture-of-experts families (qwen2_moe, qwen3_moe, mixtral, olmoe; pytrain.model.moe)
    num_experts: int | None = None              # routed experts per MoE layer
    num_experts_per_tok: int | None = None      # experts each token goes to (top-k)
    moe_intermediate_size: int | None = None    # qwen2_moe, qwen3_moe: each expert's width (mixtral, olmoe:
                                                # intermediate_size)
    shared_expert_intermediate_size: int | None = None  # qwen2_moe: the shared expert's width
    norm_topk_prob: bool | None = None          # renormalise the k routing weights to sum to 1 (mixtral: always)
    router_aux_loss_coef: float | None = None   # weight of the load-balancing loss added to the training loss
    router_z_loss_coef: float | None = None     # weight of the router z-loss (ST-MoE); 0: off
    router_bias_update_rate: float | None = None  # aux-loss-free balancing (DeepSeek-V3): expert bias step; 0: off
    moe_capacity_factor: float | None = None    # null: dropless; else per-expert cap of factor x tokens x k / experts

    def __post_init__(self) -> None:
        from pytrain.model.families import family

        spec = family(self.family)
        for name, value in spec.defaults(self).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)  # frozen: filled once, here
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type.split(" |")[0] in ("int", "float") and value is not None:
                if value < 0 or (value == 0 and f.name not in MAY_BE_ZERO):
                    raise PytrainError(f"model.{f.name} must be {'>= 0' if f.name in MAY_BE_ZERO else 'positive'} "
                                       f"(got {value})")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise PytrainError(f"model.hidden_size ({self.hidden_size}) must be divisible by "
                               f"model.num_attention_heads ({self.num_attention_heads}), or set model.head_dim")
        if self.num_attention_heads % self.num_key_value_heads:
            raise PytrainError(f"model.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                               f"model.num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.rotary_dim % 2 or self.rotary_dim == 0:
            raise PytrainError(f"the rotated head dimension ({self.rotary_dim}: head_dim x rotary_pct) must be even "
                               "and positive (rotary embeddings rotate pairs)")
        self._check_rope_scaling()
        spec.check(self)

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
    def rotary_dim(self) -> int:
        """How many of each head's dimensions RoPE rotates (all but with gpt_neox's rotary_pct < 1)."""
        return self.head_dim if self.rotary_pct is None else int(self.head_dim * self.rotary_pct)

    @property
    def context_length(self) -> int:
        """The longest sequence the model attends over exactly: max_position_embeddings, or a shorter
        sliding window (pytrain attends over the whole causal prefix, so it stops at the window)."""
        return min(self.max_position_embeddings, self.sliding_window or self.max_position_embeddings)

    @property
    def expert_intermediate_size(self) -> int | None:
        """Each routed expert's width: moe_intermediate_size (qwen MoE families) or intermediate_size."""
        if self.num_experts is None:
            return None
        return self.moe_intermediate_size or self.intermediate_size

    def to_dict(self) -> dict:
        return asdict(self)

    def num_params(self, active: bool = False) -> int:
        """Parameter count (tied embeddings counted once); `active`: only what one token computes with, i.e.
        of a mixture-of-experts layer its k routed experts (plus router and shared expert), not all E."""
        from pytrain.model.families import family

        h = self.hidden_size
        per_layer = self._matmul_params_per_layer(active) + family(self.family).vector_params(self)
        embedding = self.vocab_size * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        final_norm = 2 * h if self.layer_norm_eps is not None else h  # a LayerNorm has a bias too
        return embedding + self.num_hidden_layers * per_layer + final_norm + head

    def _matmul_params_per_layer(self, active: bool) -> int:
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return 2 * self.hidden_size * q + 2 * self.hidden_size * kv + self._mlp_params(active)

    def _mlp_params(self, active: bool) -> int:
        """The feed-forward's matmul weights; of a MoE layer the router, the routed experts (k of them when
        `active`, else all) and the shared expert with its gate."""
        from pytrain.model.families import family

        h = self.hidden_size
        if self.num_experts is None:
            return family(self.family).mlp_matrices * h * self.intermediate_size
        routed = self.num_experts_per_tok if active else self.num_experts
        shared = 3 * h * self.shared_expert_intermediate_size + h if self.shared_expert_intermediate_size else 0
        return h * self.num_experts + routed * 3 * h * self.expert_intermediate_size + shared

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token: 6 x (active matmul parameters) + 12 x layers x heads x head_dim x seq
        (attention scores).

        The matmul parameters are every weight a token multiplies through, so the LM head counts (tied or
        not) and the embedding lookup does not, and of a mixture-of-experts layer only the router, the k
        experts the token is routed to and the shared expert count; the attention term follows PaLM
        (appendix B), without halving for causality, as torchtitan and nanoGPT report it.
        """
        matmul = self.num_hidden_layers * self._matmul_params_per_layer(True) + self.vocab_size * self.hidden_size
        attention_width = self.num_attention_heads * self.head_dim
        return 6 * matmul + 12 * self.num_hidden_layers * attention_width * seq_len


def _all_presets() -> dict[str, dict]:
    """Every family's presets (Llama's tiny, 125m, ... 8b; the others named "<size>-<family>", e.g. tiny-qwen3)."""
    from pytrain.model.families import FAMILIES

    presets = {}
    for spec in FAMILIES.values():
        presets.update({name: {"family": spec.name, **values} for name, values in spec.presets.items()})
    return presets


PRESETS = _all_presets()


def preset(name: str, **overrides) -> ModelConfig:
    """The preset `name` with some fields replaced."""
    if name not in PRESETS:
        raise PytrainError(f'unknown model preset "{name}"{did_you_mean(name, PRESETS)}; '
                           f"choose one of {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})
