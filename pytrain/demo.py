"""`pytrain demo`: the whole pipeline on an embedded default, with no downloads, in one run directory.

    corpus.jsonl        help topics and docstrings of this Python's standard library (pytrain.data.corpus)
    data/               a byte-level BPE tokenizer trained on it, and the corpus packed with it
    config.yaml, checkpoints/, train.log, metrics.jsonl, tokenizer.json
                        a `pytrain train` run of the `tiny` preset (CUDA when there is a GPU)
    hf/                 the trained model exported as a Hugging Face LlamaForCausalLM folder

Every stage calls the same module the corresponding command does; the run directory is an ordinary run
(`pytrain generate/plot/export --run DIR` work on it). The default size takes about 90 s on one free
CPU core (docs/demo.md#speed); `small` is the reduced size the tests run.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pytrain.errors import PytrainError
from pytrain.fsutil import (OUTPUT_MARKER, atomic_write_text, file_marker_of, output_lock, read_output_marker,
                            why_not_replaceable, write_output_marker)
from pytrain.progress import duration, human

# No trailing spaces: byte-level BPE attaches a space to the word after it, so "The " ends unnaturally.
PROMPTS = ("The", "Return the", "This module")
SAMPLES = "samples.txt"


@dataclass(frozen=True)
class DemoSize:
    max_files: int | None  # stdlib files whose docstrings are read (None: all)
    vocab_size: int
    seq_len: int
    batch_size: int
    steps: int
    lr: float
    sample_tokens: int


# About 2M training tokens (4 epochs of the corpus). Batches of 8 x 256 make more updates per token than
# larger ones and keep the [tokens, vocab] logits under glibc's mmap threshold (no page faults every step).
DEFAULT = DemoSize(max_files=None, vocab_size=2048, seq_len=256, batch_size=8, steps=1000, lr=5e-3,
                   sample_tokens=48)
SMALL = DemoSize(max_files=30, vocab_size=384, seq_len=64, batch_size=8, steps=12, lr=5e-3, sample_tokens=8)


def run_demo(out: str | Path, *, steps: int | None = None, small: bool = False, overwrite: bool = False) -> Path:
    """Build corpus, tokenizer, packed data, a trained tiny model, samples and an HF export under `out`."""
    size = SMALL if small else DEFAULT
    steps = size.steps if steps is None else steps
    if steps <= 0:
        raise PytrainError(f"--steps must be positive, got {steps}")
    out = Path(out)
    with output_lock(out, "demo"):  # one demo per folder: a second one is refused, not interleaved
        return _run(out, size, steps, overwrite)


def _run(out: Path, size: DemoSize, steps: int, overwrite: bool) -> Path:
    from pytrain.data.corpus import stdlib_documents, write_jsonl
    from pytrain.data.pack import PackOptions, pack
    from pytrain.tokenizer.train import train_tokenizer
    from pytrain.export import export_run
    from pytrain.plot import plot_runs
    from pytrain.train import train
    from pytrain.train.distributed import pick_device
    from pytrain.train.run_dir import RunDir

    _clear_earlier_demo(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    write_output_marker(out, "demo")  # first, listing nothing: a crash leaves a recognisable demo folder
    RunDir(out).claim()  # the run's folder: training refuses folders that are not runs (the corpus is here first)
    device = pick_device()
    started = time.perf_counter()

    _stage(1, "corpus: the standard library's help topics and docstrings")
    documents = stdlib_documents(max_files=size.max_files)
    corpus_bytes = write_jsonl(out / "corpus.jsonl", documents)
    print(f"wrote {out / 'corpus.jsonl'}: {len(documents)} documents, {corpus_bytes / 1e6:.1f} MB")

    _stage(2, f"tokenizer: byte-level BPE, {size.vocab_size} tokens")
    tokenizer = train_tokenizer(documents, out / "tokenizer.json", size.vocab_size)

    _stage(3, "pack: tokenize into a memory-mapped dataset, 5% held out for validation")
    pack([out / "corpus.jsonl"], tokenizer=tokenizer, out=out / "data",
         options=PackOptions(val_fraction=0.05, progress=False))

    _stage(4, f"train: the tiny preset, {steps} steps of {size.batch_size} x {size.seq_len} tokens on {device}")
    train(_train_config(out, size, steps))
    val = _last_eval(out)

    _stage(5, "samples (temperature 0.8, top-k 50, top-p 0.95) and the loss curve")
    _write_samples(out, size.sample_tokens, device)
    print(f"wrote {out / SAMPLES} and {plot_runs([str(out)])}")

    _stage(6, "export: a Hugging Face LlamaForCausalLM folder")
    export_run(out, out / "hf")
    print(f"wrote {out / 'hf'}")
    write_output_marker(out, "demo")  # last: what a later --overwrite may replace

    _summary(out, time.perf_counter() - started, len(documents), val)
    return out


# Everything a demo folder can hold: what the demo writes, and what later commands on the run add.
DEMO_ENTRIES = {"corpus.jsonl", "tokenizer.json", file_marker_of("tokenizer.json").name, "data", "config.yaml",
                "run.json", ".lock", "checkpoints", "train.log", "metrics.jsonl", "tensorboard", "wandb_id", SAMPLES,
                "plot.png", "hf", OUTPUT_MARKER}
# checkpoints/ entries, and (with a leading "/") the files inside a step or temporary directory
_CHECKPOINT_ENTRY = re.compile(r"step_[0-9]+|latest|\.tmp-.*|\.latest\.tmp-.*"
                               r"|/(\.metadata|__[0-9]+_[0-9]+\.distcp|rng_rank[0-9]+\.pt|train_state\.json|checksums\.json"
                               r"|\.[\w.]+\.tmp-\w+)")


def _clear_earlier_demo(out: Path, overwrite: bool) -> None:
    """Make room for a demo in `out`: an absent or empty folder is used as is; a demo that never finished (its
    marker is still the first one, listing nothing) is started again; a finished one, continued or not,
    needs --overwrite. Only a folder that is provably the demo's own is deleted (see _not_a_demo)."""
    if not out.exists() or (out.is_dir() and not out.is_symlink() and not any(out.iterdir())):
        return
    reason = _not_a_demo(out)
    if reason:
        raise PytrainError(f"{out}: already exists and {reason}, so the demo will not delete it; choose another --out")
    finished = bool(read_output_marker(out)["files"])  # the first marker lists nothing, the last one everything
    if finished and not overwrite:
        raise PytrainError(f"{out}: already exists (a finished demo); pass --overwrite to replace it, or choose "
                           "another --out")
    if not finished:
        print(f"{out}: an earlier demo did not finish; starting it again")
    shutil.rmtree(out)


