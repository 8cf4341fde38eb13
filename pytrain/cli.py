"""`pytrain <command>`: argument parsing only.

Each command's handler imports its module lazily, so `pytrain pack` or `pytrain --help`
never pays for importing torch. User errors (`PytrainError`) print one line, exit 2.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from pytrain import __version__
from pytrain.arguments import OneLineParser, integer, text
from pytrain.errors import PytrainError, Stopped

MAX_VOCAB = 1 << 24  # tokens of a trained tokenizer (tokenizers' trainer allocates in proportion)


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so `finally`/cleanup runs as for Ctrl-C."""


def _terminate(signum, frame):
    raise _Terminated()


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written; defaults shown, except None/False, which say nothing useful."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def _command(sub, name: str, help: str, examples: str, handler):
    parser = sub.add_parser(
        name,
        help=help,
        description=f"{help}\n\nexamples:\n{examples}",
        formatter_class=_Formatter,
    )
    parser.set_defaults(handler=handler)
    return parser


def _add_input_options(parser: argparse.ArgumentParser, chat: bool) -> None:
    """Options shared by every command that reads raw documents (tokenizer train, pack; `chat`: has --format)."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="JSONL (.jsonl, .jsonl.gz), text (.txt), parquet, a datasets.save_to_disk folder, hf:NAME[:CONFIG]"
                             + (", or a Megatron NAME.bin/NAME.idx pair (either file or NAME)" if chat else ""))
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--field", type=text, default=None,
                       help="JSON/parquet/dataset field holding the document (default: text"
                            + ("; messages for --format chat)" if chat else ")"))
    where.add_argument("--jq", type=text, dest="jq", default=None, metavar="PATH",
                       help="nested JSON path to the text, e.g. .meta.body or .messages[0].content")
    parser.add_argument("--txt-split", choices=["file", "paragraph"], default="file",
                        help=".txt inputs: one document per file, or per blank-line-separated paragraph")
    parser.add_argument("--on-bad-line", choices=["error", "skip"], default="error",
                        help="stop at the first malformed line (error) or count and skip it (skip)")


# ----------------------------------------------------------------------------- tokenizer
def _run_tokenizer_train(args) -> int:
    from pytrain.data.sources import ReadSettings, open_sources, parse_field_path
    from pytrain.tokenizer.train import train_tokenizer

    sources = open_sources(args.inputs, ReadSettings(parse_field_path(args.field, args.jq), txt_split=args.txt_split,
                                                     on_bad_line=args.on_bad_line))
    train_tokenizer(
        sources.texts(), args.out, args.vocab_size, inputs=args.inputs, eos_token=args.eos_token,
        special_tokens=args.special_tokens, min_frequency=args.min_frequency, max_documents=args.max_documents,
        overwrite=args.overwrite, style=args.style, like=args.like,
    )
    return 0


def _add_tokenizer(sub) -> None:
    tok = sub.add_parser("tokenizer", help="train a BPE tokenizer (GPT-2 or Llama-2 style, or like a reference)",
                         description="examples:\n  pytrain tokenizer train corpus.jsonl --vocab-size 32000 --out tokenizer.json",
                         formatter_class=_Formatter)
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True, metavar="{train}")
    p = _command(
        tok_sub, "train", "train a BPE tokenizer (HF tokenizers) from raw documents",
        "  pytrain tokenizer train corpus.jsonl --vocab-size 32000 --out tokenizer.json\n"
        "  pytrain tokenizer train books/*.txt --txt-split paragraph --vocab-size 8192 --out tok.json\n"
        "  pytrain tokenizer train corpus.jsonl --style llama2 --vocab-size 32000 --out tok.json   # <unk> <s> </s>, byte fallback\n"
        "  pytrain tokenizer train corpus.jsonl --like Llama-2-7b/tokenizer.json --vocab-size 32000 --out tok.json",
        _run_tokenizer_train,
    )
    _add_input_options(p, chat=False)
    p.add_argument("--vocab-size", type=integer(1, MAX_VOCAB, "a token count"), required=True,
                   help="final vocabulary size, special tokens included")
    p.add_argument("--out", required=True, help="where to write tokenizer.json")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--style", choices=["gpt2", "llama2"], default="gpt2",
                       help="gpt2: byte-level BPE; llama2: SentencePiece-style BPE with <0xNN> byte fallback, "
                            "as Llama-2, Mistral v0.1 and TinyLlama publish it")
    shape.add_argument("--like", metavar="REF.json", default=None,
                       help="keep this BPE tokenizer.json's normalizer, pre-tokenizer, decoder, post-processor and "
                            "added tokens; train new merges (and ids) on the input")
    p.add_argument("--eos-token", type=text, default=None,
                   help="end-of-document token (default: <|endoftext|> for gpt2, id 0; </s> for llama2, id 2)")
    p.add_argument("--special-tokens", type=text, nargs="*", default=None, metavar="TOKEN",
                   help="extra special tokens, after the style's own (default: <pad> for gpt2, none for llama2)")
    p.add_argument("--min-frequency", type=integer(0, 2**31 - 1, "a count"), default=2, help="minimum pair count for a merge")
    p.add_argument("--max-documents", type=integer(1, 2**63 - 1, "a count"), default=None,
                   help="train on at most this many documents")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


# ----------------------------------------------------------------------------- pack
def _without_blas_threads() -> None:
    """Data commands never call BLAS, but importing numpy starts OpenBLAS's thread pool, whose threads spin on
    every core for a while (measured: 5% of the CPU of a 1 GB `pytrain pack` of ready ids on 2 cores, ~0.1 s).
    Called before numpy is imported; a count the user set is kept."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _run_pack(args) -> int:
    import math
    import signal

    _without_blas_threads()
    from pytrain.data.pack import PackOptions, pack

    for name, value in (("--batch-mb", args.batch_mb), ("--max-doc-mb", args.max_doc_mb)):
        if value is not None and not math.isfinite(value):
            raise PytrainError(f"{name} must be a number of MB, not {value}")
    signal.signal(signal.SIGTERM, _terminate)  # clean the temporary output as Ctrl-C does
    sizes = {"max_doc_bytes": int(args.max_doc_mb * 2**20)} if args.max_doc_mb is not None else {}
    options = PackOptions(
        format=args.format, field=args.field, jq=args.jq, txt_split=args.txt_split, on_bad_line=args.on_bad_line,
        append_eos=args.eos, prepend_bos=args.bos, eos_token=args.eos_token, bos_token=args.bos_token,
        threads=args.threads, encoder=args.encoder, split=args.split,
        val_docs=args.val_docs or 0, val_fraction=args.val_fraction or 0.0,
        batch_bytes=int(args.batch_mb * 2**20), overwrite=args.overwrite, progress=args.progress, **sizes,
    )
    if args.shard:
        from pytrain.data.shard import pack_shard, parse_shard

        pack_shard(args.inputs, args.tokenizer, args.out, options, parse_shard(args.shard))
        return 0
    pack(args.inputs, tokenizer=args.tokenizer, out=args.out, options=options)
    return 0


