"""Benchmark pytrain's fused kernels against the eager reference, torch.compile(reference) and Liger-Kernel.

    python benchmarks/bench_kernels.py [--ops rms_norm rope linear_ce] [--quick] [--out benchmarks/results]

For each op, at realistic shapes and in bf16: median time of the forward, the backward alone and the
full pass, peak memory beyond the inputs, achieved GB/s (algorithmic bytes) against a measured device
copy bandwidth, and for the fused linear cross-entropy the ratio to the matmul floor (6*N*H*V FLOPs at
the measured bf16 matmul rate). Providers must first agree numerically at a small shape. Writes
kernels.json, kernels.md and kernels.png to --out. Needs a CUDA GPU (exits 2 otherwise).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

BF16 = torch.bfloat16
DEVICE = "cuda"
PROVIDERS = ("pytrain", "eager", "compiled", "liger")


class Unavailable(Exception):
    """The provider can't run here (Liger not installed)."""


def _liger(name: str):
    try:
        import liger_kernel.transformers.functional as liger
    except ImportError as e:
        raise Unavailable("liger_kernel not installed") from e
    return getattr(liger, name)


_compiled: dict[Callable, Callable] = {}


def _compile(fn):
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=False)
    return _compiled[fn]


def _first(out):
    return out if isinstance(out, torch.Tensor) else out[0]


@dataclass
class OpBench:
    name: str
    shapes: list[dict]
    small: dict  # the shape where providers are checked against each other
    build: Callable  # (provider, shape) -> (forward, inputs)
    bytes_moved: Callable | None = None  # (shape, mode) -> bytes
    full_flops: Callable | None = None  # shape -> FLOPs of the full pass


def _rms_norm(provider, s):
    from pytrain import ops

    x = torch.randn(s["tokens"], s["hidden"], device=DEVICE, dtype=BF16, requires_grad=True)
    w = (1 + 0.1 * torch.randn(s["hidden"], device=DEVICE)).to(BF16).requires_grad_()
    fn = {"pytrain": lambda: ops.rms_norm(x, w, backend="triton"),
          "eager": lambda: ops.rms_norm_reference(x, w),
          "compiled": lambda: _compile(ops.rms_norm_reference)(x, w)}.get(provider)
    if provider == "liger":
        liger_rms_norm = _liger("liger_rms_norm")
        fn = lambda: liger_rms_norm(x, w, 1e-6, offset=0.0, casting_mode="llama")  # noqa: E731
    return fn, (x, w)


def _rms_norm_bytes(s, mode):
    rows = s["tokens"] * s["hidden"] * 2
    return {"fwd": 2 * rows, "bwd": 3 * rows, "full": 5 * rows}[mode]


def _rope(provider, s):
    from pytrain import ops

    b, n = s["tokens"] // s["seq"], s["seq"]
    q = torch.randn(b, n, s["q_heads"], s["head_dim"], device=DEVICE, dtype=BF16, requires_grad=True)
    k = torch.randn(b, n, s["kv_heads"], s["head_dim"], device=DEVICE, dtype=BF16, requires_grad=True)
    fn = {"pytrain": lambda: ops.apply_rope(q, k, backend="triton"),
          "eager": lambda: ops.apply_rope_reference(q, k),
          "compiled": lambda: _compile(ops.apply_rope_reference)(q, k)}.get(provider)
    if provider == "liger":
        liger_rope = _liger("liger_rope")
        cos, sin = ops.rope_table(n, s["head_dim"], 10000.0, q.device)
        cos, sin = (torch.cat([t, t], dim=-1)[None].to(BF16) for t in (cos, sin))  # HF layout [1, seq, dim]
        # Liger takes and returns [batch, heads, seq, dim] views of the same [batch, seq, heads, dim] storage
        fn = lambda: tuple(t.transpose(1, 2) for t in liger_rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin))  # noqa: E731
    return fn, (q, k)