def _not_a_demo(out: Path) -> str | None:
    """Why `out` is not (only) a demo's run folder, or None: it carries the demo's marker, and holds nothing
    but the demo's outputs (the pack and export checked by their own markers), checkpoints, and the hidden
    temporary names pytrain's atomic writes leave after a crash."""
    if out.is_symlink() or not out.is_dir():
        return "is not a directory"
    marker = read_output_marker(out)
    if marker is None or marker.get("command") != "demo":
        return f"has no demo {OUTPUT_MARKER}"
    for entry in out.iterdir():
        name = entry.name
        if name.startswith(".") and (".tmp-" in name or name.endswith(".lock")):
            continue  # debris of an interrupted atomic write, or the lock of a killed writer (fsutil.output_lock)
        if name not in DEMO_ENTRIES or entry.is_symlink():
            return f"holds {name}, which the demo does not write"
        if name in ("data", "hf") and why_not_replaceable(entry, "pack" if name == "data" else "export"):
            return f"holds {name}/, which is not the demo's {'pack' if name == 'data' else 'export'}"
        if name == "tensorboard":
            odd = [str(p.relative_to(entry)) for p in entry.rglob("*") if not p.name.startswith("events.out.tfevents")]
            if odd:
                return f"holds tensorboard/{odd[0]}, which TensorBoard's writer does not write"
        if name == "checkpoints":
            odd = [str(p.relative_to(entry)) for p in entry.rglob("*")
                   if not _CHECKPOINT_ENTRY.fullmatch(p.name if p.parent == entry else "/" + p.name)]
            if odd:
                return f"holds checkpoints/{odd[0]}, which the trainer does not write"
    return None