def _add_pack(sub) -> None:
    p = _command(
        sub, "pack", "tokenize documents into a packed, memory-mapped token dataset",
        "  pytrain pack corpus.jsonl --tokenizer tokenizer.json --out data/\n"
        "  pytrain pack a.jsonl.gz b.parquet --tokenizer tok.json --out data/ --jq .doc.body --val-docs 1000\n"
        "  pytrain pack notes/*.txt --txt-split paragraph --tokenizer tok.json --out data/ --on-bad-line skip\n"
        "  pytrain pack chats.jsonl --format chat --tokenizer tok.json --out sft/   # trains assistant turns only\n"
        "  pytrain pack web/*.jsonl --tokenizer tok.json --out packs/web --shard 3/16   # writes packs/web/shard-00003-of-00016\n"
        "  pytrain pack pile_text_document --tokenizer neox.json --out pile/   # a Megatron NAME.bin/NAME.idx pair, ids copied\n"
        "  pytrain pack hf:roneneldan/TinyStories --split train --tokenizer tok.json --out stories/",
        _run_pack,
    )
    _add_input_options(p, chat=True)
    p.add_argument("--format", choices=["text", "chat"], default="text",
                   help="plain documents, or conversations ({'messages': [...]} or 'User: ...\\n\\nAgent: ...<eos>' "
                        "text) packed with a loss mask that trains assistant turns only")
    p.add_argument("--tokenizer", required=True, help="a tokenizer.json (ours, GPT-2's, Llama-3's, ...); for a Megatron "
                   "dataset, the one it was made with (every id is checked against it)")
    p.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    p.add_argument("--split", type=text, default=None, metavar="S", help="for hf:NAME inputs, the split to read (default: train)")
    p.add_argument("--eos", action=argparse.BooleanOptionalAction, default=True,
                   help="append the EOS token after every document")
    p.add_argument("--bos", action=argparse.BooleanOptionalAction, default=False,
                   help="prepend the BOS token before every document")
    p.add_argument("--eos-token", type=text, default=None, metavar="TOKEN",
                   help="EOS token (default: the first of <|endoftext|>, <|end_of_text|>, </s>, ... in the tokenizer)")
    p.add_argument("--bos-token", type=text, default=None, metavar="TOKEN",
                   help="BOS token (default: the first of <|begin_of_text|>, <s>, ... in the tokenizer)")
    p.add_argument("--threads", type=int, default=0,
                   help="threads for the native stages and the tokenizer (0: all cores)")
    p.add_argument("--encoder", choices=["auto", "fast", "tokenizers"], default="auto",
                   help="fast: pytrain's native BPE (same ids as tokenizers; supported byte-level and SentencePiece-style BPEs); "
                        "auto: fast when supported, else tokenizers (says why)")
    p.add_argument("--val-docs", type=int, default=None, metavar="N",
                   help="hold out the last N documents as the validation split")
    p.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="hold out an evenly spread fraction F of documents as the validation split")
    p.add_argument("--batch-mb", type=float, default=2,
                   help="MB of input per tokenizer batch (bounds memory, whatever the input size; 1 to 1024)")
    p.add_argument("--max-doc-mb", type=float, default=None,
                   help="(default 16) refuse a document (JSONL line, .txt file or paragraph, parquet/datasets cell) larger than "
                        "this before it reaches the tokenizer, which needs ~150 bytes of memory per input byte; "
                        "--on-bad-line decides: stop (error) or skip it as 'too_large'")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: only on a terminal)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory when done")
    p.add_argument("--shard", default=None, metavar="K/N|auto",
                   help="pack only the K-th (0-based) of N balanced parts of the inputs into OUT/shard-K-of-N; auto: "
                        "K and N from torchrun (RANK/WORLD_SIZE) or a Slurm array; a finished shard is skipped")


