"""Start-up, memory, read and resume speed of a weighted mixture (`data.mixture`; `data.path` is one source) at scale.

    python benchmarks/bench_data.py                 # 10 / 1,000 / 10,000 sources x 10^6 / 10^9 documents
    python benchmarks/bench_data.py --quick         # 10 and 1,000 sources, 10^6 documents
    python benchmarks/bench_data.py --sources 10000 --docs 1e9
    python benchmarks/bench_data.py --parts megatron --megatron-gb 1   # only the Megatron conversion table

For each configuration, S synthetic packs (one per source, equal weights) holding D documents in all are
written to a temporary folder, then a fresh process (so the peak memory is its own) times:
- ready: resolving the sources (reading S manifests, the tokenizer check) and building the first chunk of
  the blending index, i.e. everything before the first sample can be read;
- index chunk: one chunk (~1M samples) of the blending index alone (the C++ builder);
- first batch: ready + reading and stacking 8 samples of 2048 tokens;
- read: samples/s and tokens/s over 4,000 consecutive samples (the training access pattern);
- resume: a fresh dataset's first batch of 8 samples at the middle of the mixture's first epoch, which walks
  each of those sources' shuffled document order from its epoch's start (walk: documents walked per second);
- peak RSS of that process (and its RSS before the mixture was opened: Python, numpy, torch).
Packs of 10^6 documents are real files (random tokens, document lengths 1..99). Packs of 10^9 documents
would need terabytes of tokens, so their tokens.bin is a sparse file of the right size (it reads as zeros),
while index.idx holds real offsets (document lengths 1..1999, 8 GB in all: the walk of a shuffled document
order reads them). Start-up does not depend on either, since nothing in it reads or allocates per document.
Goal (issue 11): 10,000 sources and 10^9 documents ready in < 10 s with < 2 GB.

Then the Megatron -> pack conversion GB/s against `cp` of the same bytes (and pack -> Megatron), measured by
bench_megatron.py's cases (see its docstring for the method; it is also the detailed script). Goal (issue 20):
within 2x of cp.
Prints both tables and writes results/bench_data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
SEQ_LEN = 2048
TOKENS_PER_SPARSE_DOC = 1000
GOAL_S, GOAL_GB = 10.0, 2.0


def write_source(root: Path, docs: int, dense: bool, rng) -> None:
    """One pack in pytrain's format with `docs` documents (train split only)."""
    from pytrain.data import format as fmt

    split = root / "train"
    split.mkdir(parents=True)
    if dense:
        lengths = rng.integers(1, 100, size=docs)
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype("<i8")
        tokens = int(offsets[-1])
        rng.integers(0, 1000, size=tokens, dtype=np.uint16).astype("<u2").tofile(split / "tokens.bin")
        with open(split / "index.idx", "wb") as handle:
            handle.write(fmt.index_header(2, docs, tokens))
            handle.write(offsets.tobytes())
    else:  # real document lengths (the walk of a shuffled order reads them), a sparse tokens.bin
        tokens = 0
        with open(split / "index.idx", "wb") as handle:
            handle.seek(fmt.INDEX_HEADER.size)
            handle.write(np.zeros(1, dtype="<i8").tobytes())
            for start in range(0, docs, 10**7):
                lengths = rng.integers(1, 2 * TOKENS_PER_SPARSE_DOC, size=min(10**7, docs - start))
                ends = np.cumsum(lengths) + tokens
                handle.write(ends.astype("<i8").tobytes())
                tokens = int(ends[-1])
            handle.seek(0)
            handle.write(fmt.index_header(2, docs, tokens))
        with open(split / "tokens.bin", "wb") as handle:
            handle.truncate(2 * tokens)
    placeholder = "0" * 64  # well-formed digests of nothing: start-up and reads never hash (`pytrain verify` does)
    manifest = {"format": fmt.FORMAT_NAME, "format_version": fmt.FORMAT_VERSION, "dtype": "uint16",
                "vocab_size": 1000, "eos_id": 0, "bos_id": None, "append_eos": True, "prepend_bos": False,
                "tokenizer": {"file": fmt.TOKENIZER, "sha256": placeholder},
                "splits": {"train": {"documents": docs, "tokens": tokens, "tokens_sha256": placeholder,
                                     "index_sha256": placeholder}}}
    (root / fmt.MANIFEST).write_text(json.dumps(manifest))


