"""Time `pytrain pack` against the tokenizer alone and a `datasets` pipeline on the same JSONL.

    python benchmarks/gpt2_tokenizer.py --fetch          # once: GPT-2's tokenizer.json, offline
    python benchmarks/bench_pack.py --mb 200              # table + goal checks + results/bench_pack.json
    python benchmarks/bench_pack.py --families gpt2 llama3 qwen2 neox llama2 mistral-v3 --mb 20
                                                          # a table per family (published layouts, see below)
    PYTHONPATH=DIR python benchmarks/bench_pack.py ...    # DIR from `pip install --target DIR tiktoken regex`
                                                          # adds the tiktoken row (optional)

Every method runs in its own fresh subprocess, so its peak RSS (ru_maxrss from os.wait4: the
largest single process of its tree) is its own; a sampler also sums RSS over the whole process
tree every 50 ms, which is what counts for `datasets.map(num_proc=N)` workers. Methods:

  pytrain    the whole CLI command, `python -m pytrain pack ...`; wall time includes interpreter
             start-up and imports. Twice: with the default encoder (auto: the native BPE when the
             tokenizer is supported) and with --encoder tokenizers. Their tokens.bin must be identical.
  fast       like bare, but timing only the native encoder (FastBpe.encode_framed) on the same batches.
  tiktoken   like bare, with tiktoken built from the tokenizer's vocabulary (ids as ranks, GPT-2's
             pattern: valid for a GPT-2-style tokenizer built from ranks, as gpt2_tokenizer.py does);
             only when tiktoken is importable; its token count must equal the tokenizer's.
  bare       the ceiling: a child loads every text (json.loads per line) and times ONLY
             `Tokenizer.encode_batch_fast(texts, add_special_tokens=False)`, either in ~8 MB batches
             like pack's or in one call over everything; the faster of the two is the ceiling.
  datasets   `load_dataset("json")` + batched `.map(num_proc=N)` with the same tokenizer.json (EOS
             appended like pack) + all ids written to a uint16 numpy memmap; the pipeline's wall time
             in the child (its imports excluded, which favours it). Each of the N workers encodes on
             one thread (RAYON_NUM_THREADS=1): N threads in all, and faster than N x N in our trials.
  index      `_native.index_lines` over an mmap of the corpus at 1 and N threads, median of 5.
  memory     pytrain pack again on the corpus repeated --mem-scale times.

--families: for each family, its tokenizer.json in the published layout (bpe_families.py; GPT-2 with
its real vocabulary from results/gpt2-tokenizer.json when gpt2_tokenizer.py --fetch made it, the others
with --family-vocab tokens trained on the corpus' first --train-mb MB), then the whole `pytrain pack`
command (encoder auto) against bare `encode_batch_fast` over the same preloaded texts (the faster of
8 MB batches and one call), same threads, --repeat times each, fastest reported; every document's
ids in tokens.bin must equal the tokenizer's + EOS. llama2 and mistral-v3 (SentencePiece-style) use the
models the mistral-common package ships (Mistral 7B v0.1 = Llama-2's pipeline; v0.3), converted by
transformers' LlamaConverter (benchmarks/llama2_tokenizer.py).

The page cache is warm for every method (the corpus was just written or read). Token rates
count the tokenizer's tokens (no EOS) for every method, so they compare directly. pytrain and
bare run --repeat times, interleaved, and the fastest run of each is reported (noise only adds
time). On a shared machine the `other s` column shows how much CPU other processes took during
each run, and the CPU-time ratios are printed next to the wall-time ones.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from pytrain.data import format as fmt

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
EOS = "<|endoftext|>"
GOAL_VS_BARE = 1.15  # pack --encoder tokenizers: within this of the tokenizer alone
GOAL_FAST_SPEEDUP = 3.0  # pack with the fast encoder: this many times faster than the tokenizer alone
GOAL_VS_DATASETS = 1.8
GOAL_INDEX_GBPS = 1.0
GOAL_MEMORY_GROWTH = 1.5  # "a 10x larger file must not need 10x the memory": we ask for flat (<= 1.5x)


# ----------------------------------------------------------------------------- children
def _texts(corpus: str) -> list[str]:
    with open(corpus, encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle]


def _batches(texts: list[str], batch_mb: int) -> list[list[str]]:
    """~batch_mb MB batches like pack's (one batch when 0)."""
    batches, current, size = [], [], 0
    for text in texts:
        current.append(text)
        size += len(text)
        if batch_mb and size >= batch_mb << 20:
            batches.append(current)
            current, size = [], 0
    batches.append(current)
    return batches


