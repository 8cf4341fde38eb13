"""Time `verify_pack` (quick and full) on a synthetic pack, against reading and hashing alone.

    python benchmarks/bench_verify.py --mb 512            # table + results/bench_verify.json

The pack is written through the format's own SplitWriter (random uint16 ids, EOS = 0 closing each
document, train and val splits of 90% / 10%), with a manifest and output marker like pack's,
so `verify_pack` checks it exactly as it checks a real one. Rows:

  read        reading every file of the pack in 16 MB chunks (the floor for any full check)
  sha256      hashlib over the same chunks, one thread (the floor for one file's checksum)
  quick       verify_pack(mode="quick"): headers, offsets, EOS/BOS, max and sum of the ids
  full        verify_pack(mode="full"): quick + sha256 of every file, files in parallel threads
  full x1     the same on one thread

The page cache is warm (the files were just written); a cold read adds the disk's time. Each
row is the fastest of --repeat runs; GB/s counts the bytes of the pack's files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results"


def make_pack(root: Path, megabytes: int, seed: int = 0) -> int:
    """A valid pack of about `megabytes` MB of tokens; returns the bytes of its files."""
    from pytrain.data import format as fmt
    from pytrain.data.format import SplitWriter
    from pytrain.fsutil import write_output_marker

    rng = np.random.default_rng(seed)
    dtype, vocab = np.dtype("<u2"), 32000
    root.mkdir(parents=True)
    tokenizer = b'{"model": "synthetic"}'
    (root / fmt.TOKENIZER).write_bytes(tokenizer)
    splits = {}
    for split, share in (("train", 0.9), ("val", 0.1)):
        writer = SplitWriter(root, split, dtype)
        left = int(megabytes * share * 2**20) // dtype.itemsize
        while left > 0:
            lengths = rng.integers(64, 4096, size=min(4096, max(1, left // 2000)))
            tokens = rng.integers(1, vocab, size=int(lengths.sum()), dtype=np.uint16)
            tokens[np.cumsum(lengths) - 1] = 0  # EOS closes each document
            writer.write(tokens, lengths)
            left -= len(tokens)
        splits[split] = writer.close()
    manifest = {
        "format": fmt.FORMAT_NAME, "format_version": fmt.FORMAT_VERSION, "dtype": "uint16", "vocab_size": vocab,
        "max_token_id": vocab - 1, "eos_id": 0, "bos_id": None, "append_eos": True, "prepend_bos": False,
        "document_format": "text", "loss_mask": False,
        "tokenizer": {"file": fmt.TOKENIZER, "sha256": hashlib.sha256(tokenizer).hexdigest()},
        "validation": {"val_docs": splits["val"]["documents"], "val_fraction": 0.0}, "splits": splits,
    }
    (root / fmt.MANIFEST).write_text(json.dumps(manifest, indent=2))
    write_output_marker(root, "pack")
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def read_all(root: Path, hashing: bool) -> None:
    buffer = bytearray(16 << 20)
    view = memoryview(buffer)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as handle:
            while n := handle.readinto(buffer):
                if hashing:
                    digest.update(view[:n])


def fastest(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=512, help="MB of token data in the synthetic pack")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write the pack (default: a temporary folder)")
    args = parser.parse_args()

    from pytrain.data.verify import verify_pack

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp) / "pack"
        nbytes = make_pack(root, args.mb)
        assert verify_pack(root, "full") == [], verify_pack(root, "full")
        rows = {
            "read": lambda: read_all(root, hashing=False),
            "sha256": lambda: read_all(root, hashing=True),
            "quick": lambda: verify_pack(root, "quick"),
            "full": lambda: verify_pack(root, "full"),
            "full x1": lambda: verify_pack(root, "full", threads=1),
        }
        results = {}
        print(f"pack: {nbytes / 1e9:.3f} GB in {sum(1 for p in root.rglob('*') if p.is_file())} files, "
              f"{os.cpu_count()} CPUs, warm page cache")
        print(f"{'method':<10} {'seconds':>8} {'GB/s':>7} {'s per GB':>9}")
        for name, fn in rows.items():
            seconds = fastest(fn, args.repeat)
            results[name] = {"seconds": seconds, "gb_per_s": nbytes / 1e9 / seconds}
            print(f"{name:<10} {seconds:>8.3f} {nbytes / 1e9 / seconds:>7.2f} {seconds / (nbytes / 1e9):>9.2f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "bench_verify.json"
    out.write_text(json.dumps({"bytes": nbytes, "cpus": os.cpu_count(), "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
