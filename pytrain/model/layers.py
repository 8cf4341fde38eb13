"""The building blocks every family's decoder is made of, in plain PyTorch.

    Decoder: embedding -> N x block -> final norm -> LM head (tied or not); the loss, the KV cache
             plumbing and the initialisation are the same for every family
    Block:   pre-norm residual block, sequential (x + attn, then + mlp) or parallel (GPT-NeoX:
             x + attn(norm1(x)) + mlp(norm2(x)))
    Attention: grouped KV heads, RoPE over the first `rotary_dim` dimensions, optional q/k/v and output
             biases, optional q/k RMSNorm per head (Qwen3) or over the whole projection (OLMoE), separate or
             fused (GPT-NeoX) projections
    SwiGLU, GeluMLP, RMSNorm, LayerNorm, KVCache; the mixture-of-experts MLP is pytrain.model.moe

Parameter names are the ones Hugging Face's Llama uses without its `model.` prefix (embed_tokens,
layers.N.self_attn.q_proj, ..., norm, lm_head); each family's adapter (families/<name>/hf.py) renames
them to its own checkpoint names. Nothing here knows about distribution, compilation or kernel choice:
FSDP2, activation checkpointing and `torch.compile` are applied from outside (pytrain.train.parallelize),
and `pytrain.ops` picks the Triton kernel, the CPU kernel or the PyTorch reference. When labels are given,
`forward` returns the loss from the fused linear cross-entropy, called in the root module because it owns
the LM head weight, which FSDP2 has unsharded by the time its forward runs.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import nn

from pytrain import ops
from pytrain.model.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x, residual=None):
        """norm(x), or with `residual` the pair (norm(x + residual), x + residual) in one fused pass."""
        return ops.rms_norm(x, self.weight, self.eps, residual=residual)


class LayerNorm(nn.Module):
    """LayerNorm with weight and bias (GPT-NeoX); RMSNorm's interface, PyTorch's own op on every device."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x, residual=None):
        if residual is not None:
            x = x + residual
        y = F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        return y if residual is None else (y, x)


class KVCache:
    """Keys and values of the tokens seen so far, so that decoding runs only the new tokens through the model.

    One buffer pair per layer, [batch, kv_heads, max_len, head_dim], allocated on first use with the keys'
    dtype and device (bf16 under mixed precision). `Decoder.forward(ids, cache=cache)` stores the keys and
    values of `ids` at positions `length` onwards, attends over all stored positions, then advances `length`.
    """

    def __init__(self, max_len: int, padding: torch.Tensor | None = None):
        self.max_len = max_len
        self.length = 0
        self.padding = padding  # [batch]: left-padding positions of each row (prompts of different lengths;
                                # RoPE is relative, so a row's offset leaves its attention unchanged)
        self._keys: dict[int, torch.Tensor] = {}
        self._values: dict[int, torch.Tensor] = {}

    def padded_mask(self, seq: int) -> torch.Tensor:
        """Boolean [batch, 1, seq, length + seq] for `seq` new tokens of left-padded rows: causal, padding never
        attended to (a padding position attends to itself alone, so no row of the softmax is empty)."""
        keys = torch.arange(self.length + seq, device=self.padding.device)
        queries = keys[self.length:, None]
        visible = (keys <= queries) & (keys >= self.padding[:, None, None])
        return (visible | (keys == queries)).unsqueeze(1)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store `layer`'s new k, v [batch, kv_heads, seq, head_dim]; return its keys and values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} requested")
        if layer not in self._keys:
            shape = (k.shape[0], k.shape[1], self.max_len, k.shape[3])
            self._keys[layer], self._values[layer] = k.new_empty(shape), v.new_empty(shape)
        keys, values = self._keys[layer], self._values[layer]
        keys[:, :, self.length:end] = k
        values[:, :, self.length:end] = v
        return keys[:, :, :end], values[:, :, :end]


