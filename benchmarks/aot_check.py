"""Ahead-of-time compile gate for the Triton kernels: no GPU needed.

    python benchmarks/aot_check.py [--arch 80 90] [--ops rms_norm rope linear_ce grouped_mm] [--json PATH] [--jit]

Runs the real launch wrappers (`kernels/*.py`'s `launch_*` functions, the bodies of the custom ops) on
meta tensors at the benchmark shapes of `bench_kernels.py` and `bench_moe.py` (grouped GEMM: the MoE
layers of 1b-7b-olmoe, 30b-a3b-qwen3_moe and 8x7b-mixtral), the 125m and 1b presets' shapes, and the
limits the wrappers accept (hidden sizes up to `MAX_HIDDEN`, fp32, the model's residual form, GPT-2's
odd vocabulary). Each kernel launch
is intercepted instead of run and handed to Triton's own argument binder, so signatures, constexprs and
alignment specialisations are exactly those the JIT would use. Every distinct variant is compiled with
`triton.compile` for each NVIDIA target (`GPUTarget("cuda", arch, 32)`), its PTX is run through the
ptxas shipped in the triton wheel with `-v` (registers, spill bytes), and the global loads/stores in
the PTX are counted (vector = `.v2`/`.v4`, 8 or 16 bytes per thread). Prints one table per target and
exits 1 on a compile error or any spill.

`--jit` (CUDA only) also launches every case for real on the GPU and adds the JIT-compiled kernels'
registers and spills as the driver reports them, beside the AOT figures for the device's architecture.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
# what one SM holds, for the occupancy column: A100 (sm_80) and H100/H200 (sm_90)
SM_LIMITS = {80: SimpleNamespace(regs_per_multiprocessor=65536, max_threads_per_multi_processor=2048,
                                 shared_memory_per_multiprocessor=164 * 1024),
             90: SimpleNamespace(regs_per_multiprocessor=65536, max_threads_per_multi_processor=2048,
                                 shared_memory_per_multiprocessor=228 * 1024)}


# ----------------------------------------------------------------------------- the cases
@dataclass
class Case:
    op: str
    config: str
    run: Callable[[str], None]  # device -> calls the launch wrappers once on tensors of that device


def _rms_norm_case(tokens, hidden, dtype, residual, gemma) -> Case:
    def run(device):
        from pytrain.kernels.rms_norm import launch_rms_norm_bwd, launch_rms_norm_fwd

        x = torch.empty(tokens, hidden, dtype=dtype, device=device)
        w = torch.empty(hidden, dtype=dtype, device=device)
        r = torch.empty_like(x) if residual else None
        _y, s, rstd = launch_rms_norm_fwd(x, w, r, 1e-6, gemma)
        launch_rms_norm_bwd(torch.empty_like(x), torch.empty_like(x) if residual else None,
                            s if residual else x, w, rstd, gemma)

    name = f"{str(dtype)[6:]} hidden={hidden}{' +residual' if residual else ''} {'gemma' if gemma else 'llama'}"
    return Case("rms_norm", name, run)


def _rope_case(tokens, seq, q_heads, kv_heads, head_dim, dtype, positions) -> Case:
    def run(device):
        from pytrain.kernels.rope import launch_rope

        batch = tokens // seq
        q = torch.empty(batch, seq, q_heads, head_dim, dtype=dtype, device=device)
        k = torch.empty(batch, seq, kv_heads, head_dim, dtype=dtype, device=device)
        cos = torch.zeros(seq, head_dim // 2, dtype=torch.float32, device=device)
        pos = torch.zeros(batch, seq, dtype=torch.int64, device=device) if positions else None
        for inverse in (False, True):  # forward, backward
            launch_rope(q, k, cos, cos, pos, inverse)

    name = (f"{str(dtype)[6:]} q={q_heads} kv={kv_heads} head_dim={head_dim}"
            f"{' +positions' if positions else ''}")
    return Case("rope", name, run)


def _linear_ce_case(tokens, hidden, vocab, dtype) -> Case:
    def run(device):
        from pytrain.kernels.linear_cross_entropy import launch_lce_bwd, launch_lce_fwd, launch_scale_cast

        h = torch.empty(tokens, hidden, dtype=dtype, device=device)
        w = torch.empty(vocab, hidden, dtype=dtype, device=device)
        labels = torch.zeros(tokens, dtype=torch.int64, device=device)
        # training ("mean", gradients in the forward), then the backward's scaling and casting
        _loss, _z, dh, dw32 = launch_lce_fwd(h, w, labels, -100, "mean", 0.0, 0.0, 0.0, True, True, 0)
        one = torch.ones(1, dtype=torch.float32, device=device)
        launch_scale_cast(dh, one, dtype)
        launch_scale_cast(dw32, one, dtype)
        launch_lce_fwd(h, w, labels, -100, "mean", 0.0, 0.0, 0.0, False, False, 0)  # evaluation: loss only
        launch_lce_bwd(h, w, labels, torch.ones(tokens, device=device), -100, 0.0, 0.0, 0.0, True, True, 0)

    return Case("linear_ce", f"{str(dtype)[6:]} hidden={hidden} vocab={vocab}", run)


def _grouped_mm_case(rows, hidden, width, experts, dtype, name) -> Case:
    def run(device):
        from pytrain.kernels.grouped_mm import launch_grouped_mm, launch_grouped_mm_bwd

        ends = torch.zeros(experts, dtype=torch.int32, device=device)
        for k, n in ((hidden, width), (width, hidden)):  # gate/up projections, then down
            x = torch.empty(rows, k, dtype=dtype, device=device)
            w = torch.empty(experts, n, k, dtype=dtype, device=device)
            y = launch_grouped_mm(x, w, ends)
            launch_grouped_mm_bwd(torch.empty_like(y), x, w, ends, True, True)

    return Case("grouped_mm", f"{str(dtype)[6:]} {name} hidden={hidden} width={width} experts={experts}", run)


def cases() -> list[Case]:
    """The benchmark shapes (from bench_kernels.py), the presets gpu_check.sh trains (125m, 1b; from the
    model config), and the limits the wrappers accept: read from the code, so they cannot drift."""
    sys.path.insert(0, str(HERE))
    from bench_kernels import _op_benches

    from pytrain.kernels.rms_norm import MAX_HIDDEN
    from pytrain.model import preset

    bf16, fp32 = torch.bfloat16, torch.float32
    benches = {b.name: b for b in _op_benches(quick=False)}
    models = [preset(name) for name in ("125m", "1b")]
    tokens = max(s["tokens"] for s in benches["rms_norm"].shapes)
    out = []
    hiddens = sorted({s["hidden"] for s in benches["rms_norm"].shapes} | {m.hidden_size for m in models})
    for hidden in hiddens:  # as benchmarked, and as the model calls it (residual form)
        out += [_rms_norm_case(tokens, hidden, bf16, False, False), _rms_norm_case(tokens, hidden, bf16, True, False)]
    hidden = hiddens[-1] * 2
    while hidden <= MAX_HIDDEN:  # larger rows, up to the largest the wrapper accepts
        out.append(_rms_norm_case(tokens // 4, hidden, bf16, True, False))
        hidden *= 2
    hidden = 2048
    while hidden <= MAX_HIDDEN:  # the most registers: fp32, gemma, residual gradient
        out.append(_rms_norm_case(tokens // 4, hidden, fp32, True, True))
        hidden *= 2
    for s in benches["rope"].shapes[:1]:
        shape = (s["tokens"], s["seq"], s["q_heads"], s["kv_heads"], s["head_dim"])
        out += [_rope_case(*shape, bf16, False), _rope_case(*shape, bf16, True), _rope_case(*shape, fp32, True)]
    for m in models:
        out.append(_rope_case(4096, 2048, m.num_attention_heads, m.num_key_value_heads, m.head_dim, bf16, True))
    ce_shapes = dict.fromkeys([(s["hidden"], s["vocab"]) for s in benches["linear_ce"].shapes]
                              + [(m.hidden_size, m.vocab_size) for m in models])
    out += [_linear_ce_case(4096, hidden, vocab, bf16) for hidden, vocab in ce_shapes]
    out += [_linear_ce_case(4096, 768, 50257, bf16),  # GPT-2's odd vocabulary
            _linear_ce_case(1024, 768, 50257, fp32)]
    from bench_moe import layer_shapes  # the MoE benchmark's layers (1b-7b-olmoe, 30b-a3b-qwen3_moe), Mixtral's

    layers = {**layer_shapes(), "mixtral": vars(preset("8x7b-mixtral"))}
    for name, m in layers.items():
        hidden, width = m.get("hidden", m.get("hidden_size")), m.get("width", m.get("intermediate_size"))
        experts, top_k = m.get("experts", m.get("num_experts")), m.get("top_k", m.get("num_experts_per_tok"))
        out.append(_grouped_mm_case(8192 * top_k, hidden, width, experts, bf16, name))
    out.append(_grouped_mm_case(4096, 2048, 1024, 64, fp32, "olmoe"))  # the most registers: fp32 tiles
    out.append(_grouped_mm_case(1000, 1000, 100, 8, bf16, "unaligned"))  # widths not multiples of 16
    return out


# ----------------------------------------------------------------------------- capturing launches
@dataclass
class Launch:
    kernel: object  # the triton JITFunction
    args: tuple
    kwargs: dict
    jit_kernel: object = None  # the CompiledKernel the JIT ran (--jit only)


@contextlib.contextmanager
def intercepted_launches(launch: bool):
    """Record every `kernel[grid](...)` call made inside; run it too only when `launch` (real CUDA tensors)."""
    from triton.runtime.jit import JITFunction

    real_run = JITFunction.run
    calls: list[Launch] = []

    def run(self, *args, grid, warmup, **kwargs):
        compiled = real_run(self, *args, grid=grid, warmup=warmup, **kwargs) if launch else None
        if not warmup:
            calls.append(Launch(self, args, dict(kwargs), compiled))
        return compiled

    JITFunction.run = run
    try:
        yield calls
    finally:
        JITFunction.run = real_run


# ----------------------------------------------------------------------------- compiling
@dataclass
class Row:
    op: str
    config: str
    kernel: str
    variant: str  # constexprs and launch options that select the compiled code
    arch: int
    registers: int | None = None
    spill_bytes: int | None = None  # spill stores + spill loads, per thread
    stack_bytes: int | None = None
    shared_bytes: int | None = None
    num_warps: int | None = None
    vector_loads: int | None = None
    scalar_loads: int | None = None
    vector_stores: int | None = None
    scalar_stores: int | None = None
    compile_s: float | None = None
    error: str | None = None
    blocks_per_sm: int | None = None  # resident blocks per SM from registers, warps and shared memory
    jit_registers: int | None = None
    jit_spills: int | None = None


def _source(launch: Launch, backend):
    """Triton's own binding of the launch's arguments: (ASTSource, options), as JITFunction.run builds them."""
    from triton.compiler import ASTSource
    from triton.runtime.jit import create_function_from_signature

    fn = launch.kernel
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(launch.kwargs, debug=launch.kwargs.get("debug", fn.debug) or False)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return ASTSource(fn, signature, constexprs, attrs), options, signature, constexprs, attrs


def _variant(options, signature, constexprs, attrs) -> str:
    names = list(signature)
    consts = " ".join(f"{names[path[0]]}={value}" for path, value in constexprs.items())
    pointer = next((t for t in signature.values() if t.startswith("*")), "")
    not_divisible = [names[path[0]] for path, value in attrs.items()  # by 16 (no alignment specialisation)
                     if signature[names[path[0]]] != "constexpr" and not value]
    text = f"{pointer[1:]} {consts} warps={options.num_warps}"
    return text + (f" not16={','.join(not_divisible)}" if not_divisible else "")


_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_GLOBAL_ACCESS = re.compile(r"\b(ld|st)\.global((?:\.[\w:]+)*)")


def compile_with_ptxas_log(src, target, options: dict):
    """`triton.compile` with Triton's own `ptxas -v` run (same binary and flags) logged and returned."""
    import io

    import triton
    from triton import knobs

    saved = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
    knobs.nvidia.dump_ptxas_log = knobs.compilation.always_compile = True  # a cache hit would run no ptxas
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=target, options=options)
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = saved
    return compiled, log.getvalue()


