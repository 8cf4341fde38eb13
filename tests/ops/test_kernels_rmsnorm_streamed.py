"""RMSNorm for long rows (streamed in column blocks) and the backward's occupancy-sized grid."""

from types import SimpleNamespace

import pytest
import torch

import pytrain.kernels.rms_norm as kmod
from _kernel_checks import DEVICE, assert_close, leaf64, poisoned, requires_triton
from pytrain.kernels._common import blocks_per_sm
from pytrain.ops import rms_norm, rms_norm_reference


def _check(shape, dtype, mode, with_residual, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(DEVICE, dtype).requires_grad_()
    w = (1.0 + 0.3 * torch.randn(shape[-1], generator=gen)).to(DEVICE, dtype).requires_grad_()
    r = torch.randn(shape, generator=gen).to(DEVICE, dtype).requires_grad_() if with_residual else None
    inputs = [x, w] + ([r] if with_residual else [])
    with poisoned(kmod):
        out = rms_norm(x, w, 1e-6, residual=r, mode=mode, backend="triton")
        outs = out if with_residual else (out,)
        grads_out = [torch.randn(o.shape, generator=gen).to(DEVICE, dtype) for o in outs]
        grads = torch.autograd.grad(outs, inputs, grads_out)
    ref_inputs = [leaf64(t) for t in inputs]
    refs = rms_norm_reference(ref_inputs[0], ref_inputs[1], 1e-6, residual=ref_inputs[2] if with_residual else None,
                              mode=mode)
    refs = refs if with_residual else (refs,)
    ref_grads = torch.autograd.grad(refs, ref_inputs, [g.double() for g in grads_out])
    for name, a, b in zip(["y", "sum"], outs, refs):
        assert_close(a, b, dtype, name)
    for name, a, b in zip(["dx", "dw", "dresidual"], grads, ref_grads):
        assert_close(a, b, dtype, name)


@pytest.fixture
def short_resident_rows(monkeypatch):
    """Stream every row longer than 64 columns, 32 columns per step, so small tests cross many blocks."""
    monkeypatch.setattr(kmod, "RESIDENT_MAX", 64)
    monkeypatch.setattr(kmod, "COLUMN_BLOCK", 32)


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["llama", "gemma"])
@pytest.mark.parametrize("with_residual", [False, True])
def test_streamed_rows_match_float64_reference(short_resident_rows, dtype, mode, with_residual):
    _check((2, 19, 123), dtype, mode, with_residual, seed=11)  # 123 columns: 4 blocks, the last partial


@requires_triton
def test_streamed_rows_at_the_largest_hidden_size():
    """65536 columns (MAX_HIDDEN) with the real thresholds: the path that used to spill registers."""
    _check((3, kmod.MAX_HIDDEN), torch.float32, "gemma", True, seed=12)


@requires_triton
def test_streamed_backward_with_more_programs_than_rows(short_resident_rows):
    _check((1, 200), torch.float32, "llama", True, seed=13)


def test_config_switches_to_streaming_above_the_threshold():
    assert kmod._config(kmod.RESIDENT_MAX)[0] == kmod.RESIDENT_MAX
    assert kmod._config(kmod.RESIDENT_MAX + 1)[0] == kmod.COLUMN_BLOCK
    with pytest.raises(ValueError):
        kmod._config(kmod.MAX_HIDDEN + 1)


H100 = SimpleNamespace(regs_per_multiprocessor=65536, max_threads_per_multi_processor=2048,
                       shared_memory_per_multiprocessor=228 * 1024)


@pytest.mark.parametrize("regs,warps,shared,expected", [
    (128, 16, 0, 1),       # the old backward: 128 registers x 512 threads fill the register file
    (57, 16, 16384, 2),    # 57 -> 64 per thread after rounding: 2 blocks of 512 threads
    (48, 8, 8192, 5),      # 48 x 256 = 12288 registers per block: 5 fit in 65536
    (32, 4, 0, 16),        # small blocks: 2048 threads per SM / 128 = 16
    (16, 1, 64 * 1024, 3), # shared memory limits: 228 KiB / 64 KiB
])
def test_blocks_per_sm_follows_the_occupancy_calculation(regs, warps, shared, expected):
    assert blocks_per_sm(regs, warps, shared, H100) == expected
