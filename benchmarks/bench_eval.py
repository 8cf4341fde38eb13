"""Requests/s of `pytrain eval` (PytrainLM on the run's checkpoint) against `lm_eval --model hf` (the harness's
Hugging Face backend on the run's `pytrain export` folder): the same model, tasks, batch size and device.

    python benchmarks/bench_eval.py                          # a `pytrain demo --small` run, CPU
    python benchmarks/bench_eval.py --run runs/my-run --device cuda --docs 500 --batch-size 32

Three local tasks are written from the standard library's docstrings (no downloads): multiple choice
(--docs documents x 4 choices: loglikelihood requests), rolling log-likelihood (--docs / 4 documents of up
to 4000 characters: loglikelihood_rolling requests, several windows each when longer than the context) and
greedy generation (--docs / 10 prompts, 16 tokens at most: generate_until requests). Each backend's language
model is built once (loading is not timed); each row is the fastest of --repeat `simple_evaluate` calls on
one task (request building, the model calls and the metrics: what `lm_eval` spends per task), the two
backends taking turns; the CPU seconds of the process are shown beside the wall time. The scores of
both backends are printed beside the times (they agree: tests/harness/test_harness.py). The load average
before and after is recorded: on a shared machine the figures are only comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"  # pytrain[eval] is imported as installed: the checkout's kernels/ folder on sys.path
                            # would shadow the `kernels` package transformers looks for


def write_tasks(folder: Path, docs: int) -> dict[str, int]:
    """The three task YAMLs and their JSONL; returns {task: documents}."""
    import random

    import yaml

    from pytrain.data.corpus import stdlib_documents

    texts = [t for t in stdlib_documents(max_files=200) if len(t) > 200]
    rng = random.Random(0)
    words = [" return", " import", " self", " None", " def", " class", " for", " with"]
    sizes = {"bench_mc": docs, "bench_roll": max(1, docs // 4), "bench_gen": max(1, docs // 10)}
    rows = {
        "bench_mc": [{"question": texts[i % len(texts)][:200], "choices": rng.sample(words, 4), "answer": i % 4}
                     for i in range(sizes["bench_mc"])],
        "bench_roll": [{"text": texts[i % len(texts)][:4000]} for i in range(sizes["bench_roll"])],
        "bench_gen": [{"prompt": texts[i % len(texts)][:120], "target": " x"} for i in range(sizes["bench_gen"])],
    }
    kinds = {
        "bench_mc": {"output_type": "multiple_choice", "doc_to_text": "{{question}}", "doc_to_choice": "{{choices}}",
                     "doc_to_target": "{{answer}}", "metric_list": [{"metric": "acc"}]},
        "bench_roll": {"output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
                       "metric_list": [{"metric": "bits_per_byte"}]},
        "bench_gen": {"output_type": "generate_until", "doc_to_text": "{{prompt}}", "doc_to_target": "{{target}}",
                      "generation_kwargs": {"until": ["\n\n"], "max_gen_toks": 16, "do_sample": False},
                      "metric_list": [{"metric": "exact_match"}]},
    }
    for task, data in rows.items():
        (folder / f"{task}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in data))
        (folder / f"{task}.yaml").write_text(yaml.safe_dump({
            "task": task, "dataset_path": "json", "test_split": "test",
            "dataset_kwargs": {"data_files": {"test": str(folder / f"{task}.jsonl")}}, **kinds[task]}))
    return sizes


def timed(fn) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of this process, fn's result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="a run directory (default: `pytrain demo --small` in a temp folder)")
    parser.add_argument("--docs", type=int, default=120, help="multiple-choice documents (rolling: /4, generation: /10)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "bench_eval.json"))
    args = parser.parse_args()

    from pytrain.harness.tasks import require_harness

    require_harness()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = Path(args.run) if args.run else tmp / "run"
        if not args.run:
            subprocess.run([sys.executable, "-m", "pytrain", "demo", "--small", "--out", str(run)], check=True,
                           capture_output=True)
        subprocess.run([sys.executable, "-m", "pytrain", "export", "--run", str(run), "--out", str(tmp / "hf")],
                       check=True, capture_output=True)
        (tmp / "tasks").mkdir()
        sizes = write_tasks(tmp / "tasks", args.docs)

        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        from pytrain.eval import load_lm, resolve_step
        from pytrain.train.run_dir import RunDir

        manager = TaskManager(include_path=str(tmp / "tasks"), include_defaults=False)
        run_dir = RunDir(run)
        models = {
            "pytrain eval": load_lm(run_dir, resolve_step(run_dir, None), batch_size=args.batch_size, dtype="fp32",
                                  device=args.device, shard=False)[0],
            "lm_eval --model hf": HFLM(pretrained=str(tmp / "hf"), dtype="float32", batch_size=args.batch_size,
                                       device=args.device),
        }
        rows = []
        for task, documents in sizes.items():
            best = {name: (float("inf"), float("inf"), None) for name in models}
            for _ in range(args.repeat):  # the backends take turns, so a busy spell of the machine hits both
                for name, lm in models.items():
                    wall, cpu, results = timed(lambda: simple_evaluate(
                        model=lm, tasks=[task], task_manager=manager, bootstrap_iters=0, log_samples=False,
                        batch_size=args.batch_size))
                    best[name] = (min(best[name][0], wall), min(best[name][1], cpu), results)
            for name, (wall, cpu, results) in best.items():
                requests = documents * (4 if task == "bench_mc" else 1)  # a choice is one loglikelihood request
                score = {k: v for k, v in results["results"][task].items() if "," in k and "stderr" not in k}
                rows.append({"task": task, "backend": name, "documents": documents, "requests": requests,
                             "seconds": wall, "cpu_seconds": cpu, "requests_per_s": requests / wall, "score": score})
    load_after = os.getloadavg()
    device = args.device if args.device == "cpu" else __import__("torch").cuda.get_device_name()
    print(f"model: {run}, device {device}, batch {args.batch_size}, {os.cpu_count()} CPUs, "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (fastest of {args.repeat})")
    print(f"{'task':<11} {'backend':<19} {'requests':>8} {'seconds':>8} {'CPU s':>8} {'req/s':>8}  score")
    for row in rows:
        print(f"{row['task']:<11} {row['backend']:<19} {row['requests']:>8} {row['seconds']:>8.3f} "
              f"{row['cpu_seconds']:>8.3f} {row['requests_per_s']:>8.1f}  {row['score']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "cpus": os.cpu_count(), "batch_size": args.batch_size,
                               "load_average_before": load_before, "load_average_after": load_after,
                               "rows": rows}, indent=2, default=float) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
