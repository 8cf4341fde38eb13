"""AdamW against Muon: steps (and wall time) to AdamW's final validation loss, and what a step costs.

    python benchmarks/bench_optim.py                      # 0.8M-parameter model, 600 steps of 8 x 128, LR sweeps
    python benchmarks/bench_optim.py --adamw-lrs 3e-4 1e-3 3e-3 1e-2   # one more LR: only that one trains
    python benchmarks/bench_optim.py --skip-training --cost-presets 125m 1b   # step cost only (CUDA)

Training: the same model (a Llama of ~0.8M parameters: hidden 128, 4 blocks, byte-level vocabulary of
256) from the same initial weights, on the same batches of the demo corpus's text (Python's own
documentation, pytrain.data.corpus.stdlib_documents, as UTF-8 bytes; the last 10% held out), through
the trainer's own step (pytrain.train.step.TrainStep, one rank, fp32, gradient clipping 1.0)
and schedule (cosine, 2% warmup), once per optimizer and learning rate. Each optimizer's best LR is the
one with the lowest final validation loss; the target is AdamW's best final validation loss, and the
figure is the first evaluation at which Muon's best run reaches it (evaluations every --eval-every
steps, so steps-to-target is resolved to that). Steps do not depend on the machine's load; wall times
do: they are labelled with the load average measured during the run.

Step cost: optimizer.step() alone (median of --repeat) and the optimizer's state in bytes per parameter
for each --cost-presets model, on one rank; peak memory of a step beyond the memory before it on CUDA
(torch.cuda.max_memory_allocated). Prints tables and writes optim.json; each finished training run is
also appended to optim_runs.jsonl, and read back instead of trained again when its settings match.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

BENCH_MODEL = dict(vocab_size=256, hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=4, max_position_embeddings=128, tie_word_embeddings=True)


# ----------------------------------------------------------------------------- data
def corpus_bytes(max_files: int | None):
    """The demo corpus as one uint8 tensor of UTF-8 bytes (documents separated by a blank line)."""
    import torch

    from pytrain.data.corpus import stdlib_documents

    text = "\n\n".join(stdlib_documents(max_files=max_files)).encode("utf-8")
    return torch.frombuffer(bytearray(text), dtype=torch.uint8).long()


def batches(tokens, count: int, batch: int, seq_len: int, seed: int):
    """`count` batches of random windows of `tokens` (the same ones for every run with the same seed)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        starts = torch.randint(0, len(tokens) - seq_len - 1, (batch,), generator=generator)
        windows = torch.stack([tokens[s:s + seq_len + 1] for s in starts.tolist()])
        yield {"input_ids": windows[:, :-1], "labels": windows[:, 1:]}


# ----------------------------------------------------------------------------- training
def train_run(name: str, lr: float, args, d, train_tokens, val_batches) -> dict:
    """One run: validation loss every args.eval_every steps, training wall time (evaluations excluded)."""
    from pytrain.config import OptimSection
    from pytrain.model.config import preset
    from pytrain.train.optim import build_optimizer
    from pytrain.train.parallelize import build_model
    from pytrain.train.schedule import lr_at
    from pytrain.train.step import TrainStep

    config = preset("tiny", **BENCH_MODEL)
    model = build_model(config, d, dtype="fp32", seed=0)
    optimizer = build_optimizer(model, OptimSection(name=name, lr=lr), d.device)
    step_fn = TrainStep(model, optimizer, dtype="fp32", grad_clip=1.0, document_masking=False, device=d.device)
    warmup = max(1, round(0.02 * args.steps))
    curve, train_s, load_before = [], 0.0, os.getloadavg()[0]
    step_timer = _StepTimer(optimizer)
    for step, batch in enumerate(batches(train_tokens, args.steps, args.batch, args.seq_len, seed=1), start=1):
        started = time.perf_counter()
        result = step_fn([batch], lr_at(step, peak=lr, total=args.steps, warmup=warmup))
        train_s += time.perf_counter() - started
        if not math.isfinite(result.loss):
            break
        if step % args.eval_every == 0 or step == args.steps:
            curve.append({"step": step, "val_loss": validation_loss(model, val_batches, d.device),
                          "train_loss": result.loss, "train_s": train_s})
            if step % 100 == 0:
                print(f"    {name} lr {lr:g} step {step}: val loss {curve[-1]['val_loss']:.4f} ({train_s:.0f} s)",
                      flush=True)
    return {"optimizer": name, "lr": lr, "params": config.num_params(), "curve": curve,
            "final_val_loss": curve[-1]["val_loss"] if curve else math.inf, "train_s": train_s,
            "optimizer_step_s": step_timer.total_s, "load_avg": (load_before + os.getloadavg()[0]) / 2}