def ptxas_report(log: str) -> dict:
    """Registers, stack frame and spill bytes (per thread) from a `ptxas -v` log."""
    used, spill = _PTXAS_USED.search(log), _PTXAS_SPILL.search(log)
    if not used or not spill:
        raise RuntimeError(f"no resource usage in the ptxas log: {log.strip()[-300:]!r}")
    return {"registers": int(used.group(1)), "stack_bytes": int(spill.group(1)),
            "spill_bytes": int(spill.group(2)) + int(spill.group(3))}


def global_accesses(ptx: str) -> dict:
    """Static count of global loads and stores in the PTX, vector (.v2/.v4) or scalar."""
    counts = {"vector_loads": 0, "scalar_loads": 0, "vector_stores": 0, "scalar_stores": 0}
    for op, qualifiers in _GLOBAL_ACCESS.findall(ptx):
        vector = re.search(r"\.v[248]\b", qualifiers) is not None
        counts[f"{'vector' if vector else 'scalar'}_{'loads' if op == 'ld' else 'stores'}"] += 1
    return counts


def compile_launches(cases_launches: list[tuple[Case, list[Launch]]], arch: int, jit: bool) -> list[Row]:
    """One row per launch: compiled for `arch` (once per distinct variant); `jit`: with the JIT's figures."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    from pytrain.kernels._common import blocks_per_sm

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    rows, compiled_rows = [], {}
    for case, launches in cases_launches:
        for launch in launches:
            row = Row(case.op, case.config, launch.kernel.__name__, "", arch)
            try:
                src, options, signature, constexprs, attrs = _source(launch, backend)
                row.variant = _variant(options, signature, constexprs, attrs)
                key = (row.kernel, repr(signature), repr(constexprs), repr(attrs), repr(options))
                if key in compiled_rows:  # the same compiled code as an earlier launch: reuse its figures
                    same = compiled_rows[key]
                    row.__dict__.update({k: v for k, v in asdict(same).items() if k not in ("op", "config")})
                    rows.append(row)
                    continue
                compiled_rows[key] = row
                started = time.perf_counter()
                compiled, log = compile_with_ptxas_log(src, target, options.__dict__)
                row.compile_s = time.perf_counter() - started
                row.__dict__.update(ptxas_report(log), **global_accesses(compiled.asm["ptx"]))
                row.shared_bytes, row.num_warps = compiled.metadata.shared, compiled.metadata.num_warps
                if arch in SM_LIMITS:
                    row.blocks_per_sm = blocks_per_sm(row.registers, row.num_warps, row.shared_bytes, SM_LIMITS[arch])
            except Exception as e:  # noqa: BLE001 -- a compile error is a result of the gate, reported per row
                message = str(e).strip().splitlines()
                row.error = f"{type(e).__name__}: {message[0] if message else ''}"[:200]
            if jit and launch.jit_kernel is not None:
                launch.jit_kernel._init_handles()
                row.jit_registers, row.jit_spills = launch.jit_kernel.n_regs, launch.jit_kernel.n_spills
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- reporting
def table(rows: list[Row], jit: bool) -> str:
    head = ["op", "configuration", "kernel", "variant", "regs", "spill B", "smem B", "blocks/SM", "ld v/s", "st v/s"]
    head += ["JIT regs", "JIT spill"] if jit else []
    lines = [head]
    for r in rows:
        if r.error:
            lines.append([r.op, r.config, r.kernel, r.variant, "ERROR", r.error] + [""] * (len(head) - 6))
            continue
        line = [r.op, r.config, r.kernel.lstrip("_"), r.variant, str(r.registers), str(r.spill_bytes),
                str(r.shared_bytes), str(r.blocks_per_sm or ""), f"{r.vector_loads}/{r.scalar_loads}",
                f"{r.vector_stores}/{r.scalar_stores}"]
        if jit:
            line += [str(r.jit_registers), str(r.jit_spills)]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines if len(line) > i) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities (default 80 90)")
    parser.add_argument("--ops", nargs="+", default=["rms_norm", "rope", "linear_ce", "grouped_mm"],
                        choices=["rms_norm", "rope", "linear_ce", "grouped_mm"])
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--jit", action="store_true", help="CUDA only: launch each case and add the JIT's figures")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # real kernels for real targets, before pytrain.kernels is imported
    if args.jit and not torch.cuda.is_available():
        print("aot_check.py --jit needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    device = "cuda" if args.jit else "meta"
    captured = []
    for case in (c for c in cases() if c.op in args.ops):
        with intercepted_launches(launch=args.jit) as calls:
            case.run(device)
        captured.append((case, calls))
        if args.jit:
            torch.cuda.empty_cache()
    jit_arch = None
    if args.jit:
        major, minor = torch.cuda.get_device_capability()
        jit_arch = 10 * major + minor
        if jit_arch not in args.arch:
            args.arch.append(jit_arch)

    all_rows, failed = [], False
    for arch in args.arch:
        started = time.perf_counter()
        rows = compile_launches(captured, arch, jit=arch == jit_arch)
        seconds = time.perf_counter() - started
        print(f"\n## sm_{arch} (triton {triton.__version__}, compiled in {seconds:.1f} s)\n")
        print(table(rows, jit=arch == jit_arch))
        errors = [r for r in rows if r.error]
        spills = [r for r in rows if r.spill_bytes]
        for r in errors:
            print(f"FAIL sm_{arch} {r.op} [{r.config}] {r.kernel}: compile error: {r.error}")
        for r in spills:
            print(f"FAIL sm_{arch} {r.op} [{r.config}] {r.kernel}: spills {r.spill_bytes} bytes per thread")
        failed |= bool(errors or spills)
        all_rows += rows
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"triton": triton.__version__, "torch": torch.__version__,
                                         "rows": [asdict(r) for r in all_rows]}, indent=1) + "\n")
        print(f"wrote {args.json}")
    print("aot_check: " + ("FAILED (compile errors or spills above)" if failed else
                           f"OK: {len(all_rows)} kernel launches compiled, no spills"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
