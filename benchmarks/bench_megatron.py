"""Megatron-LM indexed dataset <-> pytrain pack conversion speed, against `cp` of the same bytes.

    python benchmarks/bench_megatron.py                 # 1 GB .bin per case
    python benchmarks/bench_megatron.py --gb 0.25       # smaller

Cases (each a synthetic NAME.bin/NAME.idx written here from Megatron's published layout, random ids below a
50,257-token vocabulary, documents of 1-3 sequences of 1-2,000 tokens, most ending with EOS):
- uint16 -> pack: Pythia/NeoX-style uint16 ids, copied into a uint16 pack (`pytrain pack PREFIX`);
- int32 -> pack: Megatron's default int32 ids narrowed to a uint16 pack (reads twice the bytes it writes);
- pack -> megatron: `pytrain convert PACK --to megatron PREFIX` of the first case's pack.
Each is the whole CLI command in a fresh process (interpreter start, imports, tokenizer load, manifest,
fsync), with the input already in the page cache, timed against `cp` of the same input files to the same
folder, and against `cp` followed by fsync of the copy (pytrain makes its output durable before renaming it
into place). The three commands run in turn `--repeats` times (medians printed, every run in the JSON), each
after its output was removed and fresh memory touched (see `touch_memory`), and pytrain runs as an installed
copy would, with byte-compiled modules (PYTHONDONTWRITEBYTECODE is dropped for it).
GB/s = input bytes / wall seconds; CPU s = user + system seconds of the pytrain process (on a machine whose
cores are busy with other work, wall time follows CPU time, so both are printed). Goal (issue 20): within 2x of `cp`.
Prints a table and writes results/bench_megatron.json; bench_data.py prints the same table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
VOCAB = 50257  # GPT-2 / NeoX-sized: ids fit uint16
EOS = VOCAB - 1
GOAL_X_CP = 2.0


def write_tokenizer(path: Path) -> None:
    """A word-level tokenizer with VOCAB ids (the conversion never tokenizes; only the id range matters)."""
    from tokenizers import Tokenizer, models

    vocab = {f"w{i}": i for i in range(VOCAB - 1)} | {"<|endoftext|>": EOS}
    Tokenizer(models.WordLevel(vocab, unk_token="w0")).save(str(path))


def write_megatron(prefix: Path, dtype, target_bytes: int, seed: int = 0) -> int:
    """A Megatron dataset of about `target_bytes` of .bin, written in pieces (bounded memory); returns its size."""
    from pytrain.data.megatron import index_header

    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    lengths, doc_index = [], [0]
    with open(prefix.with_name(prefix.name + ".bin"), "wb") as handle:
        written = 0
        while written < target_bytes:
            seq = rng.integers(1, 2001, size=4096)
            ids = rng.integers(0, EOS, size=int(seq.sum())).astype(dtype)
            ends = np.cumsum(seq)
            per_doc = rng.integers(1, 4, size=len(seq))
            boundaries = np.cumsum(per_doc)
            boundaries = boundaries[boundaries <= len(seq)]
            ids[ends[boundaries - 1][rng.random(len(boundaries)) < 0.9] - 1] = EOS  # most documents end with EOS
            handle.write(ids.tobytes())
            doc_index += (len(lengths) + boundaries).tolist()
            lengths += seq[: boundaries[-1]].tolist()
            written += int(seq[: boundaries[-1]].sum()) * dtype.itemsize
            if boundaries[-1] < len(seq):  # the cut-off tail of this piece was written: drop it again
                handle.truncate(written)
                handle.seek(written)
    lengths = np.asarray(lengths, dtype=np.int64)
    with open(prefix.with_name(prefix.name + ".idx"), "wb") as handle:
        handle.write(index_header(dtype, len(lengths))[:-8])
        handle.write(np.int64(len(doc_index)).tobytes())
        handle.write(lengths.astype("<i4").tobytes())
        handle.write(((np.cumsum(lengths) - lengths) * dtype.itemsize).astype("<i8").tobytes())
        handle.write(np.asarray(doc_index, dtype="<i8").tobytes())
    return written


def warm(paths) -> None:
    for path in paths:
        with open(path, "rb") as handle:
            while handle.read(64 << 20):
                pass


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command, env=None) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + system) of one command."""
    cpu, started = child_cpu(), time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - started, child_cpu() - cpu


def cp_seconds(files, folder: Path, fsync: bool) -> float:
    folder.mkdir()
    started = time.perf_counter()
    subprocess.run(["cp", *map(str, files), str(folder)], check=True)
    if fsync:
        for path in folder.iterdir():
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    seconds = time.perf_counter() - started
    shutil.rmtree(folder)
    return seconds


