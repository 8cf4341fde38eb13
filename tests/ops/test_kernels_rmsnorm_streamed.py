"""RMSNorm for long rows (streamed in column blocks) and the backward's occupancy-sized grid."""

from types import SimpleNamespace

import pytest
import torch

import pytrain.kernels.rms_norm as kmod
from _kernel_checks import requires_triton
from _rms_norm_checks import check_rms_norm
from pytrain.kernels._common import blocks_per_sm


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
    check_rms_norm((2, 19, 123), dtype, mode, with_residual, seed=11)  # 123 columns: 4 blocks, the last partial


@requires_triton
def test_streamed_rows_at_the_largest_hidden_size():
    """65536 columns (MAX_HIDDEN) with the real thresholds: the path that used to spill registers."""
    check_rms_norm((3, kmod.MAX_HIDDEN), torch.float32, "gemma", True, seed=12)


@requires_triton
def test_streamed_backward_with_more_programs_than_rows(short_resident_rows):
    check_rms_norm((1, 200), torch.float32, "llama", True, seed=13)


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
