"""Timing, memory and reporting helpers for the benchmark scripts (CUDA only)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from triton.testing import do_bench

MODES = ("fwd", "bwd", "full")


@dataclass
class Record:
    op: str
    shape: str
    provider: str
    mode: str
    ms: float | None = None
    peak_mib: float | None = None  # memory allocated beyond the inputs during one call
    gbps: float | None = None  # algorithmic bytes moved / time
    bw_fraction: float | None = None  # gbps / measured device copy bandwidth
    floor_ratio: float | None = None  # time / matmul floor (linear cross-entropy)
    error: str | None = None
    extra: dict = field(default_factory=dict)


def median_ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def copy_bandwidth_gbps(nbytes: int = 2**30) -> float:
    """Device-to-device copy of `nbytes`: bytes read + written per second, in GB/s."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    return 2 * nbytes / ms / 1e6


def matmul_tflops(n: int = 8192, dtype=torch.bfloat16) -> float:
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    ms = median_ms(lambda: a @ b)
    return 2 * n**3 / ms / 1e9


def peak_extra_mib(fn) -> float:
    """Peak memory allocated by one call of `fn` beyond what was allocated before it, in MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def time_modes(forward, inputs) -> dict[str, tuple[float, float]]:
    """{mode: (median ms, peak extra MiB)} for the forward, the backward alone, and both."""
    def outputs():
        out = forward()
        return out if isinstance(out, tuple) else (out,)

    def full():
        outs = outputs()
        torch.autograd.grad(outs, inputs, [torch.ones_like(o) for o in outs])

    results = {"fwd": (median_ms(forward), peak_extra_mib(forward))}
    outs = outputs()
    grads = [torch.randn_like(o) for o in outs]

    def backward():
        torch.autograd.grad(outs, inputs, grads, retain_graph=True)

    results["bwd"] = (median_ms(backward), peak_extra_mib(backward))
    del outs, grads
    results["full"] = (median_ms(full), peak_extra_mib(full))
    return results


def write_json(path: Path, meta: dict, records: list[Record]) -> None:
    path.write_text(json.dumps({"meta": meta, "records": [asdict(r) for r in records]}, indent=2))


def _fmt(value, spec):
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def markdown(meta: dict, records: list[Record], goals: list[str]) -> str:
    lines = [f"# Kernel benchmarks ({meta['device']})", "",
             f"torch {meta['torch']}, triton {meta['triton']}; measured copy bandwidth "
             f"{meta['copy_gbps']:.0f} GB/s, bf16 matmul {meta['matmul_tflops']:.0f} TFLOP/s. "
             "Times are medians (`triton.testing.do_bench`); peak = memory allocated beyond the inputs.", ""]
    for op in dict.fromkeys(r.op for r in records):
        lines += [f"## {op}", "", "| shape | mode | provider | ms | GB/s | % copy BW | x matmul floor | peak MiB |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in (r for r in records if r.op == op):
            ms = r.error or _fmt(r.ms, ".3f")
            pct = _fmt(r.bw_fraction * 100 if r.bw_fraction is not None else None, ".0f")
            lines.append(f"| {r.shape} | {r.mode} | {r.provider} | {ms} | {_fmt(r.gbps, '.0f')} | {pct} | "
                         f"{_fmt(r.floor_ratio, '.2f')} | {_fmt(r.peak_mib, '.0f')} |")
        lines.append("")
    lines += ["## Goals", ""] + [f"- {g}" for g in goals] + [""]
    return "\n".join(lines)


def plot(path: Path, records: list[Record]) -> bool:
    """Full-pass time per shape and provider, one panel per op. False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ops = list(dict.fromkeys(r.op for r in records))
    fig, axes = plt.subplots(len(ops), 1, figsize=(11, 3.6 * len(ops)), squeeze=False)
    for ax, op in zip(axes[:, 0], ops):
        rows = [r for r in records if r.op == op and r.mode == "full" and r.ms is not None]
        shapes = list(dict.fromkeys(r.shape for r in rows))
        providers = list(dict.fromkeys(r.provider for r in rows))
        width = 0.8 / max(len(providers), 1)
        for i, prov in enumerate(providers):
            ms = {r.shape: r.ms for r in rows if r.provider == prov}
            xs = [j + i * width for j, s in enumerate(shapes) if s in ms]
            ax.bar(xs, [ms[s] for s in shapes if s in ms], width, label=prov)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes, fontsize=7)
        ax.set_ylabel("full pass, ms")
        ax.set_title(op)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
