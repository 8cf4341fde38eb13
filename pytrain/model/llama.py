"""A Llama-style decoder in plain PyTorch.

embedding -> N x [RMSNorm -> attention (RoPE, grouped KV heads) -> + -> RMSNorm -> SwiGLU MLP -> +]
-> RMSNorm -> LM head. Parameter names follow Hugging Face's `LlamaForCausalLM` without its `model.`
prefix (embed_tokens, layers.N.self_attn.q_proj, ..., norm, lm_head), so export is a rename.

Nothing here knows about distribution, compilation or kernel choice: FSDP2, activation checkpointing
and `torch.compile` are applied from outside (pytrain.train.parallelize), and `pytrain.ops` picks the
Triton kernel or the PyTorch reference. When labels are given, `forward` returns the loss from the
fused linear cross-entropy, called here because this (root) module owns the LM head weight, which
FSDP2 has unsharded by the time its forward runs. For decoding, `forward(..., cache=KVCache(n))` keeps
each layer's keys and values, so every new token runs through the model alone (pytrain.model.generation).
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


class KVCache:
    """Keys and values of the tokens seen so far, so that decoding runs only the new tokens through the model.

    One buffer pair per layer, [batch, kv_heads, max_len, head_dim], allocated on first use with the keys'
    dtype and device (bf16 under mixed precision). `Llama.forward(ids, cache=cache)` stores the keys and
    values of `ids` at positions `length` onwards, attends over all stored positions, then advances `length`.
    """

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.length = 0
        self._keys: dict[int, torch.Tensor] = {}
        self._values: dict[int, torch.Tensor] = {}

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
    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.layer_index = layer_index  # its slot in a KVCache
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.rope_theta, self.rope_scaling = config.rope_theta, config.rope_scaling
        hidden, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(hidden, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, hidden, bias=bias)

    def forward(self, x, position_ids=None, mask=None, cache: KVCache | None = None):
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        q, k = ops.apply_rope(q, k, position_ids, theta=self.rope_theta, scaling=self.rope_scaling,
                              max_position=None if cache is None else cache.max_len)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)
        out = ops.attention(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden, inner = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, position_ids=None, mask=None, cache: KVCache | None = None):
        attn = self.self_attn(self.input_layernorm(x), position_ids, mask, cache)
        normed, h = self.post_attention_layernorm(attn, residual=x)
        return h + self.mlp(normed)


class Llama(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
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
            if start and seq > 1:  # several new tokens after cached ones: causal with an offset
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
        process does (pytrain.train.parallelize.materialize). Norm weights start at 1, biases at 0, every
        other weight at N(0, initializer_range), as in Hugging Face's Llama.
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