def _rope_bytes(s, mode):
    once = 2 * s["tokens"] * (s["q_heads"] + s["kv_heads"]) * s["head_dim"] * 2  # read + write, bf16
    return 2 * once if mode == "full" else once


def _linear_ce(provider, s):
    from pytrain import ops

    h = torch.randn(s["tokens"], s["hidden"], device=DEVICE, dtype=BF16, requires_grad=True)
    w = (0.02 * torch.randn(s["vocab"], s["hidden"], device=DEVICE)).to(BF16).requires_grad_()
    labels = torch.randint(0, s["vocab"], (s["tokens"],), device=DEVICE)
    labels[::20] = -100
    fn = {"pytrain": lambda: ops.linear_cross_entropy(h, w, labels, backend="triton"),
          "eager": lambda: ops.linear_cross_entropy_reference(h, w, labels),
          "compiled": lambda: _compile(ops.linear_cross_entropy_reference)(h, w, labels)}.get(provider)
    if provider == "liger":
        liger_flce = _liger("liger_fused_linear_cross_entropy")
        fn = lambda: _first(liger_flce(h, w, labels))  # noqa: E731
    return fn, (h, w)


def _op_benches(quick: bool) -> list[OpBench]:
    def grid(**axes):
        shapes = [{}]
        for key, values in axes.items():
            shapes = [dict(s, **{key: v}) for s in shapes for v in values]
        return shapes[:1] if quick else shapes

    rope_fixed = dict(seq=4096, q_heads=32, kv_heads=8, head_dim=128)
    return [
        OpBench("rms_norm", grid(tokens=[4096, 16384, 32768], hidden=[2048, 4096, 8192]),
                dict(tokens=37, hidden=123), _rms_norm, bytes_moved=_rms_norm_bytes),
        OpBench("rope", [dict(rope_fixed, tokens=t) for t in ([4096] if quick else [4096, 16384, 32768])],
                dict(tokens=26, seq=13, q_heads=4, kv_heads=1, head_dim=64), _rope, bytes_moved=_rope_bytes),
        OpBench("linear_ce", [dict(s, hidden=h, vocab=v) for s in grid(tokens=[4096, 16384, 32768])
                              for h, v in ([(4096, 32000)] if quick else [(4096, 32000), (4096, 128256), (8192, 128256)])],
                dict(tokens=37, hidden=256, vocab=32003), _linear_ce, full_flops=lambda s: 6 * s["tokens"] * s["hidden"] * s["vocab"]),
    ]


def _shape_name(shape: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items())


def _agreement(bench: OpBench) -> dict[str, float | str]:
    """Relative error of each provider's outputs and gradients against the eager reference (fp32 math)."""
    def run(provider):
        torch.manual_seed(0)
        forward, inputs = bench.build(provider, bench.small)
        outs = forward()
        outs = outs if isinstance(outs, tuple) else (outs,)
        grads = torch.autograd.grad(outs, inputs, [torch.ones_like(o) for o in outs])
        return [t.float() for t in outs + grads]

    expected = run("eager")
    result = {}
    for provider in PROVIDERS:
        try:
            got = run(provider)
            result[provider] = max(((a - b).norm() / b.norm().clamp(min=1e-30)).item() for a, b in zip(got, expected))
        except Unavailable as e:
            result[provider] = str(e)
    return result