def touch_memory(nbytes: int) -> None:
    """Write `nbytes` of fresh memory and free it again. On a virtual machine the first touch of memory the host
    has taken back (free page reporting) costs several times a plain copy; this hands the next command memory
    the host backs, whichever command it is (without it, which of cp and pytrain ran into such memory decided
    the comparison: cp of 1 GB took 0.3 s or 2.9 s)."""
    block = np.ones(nbytes, dtype=np.uint8)
    del block


def compare(command, files, work: Path, outputs: list[Path], env, repeats: int) -> dict:
    """Median wall seconds of `command` (which writes `outputs`), of `cp FILES` and of cp + fsync, run in turn
    `repeats` times with the input in the page cache, each output removed before the next run and each run
    preceded by `touch_memory` of twice the input."""
    warm(files)
    nbytes = sum(p.stat().st_size for p in files)
    runs = {"seconds": [], "cpu_s": [], "cp_s": [], "cp_fsync_s": []}
    for r in range(repeats):
        touch_memory(2 * nbytes)
        runs["cp_s"].append(cp_seconds(files, work / "cp", False))
        touch_memory(2 * nbytes)
        runs["cp_fsync_s"].append(cp_seconds(files, work / "cp", True))
        for path in outputs:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        touch_memory(2 * nbytes)
        seconds, cpu = timed(command, env)
        runs["seconds"].append(seconds)
        runs["cpu_s"].append(cpu)
    row = {key: float(np.median(values)) for key, values in runs.items()}
    row["runs"] = runs
    row["bytes"] = nbytes
    return row


def measure(work: Path, gb: float, repeats: int = 3) -> list[dict]:
    """One row per case (see the module docstring): medians over `repeats` interleaved runs."""
    # As an installed pytrain runs: its modules byte-compiled once, not compiled again in every process.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    pytrain = [sys.executable, "-m", "pytrain"]
    tokenizer = work / "tokenizer.json"
    write_tokenizer(tokenizer)
    rows = []
    for name, dtype in (("uint16 -> pack", np.uint16), ("int32 -> pack", np.int32)):
        prefix = work / f"{np.dtype(dtype).name}_text_document"
        size = write_megatron(prefix, dtype, int(gb * 1e9))
        files = [prefix.with_name(prefix.name + ".bin"), prefix.with_name(prefix.name + ".idx")]
        out = work / f"pack-{np.dtype(dtype).name}"
        row = compare([*pytrain, "pack", str(prefix), "--tokenizer", str(tokenizer), "--out", str(out)], files, work,
                      [out], env, repeats)
        rows.append({"case": name, "bin_bytes": size, **row,
                     "tokens": json.loads((out / "manifest.json").read_text())["splits"]["train"]["tokens"]})
        for path in files:
            path.unlink()
        if dtype is np.int32:
            shutil.rmtree(out)
    pack = work / "pack-uint16"
    files = [pack / "train" / "tokens.bin", pack / "train" / "index.idx"]
    back = work / "back"
    row = compare([*pytrain, "convert", str(pack), "--to", "megatron", str(back)], files, work,
                  [work / "back.bin", work / "back.idx"], env, repeats)
    rows.append({"case": "pack -> megatron", "bin_bytes": files[0].stat().st_size, **row,
                 "tokens": json.loads((pack / "manifest.json").read_text())["splits"]["train"]["tokens"]})
    for row in rows:
        row["gbps"] = row["bytes"] / row["seconds"] / 1e9
        row["vs_cp"] = row["seconds"] / row["cp_s"]
        row["vs_cp_fsync"] = row["seconds"] / row["cp_fsync_s"]
    return rows


def report(rows: list[dict]) -> None:
    print(f"{'case':<18} {'input GB':>8} {'tokens':>13} {'pytrain s':>9} {'CPU s':>6} {'GB/s':>6} {'cp s':>6} {'cp GB/s':>7} "
          f"{'cp+fsync s':>10} {'x cp':>5} {'x cp+fsync':>10}")
    for r in rows:
        print(f"{r['case']:<18} {r['bytes'] / 1e9:8.2f} {r['tokens']:13,d} {r['seconds']:9.2f} {r['cpu_s']:6.2f} {r['gbps']:6.2f} "
              f"{r['cp_s']:6.2f} {r['bytes'] / r['cp_s'] / 1e9:7.2f} {r['cp_fsync_s']:10.2f} {r['vs_cp']:5.2f} {r['vs_cp_fsync']:10.2f}")
    print(f"goal (issue 20: within {GOAL_X_CP:g}x of cp): " + ", ".join(
        f"{r['case']} {'met' if r['vs_cp'] <= GOAL_X_CP else 'NOT met'}" for r in rows)
        + f"; medians of {len(rows[0]['runs']['seconds'])} interleaved runs")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="GB of .bin per case (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per command; medians (default 3)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for bench_megatron.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        rows = measure(Path(scratch), args.gb, args.repeats)
    report(rows)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench_megatron.json").write_text(json.dumps({"rows": rows, "load_average": load,
                                                                    "cpus": os.cpu_count()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