def _run_convert(args) -> int:
    import signal
    import time

    _without_blas_threads()
    from pytrain.data.megatron import write_pack

    signal.signal(signal.SIGTERM, _terminate)  # the temporary files are removed as on Ctrl-C
    started = time.perf_counter()
    done = write_pack(args.dir, args.split, args.out)
    seconds = time.perf_counter() - started
    print(f"wrote {done['bin']} and {done['idx']}: {done['documents']} documents, {done['tokens']} tokens "
          f"({done['dtype']}), {seconds:.2f} s")
    return 0


def _add_convert(sub) -> None:
    p = _command(
        sub, "convert", "write a packed dataset's split in another tool's format (Megatron-LM / GPT-NeoX indexed dataset)",
        "  pytrain convert data/ --to megatron out/corpus_text_document   # writes out/corpus_text_document.bin/.idx\n"
        "  pytrain convert data/ --to megatron out/val_text_document --split val",
        _run_convert,
    )
    p.add_argument("dir", help="a directory written by `pytrain pack`")
    p.add_argument("--to", required=True, choices=["megatron"], help="the output format")
    p.add_argument("out", metavar="OUT_PREFIX", help="Megatron: writes OUT_PREFIX.bin and OUT_PREFIX.idx (neither may exist)")
    p.add_argument("--split", type=text, default="train", help="the split to write (default: train)")


# ----------------------------------------------------------------------------- inspect / verify
def _run_inspect(args) -> int:
    from pytrain.data.inspect import inspect_dataset

    if not 1 <= args.bins <= 1000:
        raise PytrainError(f"--bins must be between 1 and 1000, not {args.bins}")

    if _is_run_dir(args.dir):
        raise PytrainError(_run_dir_data_hint(args.dir))
    inspect_dataset(args.dir, split=args.split, doc=args.doc, bins=args.bins)
    return 0