class _StepTimer:
    """Wall time spent inside optimizer.step() (a hook pair around it)."""

    def __init__(self, optimizer):
        self.total_s, self._started = 0.0, None
        optimizer.register_step_pre_hook(lambda *_: self._start())
        optimizer.register_step_post_hook(lambda *_: self._stop())

    def _start(self):
        self._started = time.perf_counter()

    def _stop(self):
        self.total_s += time.perf_counter() - self._started


def validation_loss(model, val_batches, device) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        model.eval()
        for batch in val_batches:
            labels = batch["labels"].to(device)
            total += float(model(input_ids=batch["input_ids"].to(device), labels=labels, reduction="sum"))
            count += labels.numel()
        model.train()
    return total / count


def steps_to(curve: list[dict], target: float) -> dict | None:
    """The first evaluation at or below `target`."""
    return next((point for point in curve if point["val_loss"] <= target), None)


RUN_SETTINGS = ("steps", "batch", "seq_len", "eval_every", "val_batches", "max_files")


def training(args, d) -> dict:
    """Every run of the sweep (finished runs with the same settings are read from the runs file, so a sweep
    can be extended by one learning rate without training the others again)."""
    tokens = corpus_bytes(args.max_files)
    split = int(len(tokens) * 0.9)
    train_tokens, val_tokens = tokens[:split], tokens[split:]
    val_batches = list(batches(val_tokens, args.val_batches, args.batch, args.seq_len, seed=2))
    settings = {key: getattr(args, key) for key in RUN_SETTINGS}
    runs_file = Path(args.out) / "optim_runs.jsonl"
    done = [json.loads(line) for line in runs_file.read_text().splitlines()] if runs_file.is_file() else []
    runs = []
    for name, lrs in (("adamw", args.adamw_lrs), ("muon", args.muon_lrs)):
        for lr in lrs:
            run = next((r for r in done if (r["optimizer"], r["lr"], r["settings"]) == (name, lr, settings)), None)
            reused = run is not None
            if not reused:
                run = {**train_run(name, lr, args, d, train_tokens, val_batches), "settings": settings}
                runs_file.parent.mkdir(parents=True, exist_ok=True)
                with open(runs_file, "a") as handle:
                    handle.write(json.dumps(run) + "\n")
            runs.append(run)
            print(f"  {name:5s} lr {lr:<7g} final val loss {run['final_val_loss']:.4f}  train {run['train_s']:.1f} s "
                  f"(optimizer {run['optimizer_step_s']:.1f} s, load {run['load_avg']:.1f})"
                  + (f" (from {runs_file})" if reused else ""), flush=True)
    best = {name: min((r for r in runs if r["optimizer"] == name), key=lambda r: r["final_val_loss"])
            for name in ("adamw", "muon")}
    target = best["adamw"]["final_val_loss"]
    reached = {name: steps_to(run["curve"], target) for name, run in best.items()}
    summary = {"target_val_loss": target, "train_tokens": len(train_tokens), "val_tokens": args.val_batches * args.batch
               * args.seq_len, "tokens_per_step": args.batch * args.seq_len}
    for name, run in best.items():
        point = reached[name]
        summary[name] = {"best_lr": run["lr"], "final_val_loss": run["final_val_loss"],
                         "steps_to_target": point["step"] if point else None,
                         "train_s_to_target": point["train_s"] if point else None,
                         "train_s": run["train_s"], "optimizer_step_s": run["optimizer_step_s"],
                         "load_avg": run["load_avg"]}
    if summary["muon"]["steps_to_target"]:
        summary["muon_steps_fraction"] = summary["muon"]["steps_to_target"] / summary["adamw"]["steps_to_target"]
    return {"runs": runs, "summary": summary}