def _stage(number: int, text: str) -> None:
    print(f"\n[{number}/6] {text}", flush=True)


def _train_config(out: Path, size: DemoSize, steps: int):
    from pytrain.config import RunConfig

    config = RunConfig()
    config.model.preset = "tiny"
    config.data.path = str((out / "data").resolve())
    config.data.seq_len = size.seq_len
    config.optim.lr = size.lr
    config.train.steps = steps
    config.train.batch_size = size.batch_size
    config.train.eval_every = max(1, steps // 4)
    config.train.eval_max_batches = 8
    config.train.run_dir = str(out.resolve())
    config.checkpoint.every = max(1, steps // 4)  # README: `generate --step 500` picks an earlier one
    config.checkpoint.keep_last_k = 4
    config.logging.every = max(1, min(10, steps // 20))
    return config


def _last_eval(out: Path) -> dict | None:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [row for row in rows if "val_loss" in row]
    return evals[-1] if evals else None


def _write_samples(out: Path, max_new_tokens: int, device: str) -> None:
    """Print three completions and keep them in the run directory (samples.txt)."""
    import torch

    from pytrain.model.generation import Sampling, generate_tokens, prompt_ids
    from pytrain.train.run_dir import RunDir

    run = RunDir(out)
    model, model_config = run.load_model(device=device)
    tokenizer = run.tokenizer()
    eos_id = run.eos_id(tokenizer)
    generator = torch.Generator(device=device).manual_seed(0)
    lines = []
    for prompt in PROMPTS:
        new = list(generate_tokens(model, prompt_ids(tokenizer, prompt, eos_id), max_new_tokens=max_new_tokens,
                                   max_len=model_config.context_length, sampling=Sampling(),
                                   eos_id=eos_id, generator=generator))
        lines.append(f"{prompt!r} -> {tokenizer.decode(new, skip_special_tokens=True)!r}")
        print(lines[-1])
    atomic_write_text(out / SAMPLES, "".join(line + "\n" for line in lines))


def _summary(out: Path, seconds: float, documents: int, val: dict | None) -> None:
    from pytrain.train.checkpoint import list_checkpoints

    manifest = json.loads((out / "data" / "manifest.json").read_text())
    splits = manifest["splits"]
    checkpoint = (out / "checkpoints" / "latest").read_text().strip()
    kept = list(list_checkpoints(out / "checkpoints"))
    earlier = kept[max(0, len(kept) // 2 - 1)]
    score = f", validation loss {val['val_loss']:.3f} (perplexity {val['val_ppl']:.1f})" if val else ""
    print(f"\ndone in {duration(seconds)}. Made under {out}/:")
    for path, what in (
        ("corpus.jsonl", f"{documents} documents from the standard library"),
        ("data/", f"packed dataset: train {human(splits['train']['tokens'])} tokens, "
                  f"val {human(splits['val']['tokens'])} tokens, tokenizer.json inside"),
        (f"checkpoints/{checkpoint}/", f"the trained model{score}"),
        ("config.yaml, train.log, metrics.jsonl", "the run's resolved config, log and metrics"),
        ("plot.png, samples.txt", "the loss curves and the samples above"),
        ("hf/", "Hugging Face folder: AutoModelForCausalLM.from_pretrained(...) loads it"),
    ):
        print(f"  {path:<38} {what}")
    print("\nnext:")
    for command in (
        f'pytrain generate --run {out} --prompt "Return the"',
        f"pytrain generate --run {out} --interactive",
        f'pytrain generate --run {out} --step {earlier} --prompt "def " --temperature 0   # an earlier checkpoint, greedy',
        f"pytrain plot --run {out} --run runs/other   # overlay another run's curves",
        f"pytrain inspect {out}/data --doc 0",
        f"pytrain export --run {out} --out my-model  # what made {out}/hf",
    ):
        print(f"  {command}")