def synthesize(work: Path, sources: int, docs: int) -> list[dict]:
    rng = np.random.default_rng(0)
    dense = docs <= 10**7
    per_source = [docs // sources + (1 if s < docs % sources else 0) for s in range(sources)]
    entries = []
    for s, count in enumerate(per_source):
        path = work / f"source-{s:05d}"
        write_source(path, count, dense, rng)
        entries.append({"name": f"s{s}", "path": str(path), "weight": 1.0})
    return entries


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(entries_file: str) -> dict:
    import torch  # noqa: F401  (imported before timing: training has it loaded already)

    from pytrain import _native
    from pytrain.sampling.mixture import CHUNK, Mixture

    entries = json.loads(Path(entries_file).read_text())
    baseline = rss_mb()
    started = time.perf_counter()
    mixture = Mixture(entries)
    resolved = time.perf_counter()
    dataset = mixture.train_dataset(SEQ_LEN, seed=0)
    dataset.locate(0)
    ready = time.perf_counter()
    dataset.get_batch(range(8))
    first_batch = time.perf_counter()
    chunk_started = time.perf_counter()
    _native.blend_chunk(dataset.units, CHUNK, 2 * CHUNK)
    chunk_s = time.perf_counter() - chunk_started
    count = 4000
    read_started = time.perf_counter()
    for g in range(8, 8 + count):
        dataset[g]
    read_s = time.perf_counter() - read_started
    resumed = mixture.train_dataset(SEQ_LEN, seed=1)  # another seed: nothing walked yet
    resumed.consumed = sum(stream.samples_per_epoch for stream in resumed.streams) // 2
    resume_started = time.perf_counter()
    resumed.next_batch(8)
    resume_s = time.perf_counter() - resume_started
    walked = sum(stream.walked_documents for stream in resumed.streams)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"resume_s": resume_s, "resume_docs_per_s": walked / resume_s,
            "resolve_s": resolved - started, "ready_s": ready - started, "first_batch_s": first_batch - started,
            "index_chunk_s": chunk_s, "samples_per_s": count / read_s, "tokens_per_s": count * SEQ_LEN / read_s,
            "peak_rss_mb": peak, "baseline_rss_mb": baseline, "open_splits": len(dataset.streams[0].files)}


def measure(sources: int, docs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_data-") as tmp:
        work = Path(tmp)
        made = time.perf_counter()
        entries = synthesize(work, sources, docs)
        synth_s = time.perf_counter() - made
        (work / "entries.json").write_text(json.dumps(entries))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, __file__, "--child", str(work / "entries.json")], capture_output=True,
                              text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"child failed for {sources} sources, {docs} documents:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"sources": sources, "documents": docs, "files": "real" if docs <= 10**7 else "sparse",
            "synthesize_s": synth_s, **result}


def report(rows: list[dict]) -> None:
    header = (f"{'sources':>8} {'documents':>10} {'files':>6} {'ready s':>8} {'1st batch s':>11} {'chunk s':>8} "
              f"{'samples/s':>10} {'Mtok/s':>7} {'resume s':>8} {'walk Mdoc/s':>11} {'peak MB':>8} {'base MB':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['sources']:>8,} {r['documents']:>10.0e} {r['files']:>6} {r['ready_s']:>8.2f} "
              f"{r['first_batch_s']:>11.2f} {r['index_chunk_s']:>8.3f} {r['samples_per_s']:>10,.0f} "
              f"{r['tokens_per_s'] / 1e6:>7.1f} {r['resume_s']:>8.2f} {r['resume_docs_per_s'] / 1e6:>11.2f} "
              f"{r['peak_rss_mb']:>8.0f} {r['baseline_rss_mb']:>8.0f}")
    goal = [r for r in rows if r["sources"] == 10_000 and r["documents"] == 10**9]
    for r in goal:
        ok = r["ready_s"] < GOAL_S and r["peak_rss_mb"] / 1024 < GOAL_GB
        print(f"goal (10,000 sources, 10^9 documents ready in < {GOAL_S:g} s with < {GOAL_GB:g} GB): "
              f"{'met' if ok else 'NOT met'} (ready {r['ready_s']:.2f} s, peak RSS {r['peak_rss_mb'] / 1024:.2f} GB "
              f"of which {r['baseline_rss_mb'] / 1024:.2f} GB before the mixture was opened)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, nargs="*", default=None, help="source counts (default 10 1000 10000)")
    parser.add_argument("--docs", type=float, nargs="*", default=None, help="total documents (default 1e6 1e9)")
    parser.add_argument("--quick", action="store_true", help="10 and 1,000 sources, 10^6 documents")
    parser.add_argument("--parts", nargs="+", choices=("mixture", "megatron"), default=["mixture", "megatron"],
                        help="which tables to measure")
    parser.add_argument("--megatron-gb", type=float, default=1.0, help="GB of .bin per Megatron conversion case")
    parser.add_argument("--out", default=str(RESULTS), help="folder for bench_data.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    sources = args.sources or ([10, 1000] if args.quick else [10, 1000, 10_000])
    docs = [int(d) for d in (args.docs or ([1e6] if args.quick else [1e6, 1e9]))]
    results = {"seq_len": SEQ_LEN, "cpus": os.cpu_count()}
    if "mixture" in args.parts:
        results["rows"] = rows = [measure(s, d) for d in docs for s in sources]
        report(rows)
    if "megatron" in args.parts:
        import bench_megatron

        with tempfile.TemporaryDirectory(prefix="bench_data-megatron-") as tmp:
            results["megatron"] = megatron_rows = bench_megatron.measure(Path(tmp), args.megatron_gb)
        print()
        bench_megatron.report(megatron_rows)
    results["load_average"] = load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_data.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out / 'bench_data.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