def _is_run_dir(path: str) -> bool:
    """A folder of `pytrain train`/`demo` (config.yaml and checkpoints/), not a pack (no manifest.json)."""
    return not (Path(path) / "manifest.json").exists() and (Path(path) / "checkpoints").is_dir()


def _run_dir_data_hint(path: str) -> str:
    """Where a run directory's data is, as the command to inspect it."""
    from pytrain.train.run_dir import RunDir

    data = [os.path.relpath(p) if Path(p).resolve().is_relative_to(Path.cwd().resolve()) else p
            for p in RunDir(path).data_paths()]
    commands = "; ".join(f"pytrain inspect {shlex.quote(p)}" for p in data)
    return f"{path} is a run directory, not a packed dataset; its data is {', '.join(data)}: {commands}"


def _run_verify(args) -> int:
    if _is_run_dir(args.dir):
        from pytrain.train.run_dir import verify_run

        verify_run(args.dir)
        return 0
    from pytrain.data.verify import verify_dataset

    verify_dataset(args.dir, tokenizer=args.tokenizer, mode=args.mode)
    return 0


def _add_inspect_verify(sub) -> None:
    p = _command(
        sub, "inspect", "print a packed dataset's manifest, counts, length histogram and a decoded document",
        "  pytrain inspect data/\n  pytrain inspect data/ --doc 42 --split val",
        _run_inspect,
    )
    p.add_argument("dir", help="a directory written by `pytrain pack`")
    p.add_argument("--split", choices=["train", "val"], default="train")
    p.add_argument("--doc", type=int, default=None, metavar="N", help="decode and print document N")
    p.add_argument("--bins", type=int, default=12, help="histogram bins")

    p = _command(
        sub, "verify", "check a packed dataset, or a run's checkpoints, end to end; exit non-zero on any corruption",
        "  pytrain verify data/\n  pytrain verify data/ --tokenizer tokenizer.json\n  pytrain verify data/ --mode quick\n"
        "  pytrain verify runs/my-run   # every checkpoint against its checksums",
        _run_verify,
    )
    p.add_argument("dir", help="a directory written by `pytrain pack`, or a run directory of `pytrain train`")
    p.add_argument("--tokenizer", default=None,
                   help="also check the dataset was made with this tokenizer (default: the copy inside DIR)")
    p.add_argument("--mode", choices=["full", "quick"], default="full",
                   help="full: everything, sha256 checksums included; quick: sizes, headers, offsets, counts, "
                        "EOS/BOS placement and token-id range, without hashing")


# ----------------------------------------------------------------------------- train
def _run_train(args) -> int:
    from pytrain.config import load_config

    config = load_config(args.config, args.overrides)  # a bad config fails before torch is imported
    from pytrain.train import train

    train(config, config_source=str(Path(args.config).resolve()))
    return 0


def _add_train(sub) -> None:
    p = _command(
        sub, "train", "train (or resume) a model (llama, qwen2, qwen3, mistral, gpt_neox) on a packed dataset; single process or torchrun",
        "  pytrain train --config run.yaml\n"
        "  pytrain train --config run.yaml train.steps=2000 optim.lr=1e-3 model.preset=350m\n"
        "  torchrun --nproc_per_node 8 -m pytrain train --config run.yaml\n"
        "  pytrain train --config runs/run/config.yaml checkpoint.resume_step=400",
        _run_train,
    )
    p.add_argument("--config", required=True, help="run configuration (.yaml/.yml or .json)")
    p.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE", help="override config values")


# ----------------------------------------------------------------------------- generate
def _run_generate(args) -> int:
    from pytrain.generate import run_generate
    from pytrain.model.generation import Sampling

    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    run_generate(args.run, step=args.step, prompt=args.prompt, interactive=args.interactive,
                 max_new_tokens=args.max_new_tokens, sampling=sampling, seed=args.seed, use_cache=args.cache,
                 device=args.device)
    return 0