def _measure(bench: OpBench, meta: dict, records: list, Record) -> None:
    from _harness import time_modes

    for shape in bench.shapes:
        for provider in PROVIDERS:
            name = _shape_name(shape)
            try:
                forward, inputs = bench.build(provider, shape)
                timings = time_modes(forward, inputs)
            except Unavailable as e:
                records.extend(Record(bench.name, name, provider, m, error=str(e)) for m in ("fwd", "bwd", "full"))
                continue
            except torch.cuda.OutOfMemoryError:
                records.extend(Record(bench.name, name, provider, m, error="OOM") for m in ("fwd", "bwd", "full"))
                continue
            finally:
                forward = inputs = None
                torch.cuda.empty_cache()
            for mode, (ms, peak) in timings.items():
                r = Record(bench.name, name, provider, mode, ms=ms, peak_mib=peak)
                if bench.bytes_moved:
                    r.gbps = bench.bytes_moved(shape, mode) / ms / 1e6
                    r.bw_fraction = r.gbps / meta["copy_gbps"]
                if bench.full_flops and mode == "full":
                    r.floor_ratio = ms / (bench.full_flops(shape) / (meta["matmul_tflops"] * 1e9))
                records.append(r)
            print(f"{bench.name:10s} {name:55s} {provider:9s} " +
                  " ".join(f"{m}={t:.3f}ms" for m, (t, _) in timings.items()), flush=True)


def _goals(records) -> list[str]:
    """The issue's targets, checked shape by shape: PASS/FAIL lines (nothing when data is missing)."""
    index = {(r.op, r.shape, r.provider, r.mode): r for r in records if r.ms is not None}
    lines = []
    for (op, shape, provider, mode), r in index.items():
        if provider != "pytrain":
            continue
        if op in ("rms_norm", "rope"):
            others = {p: index.get((op, shape, p, mode)) for p in ("liger", "compiled")}
            beaten = [p for p, o in others.items() if o is not None and o.ms <= r.ms]
            ok = r.bw_fraction >= 0.85 and not beaten
            lines.append(f"{'PASS' if ok else 'FAIL'} {op} {shape} {mode}: {r.bw_fraction:.0%} of copy bandwidth"
                         + (f"; not faster than {', '.join(beaten)}" if beaten else ""))
        elif op == "linear_ce" and mode == "full":
            liger = index.get((op, shape, "liger", mode))
            mem_ok = liger is None or r.peak_mib <= liger.peak_mib
            ok = r.floor_ratio <= 1.3 and mem_ok
            lines.append(f"{'PASS' if ok else 'FAIL'} {op} {shape}: {r.floor_ratio:.2f}x matmul floor, peak "
                         f"{r.peak_mib:.0f} MiB" + (f" vs Liger {liger.peak_mib:.0f} MiB" if liger else ""))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="+", default=["rms_norm", "rope", "linear_ce"],
                        choices=["rms_norm", "rope", "linear_ce"])
    parser.add_argument("--quick", action="store_true", help="first shape of each op only")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kernels.py needs a CUDA GPU: the numbers are GPU timings (nothing was measured)",
              file=sys.stderr)
        return 2
    import triton

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _harness import Record, copy_bandwidth_gbps, markdown, matmul_tflops, plot, write_json

    torch._dynamo.config.recompile_limit = 64  # one compiled reference per shape
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "copy_gbps": copy_bandwidth_gbps(), "matmul_tflops": matmul_tflops(), "agreement": {},
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"{meta['device']}: copy {meta['copy_gbps']:.0f} GB/s, bf16 matmul {meta['matmul_tflops']:.0f} TFLOP/s")
    records = []
    for bench in (b for b in _op_benches(args.quick) if b.name in args.ops):
        meta["agreement"][bench.name] = agree = _agreement(bench)
        print(f"{bench.name}: max relative error vs eager reference {agree}")
        bad = {p: e for p, e in agree.items() if isinstance(e, float) and not e < 2e-2}
        if bad:
            print(f"{bench.name}: providers disagree with the reference {bad}; not timing them", file=sys.stderr)
            return 1
        _measure(bench, meta, records, Record)
    goals = _goals(records)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "kernels.json", meta, records)
    (args.out / "kernels.md").write_text(markdown(meta, records, goals))
    plotted = plot(args.out / "kernels.png", records)
    print("\n".join(goals))
    print(f"wrote {args.out}/kernels.json, kernels.md" + (", kernels.png" if plotted else " (no matplotlib: no plot)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
