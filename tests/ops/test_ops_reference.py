"""The PyTorch references (what CPU training runs) against plain formulas, and the backend switch."""

import math

import pytest
import torch
import torch.nn.functional as F

import pytrain.ops as ops
from pytrain.errors import PytrainError
from pytrain.ops import apply_rope_reference, linear_cross_entropy_reference, rms_norm_reference, rope_table


def test_rms_norm_formula_and_modes():
    x = torch.randn(4, 7, 123, dtype=torch.float64)
    w = torch.randn(123, dtype=torch.float64)
    plain = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(rms_norm_reference(x, w, 1e-5), plain * w)
    torch.testing.assert_close(rms_norm_reference(x, w, 1e-5, mode="gemma"), plain * (1 + w))
    r = torch.randn_like(x)
    y, s = rms_norm_reference(x, w, 1e-5, residual=r)
    torch.testing.assert_close(s, x + r)
    torch.testing.assert_close(y, rms_norm_reference(x + r, w, 1e-5))


def test_rms_norm_casting_modes_bf16():
    x = torch.randn(3, 64).to(torch.bfloat16)
    w = torch.randn(64).to(torch.bfloat16)
    normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
    llama = rms_norm_reference(x, w)
    assert llama.dtype == torch.bfloat16
    assert torch.equal(llama, normed.to(torch.bfloat16) * w)  # cast first, then the bf16 multiply
    assert torch.equal(rms_norm_reference(x, w, mode="gemma"), (normed * (1 + w.float())).to(torch.bfloat16))


def test_rms_norm_rejects_bad_arguments():
    x = torch.randn(2, 8)
    with pytest.raises(PytrainError, match="mode"):
        rms_norm_reference(x, torch.ones(8), mode="t5")
    with pytest.raises(PytrainError, match="weight"):
        rms_norm_reference(x, torch.ones(7))


def _rope_complex(x, positions, theta):
    """RoPE as complex multiplication, half-split layout, angles computed directly in float64."""
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    angles = positions[..., None].double() * freqs  # [batch, seq, half]
    z = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(angles), angles)[:, :, None]
    return torch.cat([z.real, z.imag], dim=-1)


def test_rope_formula_gqa_and_packed_positions():
    q = torch.randn(2, 9, 4, 16, dtype=torch.float64)
    k = torch.randn(2, 9, 1, 16, dtype=torch.float64)
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1], list(range(9))])
    qr, kr = apply_rope_reference(q, k, pos, theta=1000.0)
    torch.testing.assert_close(qr, _rope_complex(q, pos, 1000.0), atol=1e-6, rtol=1e-6)  # fp32 tables
    torch.testing.assert_close(kr, _rope_complex(k, pos, 1000.0), atol=1e-6, rtol=1e-6)
    default = apply_rope_reference(q, k, theta=1000.0)
    torch.testing.assert_close(default[0], apply_rope_reference(q, k, pos[1:].expand(2, 9), theta=1000.0)[0])


def test_rope_preserves_norms_and_dtype():
    q = torch.randn(1, 5, 2, 8).to(torch.bfloat16)
    k = torch.randn(1, 5, 2, 8).to(torch.bfloat16)
    qr, kr = apply_rope_reference(q, k)
    assert qr.dtype == kr.dtype == torch.bfloat16
    torch.testing.assert_close(qr.float().norm(dim=-1), q.float().norm(dim=-1), atol=0.05, rtol=0.02)


def test_rope_table_cached_once_per_key():
    a = rope_table(32, 8, 10000.0, "cpu")
    assert rope_table(32, 8, 10000.0, "cpu") is a
    assert rope_table(32, 8, 500000.0, "cpu") is not a
    cos, sin = a
    assert cos.shape == (32, 4) and cos.dtype == torch.float32
    assert math.isclose(cos[3, 1].item(), math.cos(3 * 10000.0 ** (-2 / 8)), rel_tol=1e-6)
    assert math.isclose(sin[3, 1].item(), math.sin(3 * 10000.0 ** (-2 / 8)), rel_tol=1e-6)