def _add_generate(sub) -> None:
    p = _command(
        sub, "generate", "continue a prompt with a trained run's model (KV cache, streamed to stdout)",
        '  pytrain generate --run runs/demo --prompt "Return the"\n'
        '  pytrain generate --run runs/my-run --step 400 --prompt "def " --temperature 0   # greedy\n'
        "  pytrain generate --run runs/demo --interactive --top-k 20 --max-new-tokens 200",
        _run_generate,
    )
    p.add_argument("--run", required=True, help="a run directory written by `pytrain train`")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--prompt", default=None, help='text to continue ("" starts a new document)')
    p.add_argument("--interactive", action="store_true", help="read prompts from the terminal until Ctrl-D")
    p.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate at most (stops at EOS)")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 is greedy")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=0.95,
                   help="sample among the most likely tokens holding this probability (1: all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="KV cache (linear time); --no-cache re-runs the whole sequence per token")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when available")


# ----------------------------------------------------------------------------- export
def _run_export(args) -> int:
    import json

    from pytrain.export import export_run, parse_size

    out = export_run(args.run, args.out, step=args.step, dtype=args.dtype,
                     max_shard_bytes=parse_size(args.max_shard_size), overwrite=args.overwrite)
    architecture = json.loads((out / "config.json").read_text())["architectures"][0]
    print(f"wrote {out} ({architecture}): transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}) loads "
          f"it; model.init_from={out} continues training from it")
    return 0


def _add_export(sub) -> None:
    p = _command(
        sub, "export", "export a run's checkpoint as a Hugging Face folder of its family (safetensors)",
        "  pytrain export --run runs/demo --out hf-model/\n"
        "  pytrain export --run runs/big --step 4000 --out hf-model/ --dtype bf16 --max-shard-size 2GB\n"
        "  pytrain train --config run.yaml model.init_from=hf-model/   # continue training from a folder",
        _run_export,
    )
    p.add_argument("--run", required=True, help="a run directory written by `pytrain train`")
    p.add_argument("--out", required=True, help="the folder to write (must not exist unless --overwrite)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="dtype of the stored weights")
    p.add_argument("--max-shard-size", default="5GB",
                   help="split model.safetensors into shards of at most this size (e.g. 500MB, 5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder when done")


# ----------------------------------------------------------------------------- eval
def _run_eval(args) -> int:
    from pytrain.eval import run_eval

    if (args.run is None) == (args.run_dir is None):
        raise PytrainError("name the run once: pytrain eval RUN ... (or --run RUN)")
    run_eval(args.run or args.run_dir, tasks=args.tasks.split(","), out=args.out, step=args.step,
             include_path=args.include_path, num_fewshot=args.num_fewshot, limit=args.limit, batch_size=args.batch_size,
             bootstrap_iters=args.bootstrap_iters, dtype=args.dtype, device=args.device, shard=args.shard,
             overwrite=args.overwrite)
    return 0


def _add_eval(sub) -> None:
    p = _command(
        sub, "eval", "score a run's checkpoint on lm-evaluation-harness tasks (offline; torchrun splits the work)",
        "  pytrain eval --run runs/my-run --tasks hellaswag,arc_easy --out results.json   # tasks in the datasets cache\n"
        "  pytrain eval --run runs/my-run --step 400 --tasks my_task --include-path tasks/ --limit 100 --out r.json\n"
        "  torchrun --nproc_per_node 8 -m pytrain eval runs/big --tasks lambada_openai --out r.json   # sharded",
        _run_eval,
    )
    p.add_argument("run_dir", nargs="?", metavar="RUN",
                   help="a run directory written by `pytrain train` (under torchrun name it here: torchrun takes --run "
                        "for its own --run-path)")
    p.add_argument("--run", default=None, help="the run directory, as the other commands take it")
    p.add_argument("--tasks", required=True, metavar="T1,T2", help="comma-separated harness task (or group) names")
    p.add_argument("--out", default=None, help="write the harness's results JSON here (lm_eval --output_path's schema)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--include-path", default=None, metavar="DIR", help="a folder of task YAML files (local data)")
    p.add_argument("--num-fewshot", type=int, default=None, metavar="K", help="few-shot examples (default: the task's)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate at most N documents per task")
    p.add_argument("--batch-size", type=int, default=8, metavar="B", help="sequences per forward")
    p.add_argument("--bootstrap-iters", type=int, default=100000, metavar="N",
                   help="bootstrap samples for the standard errors of non-mean metrics, as lm_eval (0: no stderr)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="compute dtype")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when available")
    p.add_argument("--shard", action=argparse.BooleanOptionalAction, default=True,
                   help="under torchrun, shard the model over the ranks with FSDP2; --no-shard: a whole copy per rank")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out results file of pytrain eval")


# ----------------------------------------------------------------------------- plot / env
def _run_plot(args) -> int:
    from pytrain.plot import plot_runs

    print(f"wrote {plot_runs(args.run, args.out)}")
    return 0


def _run_env(args) -> int:
    from pytrain.env import print_report

    print_report()
    return 0


def _add_plot_env(sub) -> None:
    p = _command(
        sub, "plot", "plot loss, validation loss, learning rate and tokens/s of one or more runs (PNG)",
        "  pytrain plot --run runs/demo\n  pytrain plot --run runs/a --run runs/b --out compare.png",
        _run_plot,
    )
    p.add_argument("--run", action="append", required=True, metavar="DIR",
                   help="a run directory (repeat to overlay runs)")
    p.add_argument("--out", default=None, help="PNG to write (default: plot.png in the first run directory)")

    _command(sub, "env", "report Python, torch, CUDA/GPU, triton, the native extension and which kernels run",
             "  pytrain env", _run_env)


# ----------------------------------------------------------------------------- demo
def _run_demo(args) -> int:
    from pytrain.demo import run_demo

    run_demo(args.out, steps=args.steps, small=args.small, overwrite=args.overwrite)
    return 0


def _add_demo(sub) -> None:
    p = _command(
        sub, "demo", "the whole pipeline on the standard library's docs: corpus, tokenizer, pack, train, "
                     "samples, export (no downloads; minutes on a laptop CPU, faster on a GPU)",
        "  pytrain demo\n  pytrain demo --out runs/demo2 --steps 2000\n  pytrain demo --small --out /tmp/d   # seconds",
        _run_demo,
    )
    p.add_argument("--out", default="runs/demo", help="the run directory to create")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 1000, or 12 with --small)")
    p.add_argument("--small", action="store_true", help="a reduced corpus, vocabulary and model run (for tests)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")


