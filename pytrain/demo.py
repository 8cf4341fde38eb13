"""`pytrain demo`: the whole pipeline on an embedded default, with no downloads, in one run directory.

    corpus.jsonl        help topics and docstrings of this Python's standard library (pytrain.data.corpus)
    data/               a byte-level BPE tokenizer trained on it, and the corpus packed with it
    config.yaml, checkpoints/, train.log, metrics.jsonl, tokenizer.json
                        a `pytrain train` run of the `tiny` preset (CUDA when there is a GPU)
    hf/                 the trained model exported as a Hugging Face LlamaForCausalLM folder

Every stage calls the same module the corresponding command does; the run directory is an ordinary run
(`pytrain generate/plot/export --run DIR` work on it). The default size trains in a few minutes on two
CPU cores; `small` is the reduced size the tests run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from pytrain.errors import PytrainError
from pytrain.fsutil import replace_output_directory, write_output_marker
from pytrain.progress import duration, human

# No trailing spaces: byte-level BPE attaches a space to the word after it, so "The " ends unnaturally.
PROMPTS = ("The", "Return the", "This module")


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
    import torch

    from pytrain.data.corpus import stdlib_documents, write_jsonl
    from pytrain.data.pack import PackOptions, pack
    from pytrain.data.tokenizer import train_tokenizer
    from pytrain.export import export_run
    from pytrain.train import train

    size = SMALL if small else DEFAULT
    steps = size.steps if steps is None else steps
    if steps <= 0:
        raise PytrainError(f"--steps must be positive, got {steps}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise PytrainError(f"{out}: already exists; pass --overwrite to replace it, or choose another --out")
        replace_output_directory(out, "demo")
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()

    _stage(1, "corpus: the standard library's help topics and docstrings")
    documents = stdlib_documents(max_files=size.max_files)
    corpus_bytes = write_jsonl(out / "corpus.jsonl", documents)
    print(f"wrote {out / 'corpus.jsonl'}: {len(documents)} documents, {corpus_bytes / 1e6:.1f} MB")

    _stage(2, f"tokenizer: byte-level BPE, {size.vocab_size} tokens")
    tokenizer = train_tokenizer([out / "corpus.jsonl"], out / "tokenizer.json", vocab_size=size.vocab_size)

    _stage(3, "pack: tokenize into a memory-mapped dataset, 5% held out for validation")
    pack([out / "corpus.jsonl"], tokenizer=tokenizer, out=out / "data",
         options=PackOptions(val_fraction=0.05, progress=False))

    _stage(4, f"train: the tiny preset, {steps} steps of {size.batch_size} x {size.seq_len} tokens on {device}")
    train(_train_config(out, size, steps))
    val = _last_eval(out)

    _stage(5, "samples (temperature 0.8, top-k 50, top-p 0.95)")
    _print_samples(out, size.sample_tokens, device)

    _stage(6, "export: a Hugging Face LlamaForCausalLM folder")
    export_run(out, out / "hf")
    print(f"wrote {out / 'hf'}")
    write_output_marker(out, "demo")  # last: what a later --overwrite may replace

    _summary(out, time.perf_counter() - started, len(documents), val)
    return out


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
    config.checkpoint.every = 0  # the final step only
    config.logging.every = max(1, min(10, steps // 20))
    return config


def _last_eval(out: Path) -> dict | None:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [row for row in rows if "val_loss" in row]
    return evals[-1] if evals else None


def _print_samples(out: Path, max_new_tokens: int, device: str) -> None:
    import torch

    from pytrain.data.tokenizer import EOS_CANDIDATES, load_tokenizer, special_token_id
    from pytrain.generate import Sampling, generate_tokens, prompt_ids
    from pytrain.train.checkpoint import load_model_for_inference

    model, model_config, tokenizer_path = load_model_for_inference(out, device=device)
    tokenizer = load_tokenizer(tokenizer_path)
    eos_id = special_token_id(tokenizer, None, EOS_CANDIDATES, "EOS", tokenizer_path)
    generator = torch.Generator(device=device).manual_seed(0)
    for prompt in PROMPTS:
        new = list(generate_tokens(model, prompt_ids(tokenizer, prompt, eos_id), max_new_tokens=max_new_tokens,
                                   max_len=model_config.max_position_embeddings, sampling=Sampling(),
                                   eos_id=eos_id, generator=generator))
        print(f"{prompt!r} -> {tokenizer.decode(new, skip_special_tokens=True)!r}")


def _summary(out: Path, seconds: float, documents: int, val: dict | None) -> None:
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    splits = manifest["splits"]
    checkpoint = (out / "checkpoints" / "latest").read_text().strip()
    score = f", validation loss {val['val_loss']:.3f} (perplexity {val['val_ppl']:.1f})" if val else ""
    print(f"\ndone in {duration(seconds)}. Made under {out}/:")
    for path, what in (
        ("corpus.jsonl", f"{documents} documents from the standard library"),
        ("data/", f"packed dataset: train {human(splits['train']['tokens'])} tokens, "
                  f"val {human(splits['val']['tokens'])} tokens, tokenizer.json inside"),
        (f"checkpoints/{checkpoint}/", f"the trained model{score}"),
        ("config.yaml, train.log, metrics.jsonl", "the run's resolved config, log and metrics"),
        ("hf/", "Hugging Face folder: AutoModelForCausalLM.from_pretrained(...) loads it"),
    ):
        print(f"  {path:<38} {what}")
    print("\nnext:")
    for command in (
        f'pytrain generate --run {out} --prompt "Return the"',
        f"pytrain generate --run {out} --interactive",
        f"pytrain plot --run {out}                  # writes {out}/plot.png (pip install 'pytrain[plot]')",
        f"pytrain inspect {out}/data --doc 0",
        f"pytrain export --run {out} --out my-model  # what made {out}/hf",
    ):
        print(f"  {command}")
