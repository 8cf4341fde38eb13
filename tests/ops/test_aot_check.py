"""The AOT compile gate's readers of PTX and ptxas output (the compiling itself runs in CI as a script)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import aot_check  # noqa: E402

PTX = """
	@%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
	@%p2 ld.global.L1::evict_last.v2.b32 { %r5, %r6 }, [ %rd2 + 0 ];
	ld.global.b16 { %rs1 }, [ %rd3 + 0 ];
	@%p3 ld.global.nc.b64 %rd9, [ %rd4 + 0 ];
	ld.shared.v4.b32 { %r7, %r8, %r9, %r10 }, [ %r11 + 0 ];
	@%p4 st.global.v4.b32 [ %rd5 + 0 ], { %r1, %r2, %r3, %r4 };
	st.global.b32 [ %rd6 + 0 ], { %r12 };
"""


def test_global_accesses_counts_vector_and_scalar():
    assert aot_check.global_accesses(PTX) == {"vector_loads": 2, "scalar_loads": 2, "vector_stores": 1,
                                              "scalar_stores": 1}


def test_ptxas_report_reads_registers_and_spills():
    log = ("ptxas info    : Compiling entry function '_k' for 'sm_90a'\n"
           "ptxas info    : Function properties for _k\n"
           "    16 bytes stack frame, 12 bytes spill stores, 8 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 392 bytes cmem[0]\n")
    assert aot_check.ptxas_report(log) == {"registers": 255, "stack_bytes": 16, "spill_bytes": 20}
    with pytest.raises(RuntimeError):
        aot_check.ptxas_report("ptxas fatal: something else")