# ----------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="pytrain",
        description="Pre-train (or continue) Llama, Qwen2/3, Mistral and GPT-NeoX language models.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"pytrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_tokenizer(sub)
    _add_pack(sub)
    _add_convert(sub)
    _add_inspect_verify(sub)
    _add_train(sub)
    _add_generate(sub)
    _add_export(sub)
    _add_eval(sub)
    _add_plot_env(sub)
    _add_demo(sub)
    return parser


def _resume_hint(args, argv: list[str]) -> str:
    """For an interrupted `pytrain train`: the command that continues it (the run resumes from its latest
    checkpoint when started again the same way, `checkpoint.resume: auto`)."""
    if args.command != "train":
        return ""
    return f"; resume from the latest checkpoint with the same command: {shlex.join(['pytrain', *argv])}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except PytrainError as error:
        print(f"pytrain {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `pytrain inspect data/ | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 0
    except ImportError as error:
        if not (error.name or "").startswith("pytrain"):
            raise
        print(f"pytrain {args.command}: error: {error}", file=sys.stderr)  # says what to run (source checkout)
        return 2
    except OSError as error:  # unreadable input, read-only output folder, full disk, ...
        where = f"{error.filename}: " if error.filename else ""
        print(f"pytrain {args.command}: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except Stopped as stop:  # on every rank; said by the first
        if os.environ.get("RANK", "0") == "0":
            print(f"pytrain {args.command}: {stop}{_resume_hint(args, argv)}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print(f"pytrain {args.command}: interrupted{_resume_hint(args, argv)}", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"pytrain {args.command}: terminated (SIGTERM); nothing was left behind{_resume_hint(args, argv)}",
              file=sys.stderr)
        return 143


def command() -> None:
    """The `pytrain` command (and `python -m pytrain`): main(), then exit.

    After a failed command that loaded torch, the process leaves without the interpreter's finalization:
    torch's teardown there (gloo's worker threads, notably) can abort the process after the error was
    printed ("terminate called without an active exception", seen once in CI after a refused resume),
    which would turn a clean one-line refusal with exit code 2 into SIGABRT. Everything of ours is closed by
    then (context managers and finally blocks have run); only the standard streams need flushing."""
    code = main()
    if code != 0 and "torch" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    command()
