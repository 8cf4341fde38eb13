"""What checkpoint integrity costs: a real `save_checkpoint` (DCP write + sha256 of every file) next to
hashing the same files alone, and the verification a resume does.

    python benchmarks/bench_checkpoint.py [--preset 125m] [--repeat 3] [--out benchmarks/results]

One process (gloo, world size 1), fp32 weights and AdamW state (three copies of the parameters) on the
CPU. Prints a table and writes checkpoint.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="125m")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    import torch

    from pytrain.fsutil import files_sha256
    from pytrain.model.config import preset
    from pytrain.train import checkpoint as ckpt
    from pytrain.train.distributed import init_distributed, shutdown
    from pytrain.train.optim import build_optimizer
    from pytrain.train.parallelize import build_model
    from pytrain.config import OptimSection

    d = init_distributed("cpu")
    config = preset(args.preset, vocab_size=32000)
    model = build_model(config, d, dtype="fp32", reduce_dtype="fp32", ac_every=0, compile=False,
                        cpu_offload=False, hsdp=False, hsdp_shard_size=None, seed=0)
    optimizer = build_optimizer(model, OptimSection(), d.device)
    model(torch.randint(0, 100, (1, 16)), torch.randint(0, 100, (1, 16))).backward()
    optimizer.step()  # AdamW state exists
    saves, hashes, verifies, size = [], [], [], 0
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        root = Path(tmp) / "checkpoints"
        for step in range(1, args.repeat + 1):
            started = time.perf_counter()
            state = {"step": step, "tokens": 0, "world_size": 1, "batch_size": 1, "seq_len": 16, "data": {},
                     "model_config": config.to_dict()}
            path = ckpt.save_checkpoint(root, step, model, optimizer, state, d, keep_last_k=1)
            saves.append(time.perf_counter() - started)
            files = [p for p in path.iterdir() if p.is_file()]
            size = sum(p.stat().st_size for p in files)
            started = time.perf_counter()
            files_sha256(files)
            hashes.append(time.perf_counter() - started)
            started = time.perf_counter()
            assert not ckpt.verify_checkpoint(path)
            verifies.append(time.perf_counter() - started)
    shutdown()
    result = {"preset": args.preset, "parameters": config.num_params(), "checkpoint_bytes": size,
              "save_s": statistics.median(saves), "hash_s": statistics.median(hashes),
              "verify_s": statistics.median(verifies)}
    result["hash_share_of_save"] = result["hash_s"] / result["save_s"]
    result["hash_gb_per_s"] = size / result["hash_s"] / 1e9
    print(f"| preset | checkpoint | save (DCP + hashing) | hashing alone | share | verify on resume |")
    print(f"|---|---|---|---|---|---|")
    print(f"| {args.preset} | {size / 1e9:.2f} GB | {result['save_s']:.2f} s | {result['hash_s']:.2f} s "
          f"({result['hash_gb_per_s']:.2f} GB/s) | {result['hash_share_of_save']:.0%} | {result['verify_s']:.2f} s |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "checkpoint.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
