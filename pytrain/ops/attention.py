"""Causal attention with grouped KV heads, over one document or over packed documents.

Packed rows hold several documents, numbered by `segment_ids` [batch, seq] (non-decreasing along a row,
as the packed dataset writes them): token i attends to token j iff j <= i and both are in the same
document. `document_mask(segment_ids)` builds that mask once per batch and every layer shares it:

- block-sparse (the fast path): a FlexAttention `BlockMask` over 128 x 128 tiles, built straight from
  per-tile minimum and maximum document numbers, so nothing of size seq x seq is ever allocated. Tiles no
  document spans are skipped, tiles inside one document run unmasked, only tiles on a boundary evaluate
  the mask. `flex_attention` is compiled here (once per shape) because only its compiled form is fused;
  inside an already compiled region it is traced with the caller.
- dense (the reference): a boolean [batch, 1, seq, seq] mask for SDPA, with K/V repeated per query head.
  It is what runs on CPU by default, because FlexAttention has no backward on CPU.

`attention(q, k, v, mask)` takes q [batch, heads, seq, head_dim] and k, v [batch, kv_heads, kv_seq,
head_dim] and dispatches on the mask: None is plain causal attention (SDPA, flash where available,
grouped heads without copies); a BlockMask runs FlexAttention; a boolean tensor runs the dense reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

BLOCK_SIZE = 128  # FlexAttention's tile size
_compiled_flex = None


def document_mask(segment_ids: torch.Tensor, *, block_sparse: bool | None = None) -> BlockMask | torch.Tensor:
    """The document-causal mask for `segment_ids` [batch, seq]: block-sparse (default on CUDA) or dense."""
    if block_sparse is None:
        block_sparse = segment_ids.is_cuda
    return document_block_mask(segment_ids) if block_sparse else document_causal_mask(segment_ids)


def document_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Boolean mask [batch, 1, seq, seq]: token i sees token j iff j <= i and both are in the same document."""
    seq = segment_ids.shape[1]
    same_doc = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=segment_ids.device).tril()
    return (same_doc & causal).unsqueeze(1)


def document_block_mask(segment_ids: torch.Tensor, block_size: int = BLOCK_SIZE) -> BlockMask:
    """A FlexAttention BlockMask for document-causal attention, in O(seq + (seq / block_size)^2) memory.

    Tile (i, j) (query tile i, key tile j <= i) is empty when the document ranges of the two tiles do not
    overlap, full when both tiles lie in one and the same document (and j < i: the diagonal tile needs the
    causal mask), and partial otherwise. This is exact for any segment ids (a tile is only skipped when
    no pair in it can match); it is sparse when ids are non-decreasing along the row.
    """
    batch, seq = segment_ids.shape
    n_blocks = -(-seq // block_size)
    padding = segment_ids[:, -1:].expand(batch, n_blocks * block_size - seq)  # the last document continues
    tiles = torch.cat((segment_ids, padding), dim=1).view(batch, n_blocks, block_size)
    low, high = tiles.amin(-1), tiles.amax(-1)
    causal = torch.ones(n_blocks, n_blocks, dtype=torch.bool, device=segment_ids.device).tril()
    overlap = (high[:, None, :] >= low[:, :, None]) & (low[:, None, :] <= high[:, :, None]) & causal
    single = low == high
    full = (overlap & single[:, :, None] & single[:, None, :] & (low[:, :, None] == low[:, None, :])
            & causal.tril(-1))
    partial = overlap & ~full

    def same_document_causal(b, h, q_index, kv_index):
        return (segment_ids[b, q_index] == segment_ids[b, kv_index]) & (q_index >= kv_index)

    partial_count, partial_index = _ordered(partial)
    full_count, full_index = _ordered(full)
    return BlockMask.from_kv_blocks(partial_count, partial_index, full_count, full_index, BLOCK_SIZE=block_size,
                                    mask_mod=same_document_causal, seq_lengths=(seq, seq))


def _ordered(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[batch, q_tiles, kv_tiles] booleans -> (count per query tile, key-tile indices with the set ones first,
    in increasing order), each with a head dimension of 1 (every head shares the mask)."""
    tiles = tiles.unsqueeze(1)
    count = tiles.sum(-1, dtype=torch.int32)
    index = torch.argsort(tiles.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return count, index


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: BlockMask | torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention of q over k, v (see the module docstring for shapes and masks).

    Without a mask it is causal when queries and keys are the same tokens; a query block shorter than the
    keys (decoding against a KV cache) sees every key.
    """
    grouped = q.shape[1] != k.shape[1]
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] == k.shape[2], enable_gqa=grouped)
    if isinstance(mask, BlockMask):
        return _flex()(q, k, v, block_mask=mask, enable_gqa=grouped)
    groups = q.shape[1] // k.shape[1]  # the reference: an explicit SDPA mask with K/V per query head
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _flex():
    """flex_attention, compiled unless the caller is being compiled already (then it is traced inline)."""
    global _compiled_flex
    if torch.compiler.is_compiling():
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex
