"""What checkpoints cost a run: the training stall per save, synchronous vs `checkpoint.async`, and what
integrity costs (a real save next to hashing the same files alone, and the verification a resume does).

    python benchmarks/bench_checkpoint.py [--preset 125m] [--repeat 3] [--out benchmarks/results]

One process (gloo, world size 1), fp32 weights and AdamW state (three copies of the parameters) on the
CPU, saved through the trainer's own CheckpointWriter between real training steps (batch 1 x 16 tokens):
- synchronous: the stall is the whole save (DCP write, sha256 of every file, commit);
- asynchronous: the stall is the time `save` holds the loop (copying the state); training steps then run
  while the background thread writes, hashes and commits, and their time is compared with steps alone.
Goal: the asynchronous stall at most 10% of the synchronous save. Prints two tables and writes
checkpoint.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

GOAL_STALL_SHARE = 0.10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="125m")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    import torch

    from pytrain.config import OptimSection
    from pytrain.fsutil import files_sha256
    from pytrain.model.config import preset
    from pytrain.train import checkpoint as ckpt
    from pytrain.train.checkpoint_writer import CheckpointWriter
    from pytrain.train.distributed import init_distributed, shutdown
    from pytrain.train.optim import build_optimizer
    from pytrain.train.parallelize import build_model

    d = init_distributed("cpu")
    config = preset(args.preset, vocab_size=32000)
    model = build_model(config, d, dtype="fp32", seed=0)
    optimizer = build_optimizer(model, OptimSection(), d.device)
    tokens = torch.randint(0, 100, (1, 17))

    def train_step() -> float:
        started = time.perf_counter()
        model(tokens[:, :-1], tokens[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    alone = [train_step() for _ in range(4)][1:]  # the first creates the AdamW state
    state = {"step": 0, "tokens": 0, "world_size": 1, "batch_size": 1, "seq_len": 16, "data": {},
             "model_config": config.to_dict()}
    result = {"preset": args.preset, "parameters": config.num_params(), "step_alone_s": statistics.median(alone)}
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        root = Path(tmp) / "checkpoints"
        saves, hashes, verifies = [], [], []
        writer = CheckpointWriter(root, d, keep_last_k=1, asynchronous=False, log=lambda line: None)
        for step in range(1, args.repeat + 1):
            started = time.perf_counter()
            writer.save(step, model, optimizer, {**state, "step": step})
            saves.append(time.perf_counter() - started)
            path = root / ckpt.step_name(step)
            files = [p for p in path.iterdir() if p.is_file()]
            result["checkpoint_bytes"] = sum(p.stat().st_size for p in files)
            started = time.perf_counter()
            files_sha256(files)
            hashes.append(time.perf_counter() - started)
            started = time.perf_counter()
            assert not ckpt.verify_checkpoint(path)
            verifies.append(time.perf_counter() - started)
            train_step()

        stalls, backgrounds, during = [], [], []
        lines: list[str] = []
        with CheckpointWriter(root, d, keep_last_k=1, asynchronous=True, log=lines.append) as writer:
            for step in range(args.repeat + 1, 2 * args.repeat + 1):
                started = time.perf_counter()
                writer.save(step, model, optimizer, {**state, "step": step})
                stalls.append(time.perf_counter() - started)
                while len(lines) < len(stalls):  # train on until the background save is committed
                    during.append(train_step())
                    writer.poll()
                backgrounds.append(time.perf_counter() - started)
                assert not ckpt.verify_checkpoint(root / ckpt.step_name(step))
    shutdown()
    result.update({
        "sync_save_s": statistics.median(saves), "hash_s": statistics.median(hashes),
        "verify_s": statistics.median(verifies), "async_stall_s": statistics.median(stalls),
        "async_stall_first_s": stalls[0], "async_background_s": statistics.median(backgrounds),
        "steps_during_write": len(during), "step_during_write_s": statistics.median(during),
        "loadavg": os.getloadavg(),
    })
    result["hash_share_of_save"] = result["hash_s"] / result["sync_save_s"]
    result["hash_gb_per_s"] = result["checkpoint_bytes"] / result["hash_s"] / 1e9
    result["stall_share_of_sync"] = result["async_stall_s"] / result["sync_save_s"]
    size = result["checkpoint_bytes"] / 1e9
    print("| preset | checkpoint | save (DCP + hashing) | hashing alone | share | verify on resume |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.preset} | {size:.2f} GB | {result['sync_save_s']:.2f} s | {result['hash_s']:.2f} s "
          f"({result['hash_gb_per_s']:.2f} GB/s) | {result['hash_share_of_save']:.0%} | {result['verify_s']:.2f} s |")
    print()
    print("| preset | stall per save: sync | async (first save) | async / sync | background write | "
          "training step alone | during the write |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.preset} | {result['sync_save_s']:.2f} s | {result['async_stall_s']:.2f} s "
          f"({result['async_stall_first_s']:.2f} s) | {result['stall_share_of_sync']:.1%} | "
          f"{result['async_background_s']:.2f} s | {result['step_alone_s']:.2f} s | "
          f"{result['step_during_write_s']:.2f} s ({len(during)} steps) |")
    verdict = "PASS" if result["stall_share_of_sync"] <= GOAL_STALL_SHARE else "FAIL"
    print(f"goal: async stall <= {GOAL_STALL_SHARE:.0%} of the synchronous save: "
          f"{result['stall_share_of_sync']:.1%} {verdict} (load average {os.getloadavg()[0]:.1f})")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "checkpoint.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