def test_rope_rejects_mismatched_shapes():
    with pytest.raises(PytrainError, match="head_dim"):
        apply_rope_reference(torch.randn(1, 3, 2, 8), torch.randn(1, 3, 1, 6))
    with pytest.raises(PytrainError, match="position_ids"):
        apply_rope_reference(torch.randn(1, 3, 2, 8), torch.randn(1, 3, 1, 8), torch.zeros(1, 4, dtype=torch.long))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_linear_ce_matches_torch_cross_entropy(reduction, label_smoothing):
    h = torch.randn(13, 16, dtype=torch.float64)
    w = torch.randn(3001, 16, dtype=torch.float64)
    labels = torch.randint(0, 3001, (13,))
    labels[::4] = -100
    got = linear_cross_entropy_reference(h, w, labels, reduction=reduction, label_smoothing=label_smoothing)
    expected = F.cross_entropy(h @ w.T, labels, reduction=reduction, label_smoothing=label_smoothing)
    torch.testing.assert_close(got, expected)


def test_linear_ce_z_loss_and_softcap_by_hand():
    h = torch.randn(6, 8, dtype=torch.float64)
    w = torch.randn(50, 8, dtype=torch.float64)
    labels = torch.tensor([1, 2, -100, 4, 5, 49])
    loss, z = linear_cross_entropy_reference(h, w, labels, reduction="sum", z_loss=1e-2, softcap=3.0,
                                             return_z_loss=True)
    logits = 3.0 * torch.tanh((h @ w.T) / 3.0)
    keep = labels != -100
    lse = logits.logsumexp(-1)[keep]
    ce = lse - logits[keep].gather(1, labels[keep, None]).squeeze(1)
    torch.testing.assert_close(z, (1e-2 * lse**2).sum())
    torch.testing.assert_close(loss, (ce + 1e-2 * lse**2).sum())


def test_linear_ce_all_ignored_mean_is_zero_not_nan():
    h = torch.randn(4, 8, requires_grad=True)
    loss = linear_cross_entropy_reference(h, torch.randn(10, 8), torch.full((4,), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert not h.grad.any()


def test_linear_ce_rejects_bad_arguments():
    h, w = torch.randn(4, 8), torch.randn(10, 8)
    with pytest.raises(PytrainError, match="reduction"):
        linear_cross_entropy_reference(h, w, torch.zeros(4, dtype=torch.long), reduction="avg")
    with pytest.raises(PytrainError, match="int64"):
        linear_cross_entropy_reference(h, w, torch.zeros(4, dtype=torch.int32))
    with pytest.raises(PytrainError, match=r"\[N, H\]"):
        linear_cross_entropy_reference(h, torch.randn(10, 7), torch.zeros(4, dtype=torch.long))


def test_backend_switch(monkeypatch):
    x, w = torch.randn(2, 8), torch.randn(8)
    with pytest.raises(PytrainError, match='did you mean "triton"'):
        ops.set_backend("trition")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(PytrainError, match="TRITON_INTERPRET=1"):
        ops.rms_norm(x, w, backend="triton")
    try:
        ops.set_backend("triton")
        assert ops.get_backend() == "triton"
        with pytest.raises(PytrainError, match="needs CUDA tensors"):
            ops.rms_norm(x, w)
        assert torch.equal(ops.rms_norm(x, w, backend="torch"), rms_norm_reference(x, w))  # per call wins
    finally:
        ops.set_backend("auto")
    assert torch.equal(ops.rms_norm(x, w), rms_norm_reference(x, w))  # auto on CPU: the reference
    for tensor in (x, x.to("meta")):  # a misspelled per-call backend is refused on every device
        with pytest.raises(PytrainError, match='did you mean "triton"'):
            ops.swiglu(tensor, torch.ones(3, 8, device=tensor.device), torch.ones(3, 8, device=tensor.device),
                       backend="tirton")