def _time_batches(encode, batches) -> dict:
    """Time only encode(batch) (which returns the batch's token count) over every batch."""
    seconds, cpu, tokens = 0.0, 0.0, 0
    for batch in batches:
        started, cpu_started = time.perf_counter(), time.process_time()
        tokens += encode(batch)
        seconds += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
    return {"seconds": seconds, "cpu": cpu, "tokens": tokens, "documents": sum(map(len, batches)),
            "batches": len(batches)}


def child_fast(args) -> dict:
    """The native encoder alone, on the same batches as bare."""
    from tokenizers import Tokenizer

    from pytrain.tokenizer.fast_bpe import fast_encoder

    raw = Path(args.tokenizer).read_bytes()
    fast, why_not = fast_encoder(raw, Tokenizer.from_str(raw.decode("utf-8")), args.threads)
    if fast is None:
        return {"skipped": f"the fast encoder does not support this tokenizer: {why_not}"}
    return _time_batches(lambda batch: len(fast.encode_framed(batch, -1, -1, "uint32")[0]),
                         _batches(_texts(args.corpus), args.batch_mb))


def child_tiktoken(args) -> dict:
    """tiktoken with the tokenizer's vocabulary ids as ranks and GPT-2's pattern."""
    try:
        import tiktoken
    except ImportError:
        return {"skipped": "tiktoken is not importable (see the module docstring)"}
    from gpt2_tokenizer import GPT2_PAT_STR

    from pytrain.tokenizer.fast_bpe import byte_level_chars

    config = json.loads(Path(args.tokenizer).read_text(encoding="utf-8"))
    to_byte = {c: b for b, c in enumerate(byte_level_chars())}
    ranks = {bytes(to_byte[c] for c in token): i for token, i in config["model"]["vocab"].items()}
    specials = {t["content"]: t["id"] for t in config["added_tokens"]}
    encoding = tiktoken.Encoding("from-tokenizer-json", pat_str=GPT2_PAT_STR, mergeable_ranks=ranks,
                                 special_tokens=specials)
    return _time_batches(lambda batch: sum(map(len, encoding.encode_ordinary_batch(batch, num_threads=args.threads))),
                         _batches(_texts(args.corpus), args.batch_mb))


def child_bare(args) -> dict:
    """Encode every text; time only the encode calls. Dumps the first docs' ids (all with --prefix-docs 0)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(args.tokenizer)
    texts = _texts(args.corpus)
    batches = _batches(texts, args.batch_mb)
    seconds, cpu, tokens, dumped = 0.0, 0.0, 0, []
    for i, batch in enumerate(batches):
        started, cpu_started = time.perf_counter(), time.process_time()
        encodings = tokenizer.encode_batch_fast(batch, add_special_tokens=False)
        seconds += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
        tokens += sum(map(len, encodings))
        if args.dump and (i == 0 or not args.prefix_docs):
            kept = [e.ids for e in (encodings[:args.prefix_docs] if args.prefix_docs else encodings)]
            dumped.append((np.concatenate(kept or [[]]).astype(np.int64), np.array(list(map(len, kept)))))
        del encodings
    if dumped:
        np.savez(args.dump, ids=np.concatenate([d[0] for d in dumped]), lengths=np.concatenate([d[1] for d in dumped]))
    return {"seconds": seconds, "cpu": cpu, "tokens": tokens, "documents": len(texts), "batches": len(batches)}


def _cpu_with_children() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


_TOKENIZER = None


def _encode_for_map(batch, tokenizer_path: str, eos_id: int):
    """datasets.map function: each worker process loads the tokenizer once."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from tokenizers import Tokenizer

        _TOKENIZER = Tokenizer.from_file(tokenizer_path)
    encodings = _TOKENIZER.encode_batch_fast(batch["text"], add_special_tokens=False)
    return {"input_ids": [e.ids + [eos_id] for e in encodings]}


