"""Training throughput: tokens/s, MFU and peak memory of the trainer's step, kernels on/off x compile on/off;
and (--vs-minimal) the whole `pytrain train` process against a minimal single-file GPT loop.

    python benchmarks/bench_train.py                                  # CUDA: 1b preset, seq 2048, bf16
    python benchmarks/bench_train.py --preset 8b --micro-batch 1 --ac full
    python benchmarks/bench_train.py --variants kernels+compile,torch  # a subset
    python benchmarks/bench_train.py --vs-minimal [--steps 2000] [--repeat 3]   # CPU, one thread

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

--vs-minimal times whole processes, start-up, set-up, evaluation and the final checkpoint included, on
one CPU thread: `pytrain train` against benchmarks/minimal_gpt.py (nanoGPT's train.py in miniature) on
the same packed data (the standard library's docstrings, a 512-token BPE), the same shapes (4 layers,
128 wide, 4 heads, context 64, batch 12; pytrain's SwiGLU 344 wide to match the GPT's 4x MLP in
parameters) and the same steps, learning rate schedule, validation (every 250 steps, 20 batches) and
logging (every step). The two run in turn, --repeat pairs; the ratio is taken pair by pair (a machine
whose speed drifts moves both). Goal: pytrain's wall time at most the minimal loop's.
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
MINIMAL_SHAPE = {"hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 4, "num_attention_heads": 4,
                 "num_key_value_heads": 4, "max_position_embeddings": 64}
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


# ----------------------------------------------------------------------------- --vs-minimal
def _minimal_data(root: Path) -> Path:
    """The standard library's docstrings, a 512-token byte-level BPE, packed with 5% held out."""
    from pytrain.data.corpus import stdlib_documents, write_jsonl
    from pytrain.data.pack import PackOptions, pack
    from pytrain.tokenizer.train import train_tokenizer

    documents = stdlib_documents()
    write_jsonl(root / "corpus.jsonl", documents)
    tokenizer = train_tokenizer(documents, root / "tokenizer.json", 512)
    pack([root / "corpus.jsonl"], tokenizer=tokenizer, out=root / "data",
         options=PackOptions(val_fraction=0.05, progress=False))
    return root / "data"


