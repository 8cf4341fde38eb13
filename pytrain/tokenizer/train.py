"""Training a BPE tokenizer from documents, shaped as a style (styles.py) or like a reference tokenizer.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from pytrain.errors import PytrainError
from pytrain.tokenizer.files import EOS_CANDIDATES, read_tokenizer, special_token_id


COMMAND = "tokenizer train"


def _check_writable(out: Path, inputs, overwrite: bool) -> None:
    """--out is never the tokenizer a pack or run folder was made with, and replaces only a tokenizer file this
    command wrote (its record beside it, pytrain.fsutil), never one of the inputs."""
    from pytrain.fsutil import refuse_existing_file

    if (out.parent / "manifest.json").exists() or (out.parent / "config.yaml").exists():
        raise PytrainError(f"{out}: is the tokenizer a pack or run in {out.parent} was made with; refusing to write "
                           "it there (write the new tokenizer elsewhere)")
    refuse_existing_file(out, overwrite, COMMAND, inputs)


def train_tokenizer(
    documents: Iterable[str], out, vocab_size: int, *, inputs=(), eos_token: str | None = None,
    special_tokens=None, min_frequency: int = 2, max_documents: int | None = None, overwrite: bool = False,
    style: str = "gpt2", like: str | Path | None = None,
) -> Path:
    """Train a BPE on `documents` (the texts `pack` would read from the files `inputs`, e.g.
    pytrain.data.sources' `Sources.texts()`), shaped as `style` (gpt2: byte-level; llama2: SentencePiece-style
    with byte fallback) or like the reference tokenizer.json `like`. `inputs` are never replaced by `out`."""
    from pytrain.fsutil import output_lock

    out = Path(out)
    if out.is_dir() or str(out).endswith("/"):
        out = out / "tokenizer.json"
    with output_lock(out, COMMAND):  # one writer: a second `tokenizer train --out` here is refused
        _check_writable(out, inputs, overwrite)
        return _train(documents, out, vocab_size, inputs=inputs, eos_token=eos_token, special_tokens=special_tokens,
                      min_frequency=min_frequency, max_documents=max_documents, style=style, like=like)


def _train(documents, out: Path, vocab_size: int, *, inputs, eos_token, special_tokens, min_frequency, max_documents,
           style, like) -> Path:
    from tokenizers import Tokenizer, trainers

    from pytrain.fsutil import write_output_file
    from pytrain.tokenizer.styles import STYLE_EOS, finished, like_reference, prepare, style_reference

    if like is not None:
        if eos_token is not None or special_tokens is not None:
            raise PytrainError("--eos-token and --special-tokens do not combine with --like: the reference's added "
                               "tokens are used (add tokens to a copy of the reference instead)")
        recipe = like_reference(*read_tokenizer(like)[1:])
    else:
        extra = ["<pad>"] if special_tokens is None and style == "gpt2" else list(special_tokens or [])
        recipe = style_reference(style, eos_token or STYLE_EOS.get(style, ""), extra)
    training = prepare(recipe)
    needed = len(training.specials) + len(training.alphabet) + len(training.others)
    if vocab_size < needed:
        raise PytrainError(
            f"--vocab-size {vocab_size} is too small: {recipe.source} needs at least {needed} "
            f"({len(training.specials)} special and byte tokens + {len(training.alphabet)} byte-level characters"
            + (f" + {len(training.others)} non-special added tokens)" if training.others else ")")
        )
    used = 0

    def counted():
        nonlocal used
        for text in documents:
            if max_documents is not None and used >= max_documents:
                return
            used += 1
            yield text

    trainer = trainers.BpeTrainer(  # the reference's non-special added tokens come on top of what is learned
        vocab_size=vocab_size - len(training.others), min_frequency=min_frequency, special_tokens=training.specials,
        initial_alphabet=training.alphabet, show_progress=False,
    )
    training.tokenizer.train_from_iterator(counted(), trainer=trainer)
    if used == 0:
        raise PytrainError(f"no documents found in {', '.join(map(str, inputs)) or 'the input'}; nothing to train on")
    text = finished(recipe, training)
    write_output_file(out, text, COMMAND)
    written = Tokenizer.from_str(text)
    eos_id = special_token_id(written, None, ((eos_token,) if eos_token else ()) + EOS_CANDIDATES, "EOS", out)
    eos = written.id_to_token(eos_id) if eos_id is not None else None
    print(f"wrote {out}: {written.get_vocab_size()} tokens ({recipe.source}, EOS {eos!r} = id {eos_id}) "
          f"from {used} documents")
    if written.get_vocab_size() < vocab_size:
        print(f"note: asked for {vocab_size} tokens, but the input only supports {written.get_vocab_size()} "
              f"merges with --min-frequency {min_frequency}; give it more text for a larger vocabulary")
    return out
