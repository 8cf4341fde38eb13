"""grouped_mm: the PyTorch reference against a per-row formula; the Triton kernel (through the interpreter on
CPU) against the float64 reference: outputs, dX and dW, odd sizes, empty groups, rows past the last group,
fp32 and bf16, NaN-poisoned outputs, opcheck, fullgraph compile, no host sync; bad arguments."""

import pytest
import torch

import pytrain.kernels.grouped_mm as kmod
from _kernel_checks import DEVICE, TRITON_OK, assert_close, host_syncs_forbidden, leaf64, poisoned, requires_triton
from pytrain.errors import PytrainError
from pytrain.ops import grouped_mm, grouped_mm_reference
from pytrain.ops.grouped_mm import torch_grouped_mm

# (rows, in, out, group ends): odd widths; empty groups first, inside and last; rows past the last end
CASES = {
    "odd": (150, 37, 45, [10, 10, 70, 71, 130]),
    "empty_ends": (97, 24, 19, [0, 0, 40, 97, 97]),
    "one_group": (5, 16, 8, [5]),
    "all_past": (9, 12, 7, [0, 0, 0]),
    "tiles": (300, 70, 130, [1, 64, 65, 200, 257, 299]),  # boundaries on and off the 64-row tiles
}


def problem(case, dtype, seed=0):
    rows, k, n, ends = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=gen).to(DEVICE, dtype).requires_grad_()
    w = (0.3 * torch.randn(len(ends), n, k, generator=gen)).to(DEVICE, dtype).requires_grad_()
    return x, w, torch.tensor(ends, device=DEVICE), gen


def per_row(x, w, ends):
    """Each row times the transpose of its group's matrix, one row at a time; zero outside every group."""
    out = []
    start = 0
    group_of = {}
    for g, end in enumerate(ends.tolist()):
        group_of.update(dict.fromkeys(range(start, end), g))
        start = end
    for r in range(x.shape[0]):
        out.append(x[r] @ w[group_of[r]].T if r in group_of else x.new_zeros(w.shape[1]))
    return torch.stack(out)


@pytest.mark.parametrize("case", list(CASES))
def test_reference_is_the_per_row_formula(case):
    x, w, ends, gen = problem(case, torch.float64)
    y = grouped_mm_reference(x, w, ends)
    expected = per_row(x, w, ends)
    torch.testing.assert_close(y, expected)
    dy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad(y, (x, w), dy, allow_unused=True, materialize_grads=True)
    expected_grads = (torch.autograd.grad(expected, (x, w), dy, allow_unused=True, materialize_grads=True)
                      if expected.requires_grad else (torch.zeros_like(x), torch.zeros_like(w)))  # no row in a group
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_triton_matches_float64_reference(case, dtype):
    x, w, ends, gen = problem(case, dtype, seed=1)
    with poisoned(kmod):
        y = grouped_mm(x, w, ends, backend="triton")
        dy = torch.randn(y.shape, generator=gen).to(DEVICE, dtype)
        dx, dw = torch.autograd.grad(y, (x, w), dy)
    x64, w64 = leaf64(x), leaf64(w)
    y64 = grouped_mm_reference(x64, w64, ends)
    dx64, dw64 = torch.autograd.grad(y64, (x64, w64), dy.double())
    assert y.dtype == dtype and dx.dtype == dtype and dw.dtype == dtype
    if y64.norm() == 0:  # every row outside the groups: exact zeros, no gradient
        assert not y.any() and not dx.any() and not dw.any()
        return
    assert_close(y, y64, dtype, "y")
    assert_close(dx, dx64, dtype, "dx")
    assert_close(dw, dw64, dtype, "dw")
    past = ends[-1].item()
    assert not y[past:].any() and not dx[past:].any()


@requires_triton
def test_expanded_gradient_and_strided_weight():
    """`y.sum().backward()` hands the kernel a stride-0 gradient; a transposed weight view is read in place."""
    x, w, ends, _ = problem("odd", torch.float32, seed=2)
    w_t = w.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()  # same values, other strides
    grouped_mm(x, w_t, ends, backend="triton").sum().backward()
    x64, w64 = leaf64(x), leaf64(w)
    grouped_mm_reference(x64, w64, ends).sum().backward()
    assert_close(x.grad, x64.grad, torch.float32, "dx")
    assert_close(w_t.grad, w64.grad, torch.float32, "dw")


@requires_triton
def test_opcheck_and_fullgraph_compile():
    x, w, ends, _ = problem("odd", torch.float32, seed=3)
    torch.library.opcheck(kmod.grouped_mm_fwd, (x, w, ends.to(torch.int32)))

    def layer(x, w, ends):
        return (grouped_mm(x, w, ends, backend="triton") ** 2).sum()

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    grads = torch.autograd.grad(compiled(x, w, ends), (x, w))
    expected = torch.autograd.grad(layer(x, w, ends), (x, w))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


@requires_triton
def test_no_host_sync(monkeypatch):
    """The offsets stay on the device: neither the kernel nor its wrapper reads them on the host."""
    x, w, ends, _ = problem("tiles", torch.float32, seed=4)
    with host_syncs_forbidden(monkeypatch):
        grouped_mm(x, w, ends, backend="triton").sum().backward()


def test_torch_grouped_mm_wrapper_keeps_the_contract():
    """The wrapper the CUDA path takes around torch._grouped_mm (bf16, sm90+), run here on PyTorch's CPU
    implementation where it exists: the reference's values, zeros and no gradient past the last group
    (PyTorch's own dX leaves those rows unwritten: the wrapper masks them; whether the garbage shows
    here depends on what the allocator hands back, so this is not a reliable check of that mask)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(150, 40, generator=gen).requires_grad_()  # widths a multiple of 16 bytes
    w = torch.randn(5, 48, 40, generator=gen).requires_grad_()
    ends = torch.tensor([10, 10, 70, 71, 130])
    try:
        y = torch_grouped_mm(x, w, ends)
    except (RuntimeError, NotImplementedError) as missing:
        pytest.skip(f"torch._grouped_mm does not run on this CPU build: {missing}")
    dy = torch.randn(y.shape, generator=gen)
    got = (y, *torch.autograd.grad(y, (x, w), dy))
    expected = grouped_mm_reference(x, w, ends)
    for a, b in zip(got, (expected, *torch.autograd.grad(expected, (x, w), dy))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not got[0][130:].any() and not got[1][130:].any()


@pytest.mark.parametrize("backend", ["torch"] + (["triton"] if TRITON_OK else []))
def test_bad_arguments_are_errors(backend):
    x, w, ends, _ = problem("odd", torch.float32)
    with pytest.raises(PytrainError, match=r"x \[rows, in\] and w \[groups, out, in\]"):
        grouped_mm(x, w.transpose(1, 2), ends, backend=backend)
    with pytest.raises(PytrainError, match="offsets must be integer"):
        grouped_mm(x, w, ends[:-1], backend=backend)
    with pytest.raises(PytrainError, match="cast one of them"):
        grouped_mm(x, w.double(), ends, backend=backend)


def test_reference_refuses_offsets_out_of_order():
    x, w, _, _ = problem("odd", torch.float32)
    with pytest.raises(PytrainError, match=r"offsets\[2\] = 5 must be non-decreasing"):
        grouped_mm_reference(x, w, torch.tensor([10, 10, 5, 71, 130]))
    with pytest.raises(PytrainError, match=r"offsets\[4\] = 151 must be non-decreasing and at most the 150 rows"):
        grouped_mm_reference(x, w, torch.tensor([10, 10, 70, 71, 151]))