def child_datasets(args) -> dict:
    import datasets
    from tokenizers import Tokenizer

    datasets.disable_progress_bars()
    eos_id = Tokenizer.from_file(args.tokenizer).token_to_id(EOS)
    started, cpu_started = time.perf_counter(), _cpu_with_children()
    ds = datasets.load_dataset("json", data_files=args.corpus, cache_dir=args.cache_dir, split="train")
    ds = ds.map(_encode_for_map, batched=True, num_proc=args.threads, remove_columns=ds.column_names,
                fn_kwargs={"tokenizer_path": args.tokenizer, "eos_id": eos_id})
    column = ds.data.column("input_ids")
    total = sum(len(chunk.flatten()) for chunk in column.chunks)
    out = np.memmap(args.dump, dtype=np.uint16, mode="w+", shape=(total,))
    pos = 0
    for chunk in column.chunks:
        values = chunk.flatten().to_numpy()
        out[pos:pos + len(values)] = values
        pos += len(values)
    out.flush()
    del out
    return {"seconds": time.perf_counter() - started, "cpu": _cpu_with_children() - cpu_started,
            "tokens_with_eos": total, "documents": len(ds)}


# ----------------------------------------------------------------------------- parent
def _tree_rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon) summed over `pid` and its descendants, in kB; (0, 0) once it is gone."""
    rss = anon = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith("RssAnon:"):
                    anon += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return rss, anon


def machine_busy_s() -> float:
    """CPU-seconds the whole machine has been busy since boot, steal included (/proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_until_quiet(max_wait: float, busy_fraction: float = 0.15) -> float:
    """Wait up to `max_wait` s for one second in which the machine is < `busy_fraction` busy; returns the wait."""
    started = time.perf_counter()
    while time.perf_counter() - started < max_wait:
        before = machine_busy_s()
        time.sleep(1.0)
        if machine_busy_s() - before < busy_fraction * os.cpu_count():
            break
    return time.perf_counter() - started


def run_child(cmd: list[str], env: dict, label: str, quiet_wait: float = 0.0) -> dict:
    """Run `cmd`: wall time from spawn to exit, CPU and ru_maxrss via os.wait4, sampled tree RSS, and the
    CPU-seconds other processes took meanwhile (contention). Parses its last stdout line as JSON if it is one."""
    waited = wait_until_quiet(quiet_wait)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        busy_before = machine_busy_s()
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out, stderr=err, text=True)
        peak = {"rss": 0, "anon": 0}
        done = threading.Event()

        def sample():
            while not done.wait(0.05):
                rss, anon = _tree_rss_kb(proc.pid)
                peak["rss"], peak["anon"] = max(peak["rss"], rss), max(peak["anon"], anon)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        busy = machine_busy_s() - busy_before
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}):\n{stdout[-2000:]}\n{stderr[-4000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    result = {"wall_s": wall, "cpu_s": cpu, "other_cpu_s": max(0.0, busy - cpu), "waited_for_quiet_s": waited,
              "ru_maxrss_mb": usage.ru_maxrss / 1024,
              "tree_rss_peak_mb": peak["rss"] / 1024, "tree_anon_peak_mb": peak["anon"] / 1024}
    lines = stdout.strip().splitlines()
    if lines and lines[-1].startswith("{"):
        result.update(json.loads(lines[-1]))
    return result


def build_corpus(work: Path, mb: int) -> Path:
    """~mb MB of JSONL from the stdlib corpus, cached by size (the generator is seeded)."""
    from pytrain.data.corpus import mixed_documents, stdlib_documents, write_jsonl

    path = work / f"corpus-{mb}mb.jsonl"
    if not path.exists():
        partial = path.with_suffix(".partial")
        write_jsonl(partial, mixed_documents(stdlib_documents(), mb * 1_000_000))
        partial.rename(path)
    return path


def repeat_file(path: Path, times: int) -> Path:
    target = path.with_name(f"{path.stem}-x{times}.jsonl")
    if not target.exists():
        partial = target.with_suffix(".partial")
        with open(partial, "wb") as out:
            for _ in range(times):
                with open(path, "rb") as source:
                    shutil.copyfileobj(source, out, 16 << 20)
        partial.rename(target)
    return target


def index_gbps(corpus: Path, threads: int, runs: int = 5) -> float:
    from pytrain import _native

    with open(corpus, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        _native.index_lines(view, threads)  # fault the pages in
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            _native.index_lines(view, threads)
            times.append(time.perf_counter() - started)
        view.release()
    return corpus.stat().st_size / statistics.median(times) / 1e9


def run_pack(corpus: Path, args, out: Path, encoder: str = "auto") -> dict:
    cmd = [sys.executable, "-m", "pytrain", "pack", str(corpus), "--tokenizer", str(args.tokenizer),
           "--out", str(out), "--threads", str(args.threads), "--overwrite", "--no-progress", "--encoder", encoder]
    result = run_child(cmd, {"RAYON_NUM_THREADS": str(args.threads)}, "pytrain pack", args.wait_quiet)
    manifest = json.loads((out / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    result.update(documents=train["documents"], tokens_with_eos=train["tokens"], encoder=manifest["encoder"],
                  tokens_sha256=train["tokens_sha256"])
    result["tokens"] = train["tokens"] - train["documents"] if manifest["append_eos"] else train["tokens"]
    return result


def timed_part(run: dict) -> dict:
    """Take the child's own timing of its measured part as the wall time; keep the whole child's as child_wall_s."""
    return {**run, "child_wall_s": run["wall_s"], "wall_s": run["seconds"], "child_cpu_s": run["cpu_s"], "cpu_s": run["cpu"]}


def fastest_run(runs: list[dict]) -> dict:
    """The fastest run, with every run's wall: on a shared machine noise only ever adds time."""
    return {**min(runs, key=lambda r: r["wall_s"]), "walls_s": [r["wall_s"] for r in runs]}


def measure(args, corpus: Path, tmp: Path) -> dict:
    """Run every method; returns the per-method results plus the correctness checks."""
    n, wait = args.threads, args.wait_quiet
    child = [sys.executable, __file__, "--corpus", str(corpus), "--tokenizer", str(args.tokenizer), "--threads", str(n)]
    rayon = {"RAYON_NUM_THREADS": str(n)}
    bare_cmd = child + ["--child", "bare", "--batch-mb", "8", "--dump", str(tmp / "prefix.npz"), "--prefix-docs", str(args.prefix_docs)]
    pytrain_runs, slow_runs, bare_runs, fast_runs = [], [], [], []
    for _ in range(args.repeat):  # interleaved, so drift hits all alike
        pytrain_runs.append(run_pack(corpus, args, tmp / "packed"))
        bare_runs.append(timed_part(run_child(bare_cmd, rayon, "bare", wait)))
        slow_runs.append(run_pack(corpus, args, tmp / "packed-tokenizers", "tokenizers"))
        fast_runs.append(run_child(child + ["--child", "fast", "--batch-mb", "8"], {}, "fast", wait))
    bare = {"8 MB batches": fastest_run(bare_runs),
            "one call": timed_part(run_child(child + ["--child", "bare", "--batch-mb", "0"], rayon, "bare", wait))}
    others = {}
    if "skipped" not in fast_runs[0]:
        others["fast encoder alone, 8 MB batches"] = fastest_run([timed_part(r) for r in fast_runs])
    tiktoken_run = run_child(child + ["--child", "tiktoken", "--batch-mb", "8"], {}, "tiktoken", wait)
    if "skipped" not in tiktoken_run:
        others["tiktoken alone, 8 MB batches"] = timed_part(tiktoken_run)
    skipped = [r["skipped"] for r in (fast_runs[0], tiktoken_run) if "skipped" in r]
    same_file = pytrain_runs[-1]["tokens_sha256"] == slow_runs[-1]["tokens_sha256"]
    shutil.rmtree(tmp / "packed-tokenizers")

    # pytrain's first documents must be exactly the tokenizer's ids + EOS
    prefix = np.load(tmp / "prefix.npz")
    eos_id = json.loads((tmp / "packed" / "manifest.json").read_text())["eos_id"]
    pieces = np.split(prefix["ids"], np.cumsum(prefix["lengths"])[:-1])
    expected = np.concatenate([np.append(p, eos_id) for p in pieces])
    packed = np.fromfile(fmt.tokens_path(tmp / "packed", "train"), dtype=np.uint16, count=len(expected))
    shutil.rmtree(tmp / "packed")

    print("datasets pipeline ...", flush=True)
    data = run_child(child + ["--child", "datasets", "--dump", str(tmp / "datasets.bin"), "--cache-dir", str(tmp / "hf-cache")],
                     {"RAYON_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}, "datasets", wait)
    data = timed_part(data)
    data["tokens"] = data["tokens_with_eos"] - data["documents"]
    from_datasets = np.fromfile(tmp / "datasets.bin", dtype=np.uint16, count=len(expected))
    shutil.rmtree(tmp / "hf-cache")
    (tmp / "datasets.bin").unlink()

    results = {"pytrain": fastest_run(pytrain_runs), "pytrain_tokenizers": fastest_run(slow_runs), "bare": bare,
               "others": others, "skipped": skipped, "datasets": data,
               "fast_tokens_identical": same_file,
               "paired_ratios": [p["wall_s"] / b["wall_s"] for p, b in zip(pytrain_runs, bare_runs)],
               "paired_ratios_tokenizers": [p["wall_s"] / b["wall_s"] for p, b in zip(slow_runs, bare_runs)],
               "index_gbps": {t: index_gbps(corpus, t) for t in sorted({1, n})},
               "prefix_docs": len(pieces),
               "prefix_equal": {"pytrain": bool(np.array_equal(packed, expected)),
                                "datasets": bool(np.array_equal(from_datasets, expected))}}
    if not args.quick:
        big_corpus = repeat_file(corpus, args.mem_scale)
        print(f"pytrain pack on {big_corpus.name} ({big_corpus.stat().st_size / 1e9:.2f} GB) ...", flush=True)
        results["pytrain_big"] = run_pack(big_corpus, args, tmp / "packed-big")
    return results


def report(args, results: dict) -> dict:
    """Print the table and goal checks; returns the goals."""
    n, pytrain, bare, data = args.threads, results["pytrain"], results["bare"], results["datasets"]
    slow = results["pytrain_tokenizers"]
    ceiling_name = min(bare, key=lambda k: bare[k]["wall_s"])
    ceiling = bare[ceiling_name]["wall_s"]
    rows = [(f"pytrain pack, encoder {pytrain['encoder']} (CLI)", pytrain),
            ("pytrain pack --encoder tokenizers", slow)] + [(f"bare tokenizer, {k}", r) for k, r in bare.items()]
    rows += list(results["others"].items())
    rows.append((f"datasets map(num_proc={n}) + memmap", data))
    if "pytrain_big" in results:
        rows.append((f"pytrain pack, {args.mem_scale}x corpus", results["pytrain_big"]))
    print(f"\n{'method':36} {'wall s':>8} {'tokens':>12} {'tokens/s':>10} {'/s/core':>9} {'x bare':>7} {'cpu s':>7} "
          f"{'other s':>8} {'maxrss MB':>10} {'tree RSS':>9} {'anon MB':>8}")
    for name, r in rows:
        rate = r["tokens"] / r["wall_s"]
        print(f"{name:36} {r['wall_s']:8.2f} {r['tokens']:12,} {rate:10,.0f} {rate / n:9,.0f} {r['wall_s'] / ceiling:7.2f} "
              f"{r['cpu_s']:7.1f} {r['other_cpu_s']:8.1f} {r['ru_maxrss_mb']:10.0f} {r['tree_rss_peak_mb']:9.0f} "
              f"{r['tree_anon_peak_mb']:8.0f}")
    print(f"wall: pytrain from spawn to exit; bare/fast/tiktoken: the encode calls only (ceiling = {ceiling_name}); "
          f"/s/core: tokens/s over {n} threads; datasets: the "
          f"pipeline, imports excluded.\ncpu s: CPU time of that same span (datasets: workers included). other s: "
          f"CPU-seconds other processes used while the child ran (~0 on a quiet machine).\nmaxrss: os.wait4 "
          f"ru_maxrss; tree RSS / anon: sampled peaks over the process tree.")
    index = results["index_gbps"]
    print("index_lines: " + ", ".join(f"{t} thread{'s' * (t > 1)} {g:.2f} GB/s" for t, g in index.items()))
    counts_ok = (pytrain["tokens"] == slow["tokens"] == data["tokens"] == bare["8 MB batches"]["tokens"]
                 == bare["one call"]["tokens"]) and all(r["tokens"] == pytrain["tokens"] for r in results["others"].values())
    for reason in results["skipped"]:
        print(f"skipped: {reason}")
    print(f"tokens.bin of pack (encoder {pytrain['encoder']}) and pack --encoder tokenizers identical: "
          f"{results['fast_tokens_identical']}")
    prefix_ok = all(results["prefix_equal"].values())
    print(f"token counts equal: {counts_ok} (pytrain {pytrain['tokens']:,} + {pytrain['documents']:,} EOS, bare "
          f"{bare['one call']['tokens']:,}, datasets {data['tokens']:,}); first {results['prefix_docs']} documents "
          f"identical to the tokenizer's ids + EOS: {results['prefix_equal']}")
    print(f"pytrain / bare = {pytrain['wall_s'] / ceiling:.3f}, bare / pytrain = {ceiling / pytrain['wall_s']:.2f} "
          f"(back-to-back pairs: {', '.join(f'{r:.3f}' for r in results['paired_ratios'])}); "
          f"datasets / pytrain = {data['wall_s'] / pytrain['wall_s']:.2f}")
    print(f"pytrain --encoder tokenizers / bare = {slow['wall_s'] / ceiling:.3f} (back-to-back pairs: "
          f"{', '.join(f'{r:.3f}' for r in results['paired_ratios_tokenizers'])})")
    print(f"CPU-seconds instead of wall (less sensitive to other load): pytrain / bare = "
          f"{pytrain['cpu_s'] / bare[ceiling_name]['cpu_s']:.3f}, datasets / pytrain = {data['cpu_s'] / pytrain['cpu_s']:.2f}")
    goals = {
        f"pytrain (encoder {pytrain['encoder']}) >= {GOAL_FAST_SPEEDUP}x faster than bare tokenizer":
            GOAL_FAST_SPEEDUP * pytrain["wall_s"] <= ceiling,
        f"pytrain --encoder tokenizers within {GOAL_VS_BARE}x of bare tokenizer": slow["wall_s"] <= GOAL_VS_BARE * ceiling,
        f"pytrain >= {GOAL_VS_DATASETS}x faster than datasets": data["wall_s"] >= GOAL_VS_DATASETS * pytrain["wall_s"],
        f"index_lines > {GOAL_INDEX_GBPS} GB/s at {n} threads": index[n] > GOAL_INDEX_GBPS,
        "same tokens from every method": counts_ok and prefix_ok and results["fast_tokens_identical"],
    }
    if "pytrain_big" in results:
        big = results["pytrain_big"]
        growth = big["ru_maxrss_mb"] / pytrain["ru_maxrss_mb"]
        print(f"peak RSS: 1x {pytrain['ru_maxrss_mb']:.0f} MB, {args.mem_scale}x {big['ru_maxrss_mb']:.0f} MB (x{growth:.2f}); "
              f"anonymous only: {pytrain['tree_anon_peak_mb']:.0f} MB, {big['tree_anon_peak_mb']:.0f} MB")
        goals[f"{args.mem_scale}x corpus peak RSS <= {GOAL_MEMORY_GROWTH}x the 1x one"] = growth <= GOAL_MEMORY_GROWTH
    for name, ok in goals.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")
    return goals


# ----------------------------------------------------------------------------- --families
# SentencePiece-style families: the models the mistral-common package ships, converted by transformers.
SHIPPED_SENTENCEPIECE = {"llama2": ("tokenizer.model.v1", True),  # Mistral 7B v0.1 = Llama-2's pipeline
                         "mistral-v3": ("mistral_instruct_tokenizer_240323.model.v3", False)}  # Metaspace


def family_tokenizer(family: str, corpus: Path, work: Path, args) -> Path:
    """The family's published-layout tokenizer.json (cached in `work`)."""
    import bpe_families

    if family in SHIPPED_SENTENCEPIECE:
        path = work / f"{family}-shipped-tokenizer.json"
        if not path.exists():
            try:
                from llama2_tokenizer import mistral_json
            except ImportError as missing:
                raise SystemExit(f"--families {family}: {missing}; pip install mistral-common sentencepiece protobuf")
            path.write_text(mistral_json(*SHIPPED_SENTENCEPIECE[family]), encoding="utf-8")
        return path
    gpt2 = RESULTS / "gpt2-tokenizer.json"
    real = family == "gpt2" and gpt2.exists()
    path = work / (f"{family}-real-tokenizer.json" if real else f"{family}-{args.family_vocab}-{args.train_mb}mb-tokenizer.json")
    if path.exists():
        return path
    if real:  # GPT-2's own 50k vocabulary and merges
        model = json.loads(gpt2.read_text(encoding="utf-8"))["model"]
        vocab = {t: i for t, i in model["vocab"].items() if t != EOS}
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        config = bpe_families.layout(family, vocab, merges)
    else:
        texts, size = [], 0
        for text in _texts(str(corpus)):
            texts.append(text)
            size += len(text)
            if size >= args.train_mb << 20:
                break
        config = bpe_families.layout(family, *bpe_families.train(family, texts, args.family_vocab))
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def measure_family(family: str, corpus: Path, tmp: Path, args) -> dict:
    tokenizer = family_tokenizer(family, corpus, args.work, args)
    family_args = argparse.Namespace(**{**vars(args), "tokenizer": tokenizer})
    child = [sys.executable, __file__, "--corpus", str(corpus), "--tokenizer", str(tokenizer), "--threads", str(args.threads)]
    rayon = {"RAYON_NUM_THREADS": str(args.threads)}
    packs, bares = [], []
    for _ in range(args.repeat):
        packs.append(run_pack(corpus, family_args, tmp / "packed"))
        for batch_mb in (8, 0):
            bares.append(timed_part(run_child(child + ["--child", "bare", "--batch-mb", str(batch_mb)], rayon, "bare",
                                              args.wait_quiet)))
    run_child(child + ["--child", "bare", "--dump", str(tmp / "ids.npz"), "--prefix-docs", "0"], rayon, "ids", 0.0)
    manifest = json.loads((tmp / "packed" / "manifest.json").read_text())
    dumped = np.load(tmp / "ids.npz")
    pieces = [p for p in np.split(dumped["ids"], np.cumsum(dumped["lengths"])[:-1]) if len(p)]
    expected = np.concatenate([np.append(p, manifest["eos_id"]) for p in pieces])
    packed = np.fromfile(fmt.tokens_path(tmp / "packed", "train"), dtype=np.dtype(manifest["dtype"]).newbyteorder("<"))
    shutil.rmtree(tmp / "packed")
    pack, bare = fastest_run(packs), fastest_run(bares)
    return {"tokenizer": str(tokenizer), "vocab_size": manifest["vocab_size"], "pack": pack, "bare": bare,
            "documents": len(pieces), "ids_identical": bool(np.array_equal(packed, expected)),
            "speedup": bare["wall_s"] / pack["wall_s"], "load_average": os.getloadavg()}


def report_families(args, results: dict) -> dict:
    goals = {}
    for family, r in results.items():
        pack, bare = r["pack"], r["bare"]
        print(f"\n{family}: vocab {r['vocab_size']:,}, {r['documents']:,} documents, {args.threads} threads, "
              f"load average {r['load_average'][0]:.1f} (1 min)")
        print(f"{'method':44} {'wall s':>8} {'tokens':>12} {'tokens/s':>11} {'cpu s':>7} {'other s':>8} {'x bare':>7}")
        for name, run in ((f"pytrain pack, encoder {pack['encoder']} (whole CLI)", pack),
                          ("bare encode_batch_fast (encode calls only)", bare)):
            print(f"{name:44} {run['wall_s']:8.2f} {run['tokens']:12,} {run['tokens'] / run['wall_s']:11,.0f} "
                  f"{run['cpu_s']:7.1f} {run['other_cpu_s']:8.1f} {bare['wall_s'] / run['wall_s']:7.2f}")
        print(f"ids identical to tokenizers + EOS on every document: {r['ids_identical']}; "
              f"bare / pack = {r['speedup']:.2f} (walls: pack {', '.join(f'{w:.2f}' for w in pack['walls_s'])}; "
              f"bare {', '.join(f'{w:.2f}' for w in bare['walls_s'])})")
        goals[f"{family}: pack >= {GOAL_FAST_SPEEDUP}x faster than bare, ids identical"] = (
            r["speedup"] >= GOAL_FAST_SPEEDUP and r["ids_identical"] and pack["encoder"] == "fast")
    for name, ok in goals.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")
    return goals


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200, help="corpus size in MB of text")
    parser.add_argument("--tokenizer", type=Path, default=RESULTS / "gpt2-tokenizer.json")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="N for every method")
    parser.add_argument("--repeat", type=int, default=1, help="runs of pytrain and bare (batched); the fastest is reported")
    parser.add_argument("--mem-scale", type=int, default=10, help="pack a corpus this many times larger (memory check)")
    parser.add_argument("--quick", action="store_true", help="skip the larger-corpus memory run")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="before each run, wait up to S seconds for the machine to go idle (shared machines)")
    parser.add_argument("--work", type=Path, default=RESULTS / "bench_pack_work", help="corpora are cached here")
    parser.add_argument("--json", type=Path, default=RESULTS / "bench_pack.json")
    parser.add_argument("--prefix-docs", type=int, default=1000, help=argparse.SUPPRESS)
    parser.add_argument("--families", nargs="+", metavar="NAME", help="per-family tables: gpt2 llama3 qwen2 qwen3 neox llama2 mistral-v3")
    parser.add_argument("--family-vocab", type=int, default=32000, help="--families: trained vocabulary size")
    parser.add_argument("--train-mb", type=int, default=4, help="--families: MB of the corpus to train on")
    parser.add_argument("--child", choices=["bare", "datasets", "fast", "tiktoken"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--batch-mb", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--dump", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        args.tokenizer = str(args.tokenizer)
        children = {"bare": child_bare, "datasets": child_datasets, "fast": child_fast, "tiktoken": child_tiktoken}
        print(json.dumps(children[args.child](args)))
        return 0

    if args.families:
        args.work.mkdir(parents=True, exist_ok=True)
        corpus = build_corpus(args.work, args.mb)
        print(f"corpus {corpus} ({corpus.stat().st_size / 1e6:.1f} MB), threads {args.threads}", flush=True)
        with tempfile.TemporaryDirectory(dir=args.work) as tmp:
            results = {family: measure_family(family, corpus, Path(tmp), args) for family in args.families}
        goals = report_families(args, results)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        path = args.json.with_name("bench_pack_families.json")
        path.write_text(json.dumps({"corpus_bytes": corpus.stat().st_size, "threads": args.threads,
                                    "families": results, "goals": goals}, indent=2) + "\n")
        print(f"wrote {path}")
        return 0 if all(goals.values()) else 1
    if not args.tokenizer.exists():
        raise SystemExit(f"{args.tokenizer}: missing; run `python benchmarks/gpt2_tokenizer.py --fetch` first")
    args.work.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(args.work, args.mb)
    print(f"corpus {corpus} ({corpus.stat().st_size / 1e6:.1f} MB), tokenizer {args.tokenizer}, threads {args.threads}",
          flush=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        results = measure(args, corpus, Path(tmp))
    goals = report(args, results)
    results.update(corpus_bytes=corpus.stat().st_size, threads=args.threads, goals=goals,
                   index_gbps={str(t): g for t, g in results["index_gbps"].items()})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
