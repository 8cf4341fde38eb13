"""Triton RoPE against the float64 reference: q and k outputs and gradients, GQA, positions, layouts."""

import pytest
import torch

import pytrain.kernels.rope as kmod
from _kernel_checks import DEVICE, assert_close, leaf64, poisoned, requires_triton
from pytrain.ops import apply_rope, apply_rope_reference, rope_table

pytestmark = requires_triton


def _qk(batch, seq, n_q, n_kv, head_dim, dtype, transposed, gen):
    """q, k as [batch, seq, heads, head_dim]; `transposed` builds them as views of [batch, heads, seq, dim]."""
    def make(heads):
        if transposed:
            t = torch.randn(batch, heads, seq, head_dim, generator=gen).to(DEVICE, dtype).transpose(1, 2)
        else:
            t = torch.randn(batch, seq, heads, head_dim, generator=gen).to(DEVICE, dtype)
        return t.requires_grad_()
    return make(n_q), make(n_kv)


def _packed_positions(batch, seq):
    """Two documents per row: positions restart at 0 where the second begins."""
    cut = seq // 3
    return torch.cat([torch.arange(cut), torch.arange(seq - cut)]).repeat(batch, 1).to(DEVICE)


def _check(dtype, n_q, n_kv, head_dim, positions, transposed, seed=0, batch=2, seq=13):
    gen = torch.Generator().manual_seed(seed)
    q, k = _qk(batch, seq, n_q, n_kv, head_dim, dtype, transposed, gen)
    pos = _packed_positions(batch, seq) if positions == "packed" else None
    with poisoned(kmod):
        qo, ko = apply_rope(q, k, pos, theta=500.0, backend="triton")
        gq = torch.randn(qo.shape, generator=gen).to(DEVICE, dtype)
        gk = torch.randn(ko.shape, generator=gen).to(DEVICE, dtype)
        dq, dk = torch.autograd.grad((qo, ko), (q, k), (gq, gk))
    q64, k64 = leaf64(q), leaf64(k)
    rq, rk = apply_rope_reference(q64, k64, pos, theta=500.0)
    rdq, rdk = torch.autograd.grad((rq, rk), (q64, k64), (gq.double(), gk.double()))
    for name, a, b in [("q", qo, rq), ("k", ko, rk), ("dq", dq, rdq), ("dk", dk, rdk)]:
        assert a.dtype == dtype
        assert_close(a, b, dtype, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("positions", [None, "packed"])
@pytest.mark.parametrize("transposed", [False, True])
def test_matches_float64_reference_gqa_one_kv_head(dtype, positions, transposed):
    _check(dtype, n_q=4, n_kv=1, head_dim=18, positions=positions, transposed=transposed)


@pytest.mark.parametrize("n_q,n_kv,head_dim", [(6, 3, 8), (5, 5, 2), (32, 8, 128)])
def test_head_layouts(n_q, n_kv, head_dim):
    _check(torch.float32, n_q, n_kv, head_dim, "packed", transposed=False, seed=1, batch=1, seq=5)


def test_fp16():
    _check(torch.float16, 3, 1, 10, "packed", transposed=True, seed=2)


def test_inputs_untouched_and_inverse_restores():
    q = torch.randn(2, 7, 3, 16, device=DEVICE)
    k = torch.randn(2, 7, 1, 16, device=DEVICE)
    q0, k0 = q.clone(), k.clone()
    cos, sin = rope_table(7, 16, 10000.0, q.device)
    qo, ko = kmod.rope_op(q, k, cos, sin, None, False)
    assert torch.equal(q, q0) and torch.equal(k, k0)
    qb, kb = kmod.rope_op(qo, ko, cos, sin, None, True)
    torch.testing.assert_close(qb, q0)
    torch.testing.assert_close(kb, k0)


def test_max_position_for_decoding():
    """Decoding one token at position 40 with a 1-token query: the table must cover position 40."""
    q = torch.randn(1, 1, 2, 8, device=DEVICE)
    k = torch.randn(1, 1, 1, 8, device=DEVICE)
    pos = torch.tensor([[40]], device=DEVICE)
    got = apply_rope(q, k, pos, max_position=64, backend="triton")
    ref = apply_rope_reference(q.double(), k.double(), pos, max_position=64)
    for a, b in zip(got, ref):
        assert_close(a, b, torch.float32, "decode")


def test_opcheck_and_fullgraph_compile():
    q = torch.randn(2, 5, 4, 8, device=DEVICE, requires_grad=True)
    k = torch.randn(2, 5, 2, 8, device=DEVICE, requires_grad=True)
    pos = _packed_positions(2, 5)
    cos, sin = rope_table(5, 8, 10000.0, q.device)
    torch.library.opcheck(kmod.rope_op, (q, k, cos, sin, pos, False))
    torch.library.opcheck(kmod.rope_op, (q, k, cos, sin, None, True))

    def attn_input(q, k, pos):
        qr, kr = apply_rope(q, k, pos, backend="triton")
        return (qr.transpose(1, 2).sum(2) * 2).sum() + kr.square().sum()

    compiled = torch.compile(attn_input, fullgraph=True, backend="aot_eager")
    grads = torch.autograd.grad(compiled(q, k, pos), (q, k))
    expected = torch.autograd.grad(attn_input(q, k, pos), (q, k))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)