# ----------------------------------------------------------------------------- step cost
def step_cost(preset_name: str, name: str, args, d) -> dict:
    import torch

    from pytrain.config import OptimSection
    from pytrain.model.config import preset
    from pytrain.train.optim import build_optimizer
    from pytrain.train.parallelize import build_model
    from pytrain.train.step import _create_optimizer_state

    config = preset("tiny", **BENCH_MODEL) if preset_name == "bench" else preset(preset_name)
    model = build_model(config, d, dtype="fp32", seed=0)
    optimizer = build_optimizer(model, OptimSection(name=name, lr=1e-4), d.device)
    _create_optimizer_state(optimizer)
    generator = torch.Generator(device=d.device).manual_seed(0)
    for p in model.parameters():
        p.grad = _like(p, torch.randn(p.shape, generator=generator, device=d.device).mul_(1e-3))
    cuda = d.device.type == "cuda"
    times = []
    optimizer.step()  # warm-up (compiles on CUDA)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    for _ in range(args.repeat):
        started = time.perf_counter()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    params = sum(p.numel() for p in model.parameters())
    state_bytes = sum(_local(t).numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                      if torch.is_tensor(t) and t.dim() > 0)
    return {"preset": preset_name, "optimizer": name, "params": params, "step_ms": 1e3 * statistics.median(times),
            "state_bytes_per_param": state_bytes / params,
            "peak_mib": (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None}


def _local(tensor):
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _like(param, grad):
    """A full gradient as the (sharded) parameter's gradient."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        return distribute_tensor(grad, param.device_mesh, param.placements, src_data_rank=None)
    return grad


# ----------------------------------------------------------------------------- report
def print_report(result: dict) -> None:
    if "training" in result:
        s = result["training"]["summary"]
        print(f"\ntarget: AdamW's best final validation loss {s['target_val_loss']:.4f} "
              f"({result['config']['steps']} steps of {s['tokens_per_step']} tokens)")
        print(f"{'optimizer':10s} {'best lr':>8s} {'final val':>10s} {'steps to target':>16s} {'train s to target':>18s} "
              f"{'train s':>8s} {'optim s':>8s} {'load':>5s}")
        for name in ("adamw", "muon"):
            r = s[name]
            steps = r["steps_to_target"] if r["steps_to_target"] else "not reached"
            wall = f"{r['train_s_to_target']:.1f}" if r["train_s_to_target"] else "-"
            print(f"{name:10s} {r['best_lr']:>8g} {r['final_val_loss']:>10.4f} {steps!s:>16s} {wall:>18s} "
                  f"{r['train_s']:>8.1f} {r['optimizer_step_s']:>8.1f} {r['load_avg']:>5.1f}")
        if "muon_steps_fraction" in s:
            print(f"Muon reaches AdamW's final validation loss in {100 * s['muon_steps_fraction']:.0f}% of AdamW's steps "
                  "(goal: <= 75%); wall times are on a shared machine (load average beside them)")
    if result.get("cost"):
        print(f"\n{'model':8s} {'params':>9s} {'optimizer':10s} {'step ms':>9s} {'state B/param':>14s} {'peak MiB':>9s}")
        for r in result["cost"]:
            peak = f"{r['peak_mib']:.1f}" if r["peak_mib"] is not None else "-"
            print(f"{r['preset']:8s} {r['params'] / 1e6:>8.2f}M {r['optimizer']:10s} {r['step_ms']:>9.2f} "
                  f"{r['state_bytes_per_param']:>14.2f} {peak:>9s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--val-batches", type=int, default=8)
    parser.add_argument("--max-files", type=int, default=None, help="stdlib files for the corpus (default: all)")
    parser.add_argument("--adamw-lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3])
    parser.add_argument("--muon-lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2])
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--cost-presets", nargs="*", default=["tiny", "bench"],
                        help="models whose optimizer step is timed: presets, or 'bench' (the training model)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    import torch

    from pytrain.train.distributed import init_distributed, shutdown

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    d = init_distributed(args.device)
    try:
        result = {"config": vars(args), "device": torch.cuda.get_device_name() if d.device.type == "cuda" else "cpu",
                  "threads": torch.get_num_threads()}
        if not args.skip_training:
            print(f"training a {BENCH_MODEL['hidden_size']}-wide, {BENCH_MODEL['num_hidden_layers']}-block model, "
                  f"{args.steps} steps per run", flush=True)
            result["training"] = training(args, d)
        result["cost"] = [step_cost(p, name, args, d) for p in args.cost_presets for name in ("adamw", "muon")]
    finally:
        shutdown()
    print_report(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "optim.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out / "optim.json")
    print(f"wrote {out / 'optim.json'}")


if __name__ == "__main__":
    main()
