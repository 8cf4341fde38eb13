"""Document-causal attention over packed rows: the block-sparse FlexAttention path against the dense reference.

FlexAttention runs forward on CPU (eager and compiled); its backward exists only on CUDA, so the
gradient checks of the block-sparse path run where a GPU is present (benchmarks/gpu_check.sh runs them).
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask
from torch.profiler import ProfilerActivity, profile

from pytrain.model import Llama, ModelConfig
from pytrain.ops.attention import attention, document_block_mask, document_causal_mask, document_mask

CUDA = torch.cuda.is_available()


def packed_segments(batch: int, seq: int, max_doc: int, generator: torch.Generator) -> torch.Tensor:
    """Segment ids of `batch` rows packed with documents of 1..max_doc tokens (the dataset's layout)."""
    rows = []
    for _ in range(batch):
        lengths = torch.randint(1, max_doc + 1, (seq,), generator=generator)
        rows.append(torch.repeat_interleave(torch.arange(seq), lengths)[:seq])
    return torch.stack(rows)


def qkv(batch, heads, kv_heads, seq, head_dim, generator, dtype=torch.float32, device="cpu", grad=False):
    def make(h):
        t = torch.randn(batch, h, seq, head_dim, generator=generator, dtype=dtype).to(device)
        return t.requires_grad_(grad)
    return make(heads), make(kv_heads), make(kv_heads)


def block_sets(mask, field: str) -> list[list[set[int]]]:
    """Per (batch, query tile): the set of key tiles listed in `field` (kv) of a BlockMask."""
    counts, indices = getattr(mask, f"{field}_num_blocks"), getattr(mask, f"{field}_indices")
    return [[set(indices[b, 0, i, :counts[b, 0, i]].tolist()) for i in range(counts.shape[2])]
            for b in range(counts.shape[0])]


@pytest.mark.parametrize("seq,max_doc", [(1, 4), (127, 9), (300, 40), (640, 200), (512, 10_000)])
def test_block_mask_equals_torchs_own_builder(seq, max_doc):
    """The tiles built from per-tile document ranges are exactly those create_block_mask finds by evaluating
    the mask on every (query, key) pair: the same partial and full tiles, for rows with many short documents,
    one document, and lengths that are not a multiple of the tile."""
    generator = torch.Generator().manual_seed(seq)
    segments = packed_segments(3, seq, max_doc, generator)
    ours = document_block_mask(segments)
    theirs = create_block_mask(ours.mask_mod, 3, None, seq, seq, device="cpu")
    for field in ("kv", "full_kv", "q", "full_q"):
        assert block_sets(ours, field) == block_sets(theirs, field), field
    assert ours.seq_lengths == (seq, seq)


@pytest.mark.parametrize("kv_heads", [4, 1])  # each head ratio compiles once (~10 s on one core)
def test_flex_forward_equals_dense_reference(kv_heads):
    generator = torch.Generator().manual_seed(kv_heads)
    segments = packed_segments(2, 300, 23, generator)
    q, k, v = qkv(2, 4, kv_heads, 300, 16, generator)  # compiled FlexAttention on CPU: fp32, bf16, fp16
    expected = attention(q, k, v, document_causal_mask(segments))
    actual = attention(q, k, v, document_block_mask(segments))  # compiled flex: reads the tiles
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_default_choice_is_dense_on_cpu():
    segments = torch.zeros(1, 8, dtype=torch.long)
    assert isinstance(document_mask(segments), torch.Tensor)  # FlexAttention has no CPU backward
    assert not isinstance(document_mask(segments, block_sparse=True), torch.Tensor)


def _run(model: Llama, input_ids, position_ids, mask) -> torch.Tensor:
    x = model.embed_tokens(input_ids)
    for layer in model.layers:
        x = layer(x, position_ids, mask)
    return model.lm_head(model.norm(x))


def _separately(model: Llama, input_ids, segments) -> torch.Tensor:
    """The independent truth: every document run through the model alone, positions from 0."""
    rows = []
    for ids, seg in zip(input_ids, segments):
        pieces = [model(ids[seg == s][None])[0] for s in seg.unique_consecutive()]
        rows.append(torch.cat(pieces))
    return torch.stack(rows)


def _positions(segments: torch.Tensor) -> torch.Tensor:
    start = torch.zeros_like(segments)
    start[:, 1:] = (segments[:, 1:] != segments[:, :-1]).long()
    index = torch.arange(segments.shape[1]).expand_as(segments)
    return index - torch.cummax(torch.where(start.bool(), index, 0), dim=1).values


@pytest.mark.parametrize("kv_heads", [4, 1])
def test_packed_model_equals_documents_run_alone(kv_heads):
    """Forward (block-sparse and dense) and backward (dense, what CPU training runs) of a packed batch
    equal running each document through the model on its own."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=256)
    model = Llama(config)
    model.init_weights(seed=1)
    generator = torch.Generator().manual_seed(7)
    segments = packed_segments(2, 200, 17, generator)
    input_ids = torch.randint(0, 97, (2, 200), generator=generator)
    positions = _positions(segments)
    weights = torch.randn(2, 200, 97, generator=generator)

    expected = _separately(model, input_ids, segments)
    (expected * weights).sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    dense = model(input_ids, position_ids=positions, segment_ids=segments)
    (dense * weights).sum().backward()
    torch.testing.assert_close(dense, expected, atol=1e-5, rtol=1e-5)
    for name, param in model.named_parameters():
        scale = expected_grads[name].abs().max().item()  # fp32 sums over 400 tokens: relative to the scale
        torch.testing.assert_close(param.grad, expected_grads[name], atol=2e-6 * scale, rtol=1e-5)
    with torch.no_grad():
        sparse = _run(model, input_ids, positions, document_block_mask(segments))
    torch.testing.assert_close(sparse, expected, atol=1e-5, rtol=1e-5)


def test_compiled_layer_takes_each_batch_mask_without_recompiling():
    """A decoder block compiled with fullgraph=True (as pytrain.train.parallelize does) runs FlexAttention
    inline with the block mask of each new batch, equal to the dense reference."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model = Llama(config)
    model.init_weights(seed=2)
    layer = model.layers[0]
    compiled = torch.compile(layer, fullgraph=True)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for i in range(2):
            segments = packed_segments(2, 256, 30 + 20 * i, generator)
            x = torch.randn(2, 256, 32, generator=generator)
            positions = _positions(segments)
            with torch._dynamo.config.patch(error_on_recompile=i > 0):
                actual = compiled(x, positions, document_block_mask(segments))
            torch.testing.assert_close(actual, layer(x, positions, document_causal_mask(segments)),
                                       atol=1e-5, rtol=1e-5)


def _largest_allocation(fn) -> int:
    """Bytes of the largest single CPU allocation made while `fn` runs (the profiler's allocator events)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = prof.profiler.kineto_results.events()
    return max(e.nbytes() for e in events if e.name() == "[memory]")


def test_block_sparse_path_allocates_nothing_of_size_seq_squared():
    """At seq 8192, building the block mask and running compiled FlexAttention allocates nothing near
    seq^2 bytes (the dense path's boolean mask alone is seq^2 bytes, which the same probe sees)."""
    seq = 8192
    generator = torch.Generator().manual_seed(0)
    segments = packed_segments(1, seq, 300, generator)
    q, k, v = qkv(1, 2, 1, seq, 16, generator)

    def block_sparse():
        return attention(q, k, v, document_block_mask(segments))

    def dense():
        return attention(q, k, v, document_causal_mask(segments))

    block_sparse()  # compile outside the measurement; each later call builds a new mask: no recompilation
    with torch._dynamo.config.patch(error_on_recompile=True):
        sparse_bytes, dense_bytes = _largest_allocation(block_sparse), _largest_allocation(dense)
        assert dense_bytes >= seq * seq, dense_bytes  # the probe sees the dense mask
        assert sparse_bytes <= 4 * seq * 2 * 16, sparse_bytes  # at most the output: 4 bytes x heads x seq x dim
        torch.testing.assert_close(block_sparse(), dense(), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not CUDA, reason="FlexAttention's backward runs on CUDA only")
@pytest.mark.parametrize("kv_heads", [8, 2, 1])
def test_flex_forward_backward_equal_dense_reference_on_cuda(kv_heads):
    generator = torch.Generator().manual_seed(kv_heads)
    segments = packed_segments(2, 1000, 60, generator).cuda()
    q, k, v = qkv(2, 8, kv_heads, 1000, 64, generator, device="cuda", grad=True)
    grad_out = torch.randn(2, 8, 1000, 64, generator=generator).cuda()
    outputs, grads = [], []
    for mask in (document_causal_mask(segments), document_block_mask(segments)):
        out = attention(q, k, v, mask)
        outputs.append(out)
        grads.append(torch.autograd.grad(out, (q, k, v), grad_out))
    torch.testing.assert_close(outputs[1], outputs[0], atol=2e-5, rtol=2e-5)
    for sparse, dense in zip(grads[1], grads[0]):
        torch.testing.assert_close(sparse, dense, atol=2e-4, rtol=2e-4)
