"""Training throughput: tokens/s, MFU and peak memory of the trainer's step, kernels on/off x compile on/off.

    python benchmarks/bench_train.py                                  # CUDA: 1b preset, seq 2048, bf16
    python benchmarks/bench_train.py --preset 8b --micro-batch 1 --ac full
    python benchmarks/bench_train.py --variants kernels+compile,torch  # a subset

Each variant runs in its own fresh subprocess (clean allocator peak, compile caches and kernel
choice) and times the exact step `pytrain train` runs: FSDP2 on one rank with the mixed-precision
policy, `forward_backward` (fused loss, gradient clipping) and fused AdamW, one host sync per step,
on random tokens (the data loader is not part of the measurement). MFU counts 6N + attention FLOPs
per token (`ModelConfig.flops_per_token`) against the device's dense bf16 peak from
`pytrain.train.metrics`, or --peak-tflops.

Variants: "kernels" runs pytrain's Triton kernels (RMSNorm, RoPE, fused linear cross-entropy),
"torch" the PyTorch reference ops (eager PyTorch, logits materialised); "+compile" compiles each
block with torch.compile. Without CUDA the Triton variants are skipped and the default is the tiny
preset: a smoke run that checks the script works, not a performance figure, and labelled as such.
Goals (H100, 1b, seq 2048, bf16): MFU >= 45%, and kernels+compile faster than eager torch ops.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
VARIANTS = ("kernels+compile", "kernels", "torch+compile", "torch")
GOAL_MFU = 0.45


# ----------------------------------------------------------------------------- child
def child(args) -> dict:
    """Time one variant in this process; return its measurements."""
    import torch

    from pytrain import ops
    from pytrain.config import OptimSection
    from pytrain.model import preset
    from pytrain.train.distributed import init_distributed, shutdown
    from pytrain.train.metrics import device_peak_tflops, mfu
    from pytrain.train.optim import build_optimizer
    from pytrain.train.parallelize import build_model
    from pytrain.train.step import forward_backward

    kernels, compile = args.child.startswith("kernels"), args.child.endswith("+compile")
    d = init_distributed(args.device)
    try:
        ops.set_backend("triton" if kernels else "torch")
        config = preset(args.preset)
        model = build_model(config, d, dtype=args.dtype, ac_every=args.ac, compile=compile)
        optimizer = build_optimizer(model, OptimSection(), d.device)
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, config.vocab_size, (args.micro_batch, args.seq_len + 1), generator=generator)
        batch = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}

        def step() -> float:
            loss, norm, _ = forward_backward(model, [batch], document_masking=False, grad_clip=1.0, device=d.device)
            loss_value, _ = torch.stack([loss, norm]).tolist()  # the trainer's per-step host sync
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss_value

        for _ in range(args.warmup):  # compilation, autotuning, allocator warm-up
            step()
        if d.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        if d.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        tokens_per_s = args.steps * args.micro_batch * args.seq_len / elapsed
        peak, peak_note = device_peak_tflops(d.device, args.peak_tflops)
        memory = torch.cuda.max_memory_allocated() / 2**30 if d.device.type == "cuda" else None
        return {"variant": args.child, "tokens_per_s": tokens_per_s, "step_ms": 1000 * elapsed / args.steps,
                "mfu": mfu(tokens_per_s, config.flops_per_token(args.seq_len), peak), "peak_memory_gib": memory,
                "final_loss": loss, "peak_tflops": peak, "peak_note": peak_note}
    finally:
        shutdown()


# ----------------------------------------------------------------------------- parent
def run_variant(args, variant: str) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--device", args.device, "--preset", args.preset,
               "--seq-len", str(args.seq_len), "--micro-batch", str(args.micro_batch), "--dtype", args.dtype,
               "--ac", str(args.ac), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.peak_tflops:
        command += ["--peak-tflops", str(args.peak_tflops)]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"variant": variant, "error": reason}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def device_description(device: str) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    return f"CPU, {os.cpu_count()} cores (torch {torch.__version__}): smoke run, not a performance figure"


def format_row(row: dict) -> str:
    if "skipped" in row:
        return f"{row['variant']:<17} skipped: {row['skipped']}"
    if "error" in row:
        return f"{row['variant']:<17} failed: {row['error']}"
    mfu = "n/a" if row["mfu"] is None else f"{row['mfu']:.1%}"
    memory = "n/a" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.1f} GiB"
    return (f"{row['variant']:<17} {row['tokens_per_s']:>12,.0f} {mfu:>7} {memory:>11} {row['step_ms']:>9.1f}"
            f"   loss {row['final_loss']:.3f}")


def goals(args, rows: dict) -> list[str]:
    lines = []
    best = rows.get("kernels+compile", {})
    if args.preset == "1b" and args.seq_len == 2048 and args.dtype == "bf16" and best.get("mfu") is not None:
        verdict = "PASS" if best["mfu"] >= GOAL_MFU else "FAIL"
        lines.append(f"goal MFU >= {GOAL_MFU:.0%} (1b, seq 2048, bf16, kernels+compile): {best['mfu']:.1%} {verdict}")
    eager = rows.get("torch", {})
    if "tokens_per_s" in best and "tokens_per_s" in eager:
        ratio = best["tokens_per_s"] / eager["tokens_per_s"]
        lines.append(f"goal kernels+compile faster than eager torch ops: x{ratio:.2f} {'PASS' if ratio > 1 else 'FAIL'}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="model preset (default: 1b on CUDA, tiny on CPU)")
    parser.add_argument("--seq-len", type=int, default=None, help="default: 2048 on CUDA, 256 on CPU")
    parser.add_argument("--micro-batch", type=int, default=None, help="sequences per step (default: 4 on CUDA, 8 on CPU)")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--ac", type=int, default=0, help="activation checkpointing: every k-th block (0: none)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on CUDA, 5 on CPU)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the device's peak for MFU")
    parser.add_argument("--json", type=Path, default=RESULTS / "bench_train.json")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device == "cuda"
    args.preset = args.preset or ("1b" if gpu else "tiny")
    args.seq_len = args.seq_len or (2048 if gpu else 256)
    args.micro_batch = args.micro_batch or (4 if gpu else 8)
    args.dtype = args.dtype or ("bf16" if gpu else "fp32")
    args.steps = args.steps or (20 if gpu else 5)
    if args.child:
        print(json.dumps(child(args)))
        return 0

    from pytrain.model import preset

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    config = preset(args.preset)
    ac = f"every {args.ac} block(s)" if args.ac else "none"
    print(f"bench_train: preset {args.preset} ({config.num_params() / 1e6:,.1f}M parameters), seq {args.seq_len}, "
          f"micro-batch {args.micro_batch}, {args.dtype}, activation checkpointing {ac}")
    print(f"device: {device_description(args.device)}")
    print(f"{'variant':<17} {'tokens/s':>12} {'MFU':>7} {'peak mem':>11} {'step ms':>9}", flush=True)
    rows: dict[str, dict] = {}
    for variant in variants:
        if variant.startswith("kernels") and not gpu:
            rows[variant] = {"variant": variant, "skipped": "the Triton kernels need CUDA"}
        else:
            rows[variant] = run_variant(args, variant)
        print(format_row(rows[variant]), flush=True)
    measured = [r for r in rows.values() if "peak_note" in r]
    if measured and measured[0]["peak_tflops"]:
        print(f"MFU against {measured[0]['peak_note']}")
    elif measured:
        print("MFU: n/a, the device's peak is unknown (pass --peak-tflops)")
    checks = goals(args, rows)
    for line in checks:
        print(line)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"device": device_description(args.device), "preset": args.preset, "params": config.num_params(),
              "flops_per_token": config.flops_per_token(args.seq_len), "seq_len": args.seq_len,
              "micro_batch": args.micro_batch, "dtype": args.dtype, "ac_every": args.ac, "steps": args.steps,
              "warmup": args.warmup, "loadavg": os.getloadavg(), "results": list(rows.values()), "goals": checks}
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