def _timed(command: list[str], env: dict) -> tuple[float, float, str]:
    """(wall s, CPU s of the child, its output) of one whole process."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, proc.stdout + proc.stderr


def model_steps() -> dict:
    """CPU seconds (this thread) of one forward + backward of each model alone, 12 x 64 random tokens, at
    each model's initial weights, interleaved; pytrain's also with every op on the PyTorch reference (backend
    "torch": what the CPU kernels save)."""
    import statistics

    import torch

    sys.path.insert(0, str(HERE))
    from minimal_gpt import GPT

    from pytrain import ops
    from pytrain.model import preset
    from pytrain.model.families import build_model

    torch.set_num_threads(1)
    llama = build_model(preset("tiny", vocab_size=512, **MINIMAL_SHAPE))
    llama.init_weights(0)  # as the trainer initialises it (torch's default init is far from a trained model's)
    gpt = GPT(512, 64, 4, 128, 4)
    tokens = torch.randint(0, 512, (12, 65))
    inputs, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def with_backend(name: str) -> None:
        ops.set_backend(name)
        try:
            llama(inputs, labels, reduction="sum").backward()
        finally:
            ops.set_backend("auto")

    steps = {"pytrain": lambda: with_backend("auto"), "pytrain_reference_ops": lambda: with_backend("torch"),
             "minimal": lambda: gpt(inputs, labels).backward()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(33):
        for name, step in steps.items():
            started = time.thread_time()
            step()
            if i >= 3:
                times[name].append(time.thread_time() - started)
    return {f"{name}_model_step_s": statistics.median(values) for name, values in times.items()}


def vs_minimal(args) -> int:
    import statistics
    import tempfile

    import yaml

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = _minimal_data(root)
        config = {"model": {"preset": "tiny", **MINIMAL_SHAPE}, "data": {"path": str(data), "seq_len": 64},
                  "optim": {"lr": 1e-3}, "schedule": {"warmup_steps": 100},
                  "train": {"steps": args.steps, "batch_size": 12, "eval_every": 250, "eval_max_batches": 20},
                  "checkpoint": {"every": 0}, "logging": {"every": 1, "progress": "lines", "tensorboard": False}}
        (root / "run.yaml").write_text(yaml.safe_dump(config))
        pytrain = [sys.executable, "-m", "pytrain", "train", "--config", str(root / "run.yaml")]
        minimal = [sys.executable, str(HERE / "minimal_gpt.py"), str(data), "--steps", str(args.steps),
                   "--warmup", "100", "--out", str(root / "minimal.pt")]
        print(f"bench_train --vs-minimal: {args.steps} steps of 12 x 64 tokens, one thread, {args.repeat} pair(s); "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        fixed = {"pytrain_fixed_cpu_s": _timed([*pytrain, f"train.run_dir={root / 'one'}", "train.steps=1",
                                                "schedule.warmup_steps=0"], env)[1],
                 "minimal_fixed_cpu_s": _timed([*minimal[:4], "1", *minimal[5:]], env)[1]}
        model = json.loads(_timed([sys.executable, __file__, "--model-steps"], env)[2].splitlines()[-1])
        pairs = []
        for i in range(args.repeat):
            run_dir = root / f"run{i}"
            a = _timed([*pytrain, f"train.run_dir={run_dir}"], env)
            b = _timed(minimal, env)
            rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            pairs.append({"pytrain_wall_s": a[0], "pytrain_cpu_s": a[1], "minimal_wall_s": b[0], "minimal_cpu_s": b[1],
                          "pytrain_val_loss": [r["val_loss"] for r in rows if "val_loss" in r][-1],
                          "minimal_val_loss": float(b[2].split("val loss ")[-1].split()[0])})
            print(f"pair {i + 1}: pytrain {a[0]:.1f} s ({a[1]:.1f} s CPU), minimal {b[0]:.1f} s ({b[1]:.1f} s CPU)",
                  flush=True)
    median = {key: statistics.median(pair[key] for pair in pairs) for key in pairs[0]}
    wall_ratio = statistics.median(pair["pytrain_wall_s"] / pair["minimal_wall_s"] for pair in pairs)
    cpu_ratio = statistics.median(pair["pytrain_cpu_s"] / pair["minimal_cpu_s"] for pair in pairs)
    print("| process | wall (median) | CPU (median) | CPU per step | of which the model's forward + backward | "
          "the rest of the step | start-up, set-up, end (CPU) | final validation loss |")
    print("|---|---|---|---|---|---|---|---|")
    for who in ("pytrain", "minimal"):
        per_step = (median[who + "_cpu_s"] - fixed[who + "_fixed_cpu_s"]) / (args.steps - 1)
        median[who + "_cpu_per_step_s"] = per_step
        model_step = model[who + "_model_step_s"]
        print(f"| {who} | {median[who + '_wall_s']:.1f} s | {median[who + '_cpu_s']:.1f} s | {per_step * 1e3:.1f} ms | "
              f"{model_step * 1e3:.1f} ms | {(per_step - model_step) * 1e3:.1f} ms | "
              f"{fixed[who + '_fixed_cpu_s']:.1f} s | {median[who + '_val_loss']:.3f} |")
    print(f"model forward + backward alone: pytrain {model['pytrain_model_step_s'] * 1e3:.1f} ms (with the PyTorch "
          f"reference ops: {model['pytrain_reference_ops_model_step_s'] * 1e3:.1f} ms), minimal "
          f"{model['minimal_model_step_s'] * 1e3:.1f} ms")
    verdict = "PASS" if wall_ratio <= 1.0 else "FAIL"
    goal = f"goal: pytrain wall <= minimal: x{wall_ratio:.2f} (CPU x{cpu_ratio:.2f}) {verdict}"
    print(goal)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    out = args.json.with_name("bench_train_vs_minimal.json")
    out.write_text(json.dumps({"steps": args.steps, "pairs": pairs, "median": median, **fixed, **model,
                               "wall_ratio": wall_ratio,
                               "cpu_ratio": cpu_ratio, "loadavg": os.getloadavg(), "goal": goal}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


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
    parser.add_argument("--vs-minimal", action="store_true",
                        help="whole-process wall time of `pytrain train` against benchmarks/minimal_gpt.py (CPU)")
    parser.add_argument("--repeat", type=int, default=3, help="--vs-minimal: pairs of runs")
    parser.add_argument("--model-steps", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model_steps:
        print(json.dumps(model_steps()))
        return 0
    if args.vs_minimal:
        args.steps = args.steps or 2000
        return vs_minimal(args)

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
