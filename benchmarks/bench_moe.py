"""A mixture-of-experts layer's forward + backward with each grouped-matmul backend, each in a fresh process.

    python benchmarks/bench_moe.py                        # CUDA: both shapes, 8192 tokens, bf16
    python benchmarks/bench_moe.py --shapes olmoe --tokens 16384 --variants triton,torch_grouped_mm
    python benchmarks/bench_moe.py --dry-run              # CPU: tiny shape, correctness only (what CI runs)

The layer is pytrain.model.moe.MoE (router, sort by expert, three grouped matmuls, weighted combine),
dropless, at one layer of a realistic preset: "olmoe" (1b-7b-olmoe: hidden 2048, 64 experts of width
1024, 8 per token) and "qwen3" (30b-a3b-qwen3_moe: hidden 2048, 128 experts of 768, 8 per token), on
`--tokens` random tokens with random weights. Variants (pytrain.ops.grouped_mm's backends):

  reference         one matmul per expert (the CPU path, and the tests' oracle)
  triton            pytrain's Triton grouped GEMM (kernels/grouped_mm.py)
  torch_grouped_mm  torch._grouped_mm, where the device runs it (sm90+, bf16); "unavailable" elsewhere

Each variant runs in its own subprocess (clean allocator peak, compile and autotune caches). It first
checks its output and gradients (input, router, expert weights) against the reference on the same
inputs, then times forward + backward: median ms, tokens/s, the experts' matmul TFLOP/s (6 x tokens x
k x 3 x hidden x width), and on CUDA the peak memory allocated beyond the inputs. Prints a table and
writes moe.json and moe.md to --out.

--dry-run runs the same plumbing on the CPU at a tiny shape (reference, and Triton through the
interpreter): the agreement is checked, the times are labelled "correctness only" and mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ("reference", "triton", "torch_grouped_mm")
# one MoE layer of a preset (its hidden size, experts, width, top-k) at --tokens tokens
SHAPES = {"olmoe": "1b-7b-olmoe", "qwen3": "30b-a3b-qwen3_moe", "tiny": "tiny-moe"}
BACKEND = {"reference": "torch", "triton": "triton", "torch_grouped_mm": "auto"}


def layer_shapes(names=("olmoe", "qwen3")) -> dict[str, dict]:
    """name -> hidden, experts, width, top_k of the named preset's MoE layer (also aot_check.py's cases)."""
    from pytrain.model import preset

    out = {}
    for name in names:
        config = preset(SHAPES[name])
        out[name] = dict(preset=SHAPES[name], hidden=config.hidden_size, experts=config.num_experts,
                         width=config.expert_intermediate_size, top_k=config.num_experts_per_tok)
    return out


# ----------------------------------------------------------------------------- child
def child(args) -> dict:
    """Check and time one variant in this process."""
    import torch

    from pytrain import ops
    from pytrain.model import preset
    from pytrain.model.moe import MoE
    from pytrain.ops.grouped_mm import torch_grouped_mm_runs

    device = torch.device("cpu" if args.dry_run else "cuda")
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    shape = layer_shapes([args.shape])[args.shape]
    record = {"variant": args.child, "shape": args.shape, **shape, "tokens": args.tokens, "dtype": str(dtype)[6:]}
    generator = torch.Generator().manual_seed(0)
    layer = MoE(preset(shape["preset"]))
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * param.shape[-1] ** -0.5)
    layer = layer.to(device, dtype)
    x = torch.randn(args.tokens, shape["hidden"], generator=generator).to(device, dtype).requires_grad_()
    grad_out = torch.randn(args.tokens, shape["hidden"], generator=generator).to(device, dtype)
    if args.child == "torch_grouped_mm":
        probe = layer.experts.gate_proj
        if not torch_grouped_mm_runs(x, probe):
            return {**record, "error": "unavailable (torch._grouped_mm needs CUDA sm90+ and bf16 here)"}
    inputs = [x, layer.gate.weight, layer.experts.gate_proj, layer.experts.up_proj, layer.experts.down_proj]

    def run(backend):
        ops.set_backend(backend)
        out = layer(x)
        return (out, *torch.autograd.grad(out, inputs, grad_out))

    expected = run("torch")
    got = run(BACKEND[args.child])
    record["max_rel_error"] = max(float((g.float() - e.float()).norm() / e.float().norm().clamp(min=1e-30))
                                  for g, e in zip(got, expected))
    del expected, got

    def step():
        torch.autograd.grad(layer(x), inputs, grad_out)

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1e3)
    ms = statistics.median(times)
    flops = 6 * args.tokens * shape["top_k"] * 3 * shape["hidden"] * shape["width"]
    record.update(ms=ms, tokens_per_s=args.tokens / (ms / 1e3), expert_tflops=flops / (ms / 1e3) / 1e12)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        record["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return record


# ----------------------------------------------------------------------------- parent
def run_variant(args, shape: str, variant: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--shapes", shape,
               "--tokens", str(args.tokens), "--reps", str(args.reps), "--warmup", str(args.warmup)]
    env = dict(os.environ)
    if args.dry_run:
        command.append("--dry-run")
        env["TRITON_INTERPRET"] = "1" if variant == "triton" else "0"
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"variant": variant, "shape": shape, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(lines[-1])


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(records: list[dict], dry_run: bool) -> str:
    lines = ["| shape | variant | tokens | ms | tokens/s | expert TFLOP/s | peak MiB | max rel. error vs reference |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        label = f"{r['shape']} ({r.get('preset', '')})"
        if "error" in r:
            lines.append(f"| {label} | {r['variant']} | | {r['error']} | | | | |")
            continue
        lines.append(f"| {label} | {r['variant']} | {r['tokens']} | {_fmt(r['ms'], '.2f')} | "
                     f"{_fmt(r['tokens_per_s'], ',.0f')} | {_fmt(r['expert_tflops'], '.1f')} | "
                     f"{_fmt(r.get('peak_mib'), '.0f')} | {r['max_rel_error']:.1e} |")
    if dry_run:
        lines += ["", "CPU dry run: correctness only (the Triton variant runs in the interpreter); the times say "
                      "nothing about a GPU."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="olmoe,qwen3", help="comma-separated subset of olmoe, qwen3")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per forward (default 8192; dry run 64)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 20; dry run 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed repetitions first (default 3; dry run 1)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shape, correctness only")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.tokens = args.tokens or (64 if args.dry_run else 8192)
    args.reps = args.reps or (1 if args.dry_run else 20)
    args.warmup = (1 if args.dry_run else 3) if args.warmup is None else args.warmup
    if args.child:
        args.shape = args.shapes
        print(json.dumps(child(args)))
        return 0
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("bench_moe: needs a CUDA GPU (or --dry-run: CPU, tiny shape, correctness only)", file=sys.stderr)
        return 2
    shapes = ["tiny"] if args.dry_run else args.shapes.split(",")
    variants = [v for v in args.variants.split(",") if not (args.dry_run and v == "torch_grouped_mm")]
    records = []
    for shape in shapes:
        for variant in variants:
            record = run_variant(args, shape, variant)
            print(json.dumps(record), flush=True)
            records.append(record)
    meta = {"device": torch.cuda.get_device_name() if not args.dry_run else "cpu", "torch": torch.__version__,
            "dry_run": args.dry_run, "tokens": args.tokens, "reps": args.reps}
    text = table(records, args.dry_run)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "moe.json").write_text(json.dumps({"meta": meta, "records": records}, indent=2) + "\n")
    (args.out / "moe.md").write_text(f"# MoE layer ({meta['device']}, torch {meta['torch']})\n\n{text}\n")
    print(f"wrote {args.out / 'moe.json'} and moe.md")
    bad = [r for r in records if "error" not in r and r["max_rel_error"] > (1e-4 if args.dry_run else 2e-2)]
    failed = [r for r in records if "error" in r and not r["error"].startswith("unavailable")]
    for r in bad:
        print(f"bench_moe: {r['shape']} {r['variant']} differs from the reference by {r['max_rel_error']:.1e}",
              file=sys.stderr)
    return 1 if bad or failed else 0


if __name__ == "__main__":
    sys.exit(main())
