"""Training-step throughput of each family's tiny preset on CPU: pytrain's model vs transformers' own model
of the same config and weights, forward + backward of the loss, same threads.

    python benchmarks/bench_families.py                       # batch 8 x seq 128, 1 thread, 20 timed steps
    python benchmarks/bench_families.py --threads 1 --steps 10 --out benchmarks/results/families.json

For each family the pytrain model is initialised, exported with `pytrain.export.export_model`, and the
export is loaded with `transformers.AutoModelForCausalLM` (so both hold the very same weights, and the
config mapping is the one users get). Before timing, the two losses on the batch must agree within 1e-4.
Each timed step is `loss = model(ids, labels); loss.backward()` (transformers: `model(ids, labels=...)`,
its own shift and cross-entropy); the median of --steps steps after 3 warm-up steps gives tokens/s. The
load average before and after is recorded: the figures are only as steady as the machine is quiet.
Prints a table and writes JSON (default benchmarks/results/families.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAMILY_PRESETS = ("tiny", "tiny-qwen2", "tiny-qwen3", "tiny-mistral", "tiny-gpt_neox", "tiny-moe", "tiny-qwen2_moe",
                  "tiny-mixtral", "tiny-olmoe")


def _tokenizer(folder: Path, vocab_size: int) -> Path:
    """A word-level tokenizer.json with `vocab_size` tokens, only for export_model's tokenizer files."""
    from tokenizers import Tokenizer, models

    vocab = {"<|endoftext|>": 0, **{f"t{i}": i for i in range(1, vocab_size)}}
    path = folder / "tokenizer.json"
    Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>")).save(str(path))
    return path


def _median_step_seconds(step, steps: int) -> float:
    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_family(preset_name: str, *, batch: int, seq: int, steps: int, folder: Path) -> dict:
    import torch
    import torch.nn.functional as F
    import transformers

    from pytrain.export import export_model
    from pytrain.model import build_model, preset

    config = preset(preset_name)
    ours = build_model(config)
    ours.init_weights(seed=0)
    export_model(ours, config, _tokenizer(folder, config.vocab_size), folder / preset_name)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder / preset_name, dtype=torch.float32)
    ours.train()
    theirs.train()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch, seq + 1), generator=generator)
    inputs, labels = ids[:, :-1], ids[:, 1:]
    with torch.no_grad():
        loss_ours = ours(inputs, labels).item()
        logits = theirs(inputs).logits
        loss_theirs = F.cross_entropy(logits.flatten(0, 1), labels.flatten()).item()
    if abs(loss_ours - loss_theirs) > 1e-4 * abs(loss_theirs):
        raise SystemExit(f"{preset_name}: losses differ (pytrain {loss_ours}, transformers {loss_theirs})")

    def step_ours():
        ours.zero_grad(set_to_none=True)
        ours(inputs, labels).backward()

    def step_theirs():
        theirs.zero_grad(set_to_none=True)
        theirs(ids, labels=ids).loss.backward()  # transformers shifts the labels itself

    tokens = batch * seq
    seconds_ours = _median_step_seconds(step_ours, steps)
    seconds_theirs = _median_step_seconds(step_theirs, steps)
    return {"preset": preset_name, "family": config.family, "params": config.num_params(),
            "loss_pytrain": loss_ours, "loss_transformers": loss_theirs,
            "tokens_per_s_pytrain": tokens / seconds_ours, "tokens_per_s_transformers": tokens / seconds_theirs,
            "speedup": seconds_theirs / seconds_ours}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(FAMILY_PRESETS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "families.json")
    args = parser.parse_args(argv)

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets:
            rows.append(bench_family(name, batch=args.batch, seq=args.seq, steps=args.steps, folder=Path(tmp)))
            print(f"  {name}: done", file=sys.stderr)
    load_after = os.getloadavg()
    header = (f"CPU, {args.threads} thread(s), batch {args.batch} x seq {args.seq}, fp32, forward+backward, median of "
              f"{args.steps} steps; torch {torch.__version__}, transformers {transformers.__version__}; load average "
              f"(1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(header)
    print()
    print("| preset | family | params | pytrain tokens/s | transformers tokens/s | pytrain / transformers |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['preset']} | {row['family']} | {row['params'] / 1e3:.0f}k | {row['tokens_per_s_pytrain']:,.0f} | "
              f"{row['tokens_per_s_transformers']:,.0f} | {row['speedup']:.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"threads": args.threads, "batch": args.batch, "seq": args.seq, "steps": args.steps,
              "torch": torch.__version__, "transformers": transformers.__version__,
              "load_average_before": load_before, "load_average_after": load_after, "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