class Attention(nn.Module):
    """Causal self-attention. `fused_qkv`: one `qkv_proj` whose output holds, per head, that head's q, k
    and v one after the other (GPT-NeoX's query_key_value layout; needs as many KV heads as heads).
    `qk_norm`: RMSNorm of q and k before RoPE, over each head ("head") or over all heads ("width")."""

    def __init__(self, config: ModelConfig, layer_index: int, *, qkv_bias: bool, out_bias: bool,
                 qk_norm: str | None = None, fused_qkv: bool = False):
        super().__init__()
        self.layer_index = layer_index  # its slot in a KVCache
        self.n_heads, self.n_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.rotary_dim = config.head_dim, config.rotary_dim
        self.rope_theta, self.rope_scaling = config.rope_theta, config.rope_scaling
        hidden, q_width, kv_width = config.hidden_size, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.fused_qkv = fused_qkv
        if fused_qkv:
            self.qkv_proj = nn.Linear(hidden, 3 * q_width, bias=qkv_bias)
        else:
            self.q_proj = nn.Linear(hidden, q_width, bias=qkv_bias)
            self.k_proj = nn.Linear(hidden, kv_width, bias=qkv_bias)
            self.v_proj = nn.Linear(hidden, kv_width, bias=qkv_bias)
        self.o_proj = nn.Linear(q_width, hidden, bias=out_bias)
        if qk_norm is not None:
            per_head = qk_norm == "head"
            self.q_norm = RMSNorm(self.head_dim if per_head else q_width, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim if per_head else kv_width, config.rms_norm_eps)
        self.qk_norm = qk_norm

    def _project(self, x):
        batch, seq, _ = x.shape
        if self.fused_qkv:
            return self.qkv_proj(x).view(batch, seq, self.n_heads, 3 * self.head_dim).chunk(3, dim=-1)
        return (self.q_proj(x).view(batch, seq, self.n_heads, self.head_dim),
                self.k_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim),
                self.v_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim))

    def forward(self, x, position_ids=None, mask=None, cache: KVCache | None = None):
        batch, seq, _ = x.shape
        q, k, v = self._project(x)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        elif self.qk_norm == "width":
            q, k = self.q_norm(q.flatten(2)).view_as(q), self.k_norm(k.flatten(2)).view_as(k)
        q, k = ops.apply_rope(q, k, position_ids, theta=self.rope_theta, scaling=self.rope_scaling,
                              max_position=None if cache is None else cache.max_len, rotary_dim=self.rotary_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)
        out = ops.attention(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class SwiGLU(nn.Module):
    def __init__(self, config: ModelConfig, intermediate_size: int | None = None):
        super().__init__()
        hidden, inner = config.hidden_size, intermediate_size or config.intermediate_size
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(ops.swiglu(x, self.gate_proj.weight, self.up_proj.weight))


class GeluMLP(nn.Module):
    """up -> GELU (exact, erf) -> down, both with biases (GPT-NeoX)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.down_proj(F.gelu(self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, attention: nn.Module, mlp: nn.Module, input_norm: nn.Module, post_attention_norm: nn.Module,
                 parallel_residual: bool = False):
        super().__init__()
        self.input_layernorm = input_norm
        self.self_attn = attention
        self.post_attention_layernorm = post_attention_norm
        self.mlp = mlp
        self.parallel_residual = parallel_residual

    def forward(self, x, position_ids=None, mask=None, cache: KVCache | None = None):
        attn = self.self_attn(self.input_layernorm(x), position_ids, mask, cache)
        if self.parallel_residual:
            return self.mlp(self.post_attention_layernorm(x)) + attn + x
        normed, h = self.post_attention_layernorm(attn, residual=x)
        return self.mlp(normed) + h


class Decoder(nn.Module):
    """The trunk every family shares; a family's model says only how to build one block and a norm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(self.make_block(config, i) for i in range(config.num_hidden_layers))
        self.norm = self.make_norm(config, config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def make_block(self, config: ModelConfig, layer_index: int) -> nn.Module:
        hidden = config.hidden_size
        return Block(self.make_attention(config, layer_index), self.make_mlp(config), self.make_norm(config, hidden),
                     self.make_norm(config, hidden), parallel_residual=bool(config.use_parallel_residual))

    def make_attention(self, config: ModelConfig, layer_index: int) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must say which attention its blocks have")

    @staticmethod
    def make_mlp(config: ModelConfig) -> nn.Module:
        return SwiGLU(config)

    @staticmethod
    def make_norm(config: ModelConfig, dim: int) -> nn.Module:
        return RMSNorm(dim, config.rms_norm_eps)

    def tie_weights(self) -> None:
        """Share the LM head with the embedding when the config ties them (again after `to_empty`, which
        gives each module its own tensor)."""
        if self.config.tie_word_embeddings and self.lm_head.weight is not self.embed_tokens.weight:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, input_ids, labels=None, *, position_ids=None, segment_ids=None, reduction="mean",
                cache: KVCache | None = None):
        """input_ids [batch, seq] -> logits [batch, seq, vocab], or with labels the loss.

        position_ids [batch, seq]: per-token RoPE positions (default 0..seq-1). segment_ids [batch, seq]:
        document number of each token in a packed row; when given, attention stays within a document.
        reduction: "mean" over the non-ignored labels (-100 is ignored), or "sum" (for exact averaging
        over a global batch split across micro-batches and ranks). cache: the tokens before `input_ids`
        (their positions start at cache.length); updated in place.
        """
        x = self.embed_tokens(input_ids)
        # Built once per batch, shared by every layer: block-sparse FlexAttention on CUDA (pytrain.ops.attention).
        mask = None if segment_ids is None else ops.document_mask(segment_ids)
        if cache is not None:
            if segment_ids is not None:
                raise ValueError("a KV cache decodes one document: segment_ids are not supported with it")
            start, seq = cache.length, input_ids.shape[1]
            if position_ids is None:
                position_ids = torch.arange(start, start + seq, device=input_ids.device).expand(input_ids.shape[0], -1)
            if cache.padding is not None:
                mask = cache.padded_mask(seq)
            elif start and seq > 1:  # several new tokens after cached ones: causal with an offset
                mask = torch.ones(seq, start + seq, dtype=torch.bool, device=input_ids.device).tril(start)
        for layer in self.layers:
            x = layer(x, position_ids, mask, cache)
        if cache is not None:
            cache.length += input_ids.shape[1]
        x = self.norm(x)
        if labels is None:
            return self.lm_head(x)
        return ops.linear_cross_entropy(x.flatten(0, 1), self.lm_head.weight, labels.flatten(), reduction=reduction)

    # ------------------------------------------------------------------ initialisation
    def init_parameter(self, name: str, tensor: torch.Tensor, seed: int) -> None:
        """Fill `tensor` (the full, unsharded shape) with the initial value of parameter `name`.

        Each parameter draws from its own generator, seeded from (seed, name), so the values do not depend
        on the order, the device count or the sharding: a sharded run materialises exactly what a single
        process does (pytrain.model.materialize). Norm weights start at 1, biases at 0, every other weight
        at N(0, initializer_range), as in Hugging Face's models.
        """
        with torch.no_grad():
            if name.endswith("norm.weight"):
                tensor.fill_(1.0)
            elif name.endswith(".bias"):
                tensor.zero_()
            else:
                generator = torch.Generator(device=tensor.device)
                generator.manual_seed((seed * 0x9E3779B1 + zlib.crc32(name.encode())) % 2**63)
                tensor.normal_(0.0, self.config.initializer_range, generator=generator)

    def init_weights(self, seed: int = 0) -> None:
        """Initialise an unsharded model in place (for use outside the trainer)."""
        for name, param in self.named_parameters():
            self.init_parameter(name, param, seed)
