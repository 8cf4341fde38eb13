"""BPE tokenizers: train one from raw documents (styles: tokenizer_styles.py), or load any tokenizer.json.

Any HF `tokenizer.json` (ours, GPT-2's, Llama-2's, Llama-3's) works wherever pytrain takes a
tokenizer; its EOS/BOS tokens are found by name unless given explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path

from pytrain.errors import PytrainError

EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")
BOS_CANDIDATES = ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>")


def tokenizer_file(path: str | Path) -> Path:
    """A tokenizer.json path, or a folder holding one (a dataset, run or HF export)."""
    path = Path(path)
    return path / "tokenizer.json" if path.is_dir() else path


def read_tokenizer(path: str | Path):
    """(Tokenizer, the exact bytes it was built from, the file's path), with one-line errors.

    Callers that record or copy the tokenizer use these bytes, so a file replaced while
    they run cannot make the record disagree with what was used.
    """
    from tokenizers import Tokenizer

    path = tokenizer_file(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PytrainError(f"{path}: no such tokenizer file; train one with `pytrain tokenizer train`") from None
    except OSError as error:
        raise PytrainError(f"{path}: cannot read the tokenizer ({error.strerror})") from None
    try:
        return Tokenizer.from_str(raw.decode("utf-8")), raw, path
    except Exception as error:  # tokenizers raises a bare Exception for parse errors
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        from pytrain.data.tokenizer_json import located_problem

        problem = _keyed_problem(raw) or located_problem(raw, first_line) or first_line
        raise PytrainError(f"{path}: not a valid tokenizer.json ({problem})") from None


def _keyed_problem(raw: bytes) -> str:
    """What is wrong with a file `tokenizers` refused, naming the key, when the structural checks find it."""
    from pytrain.data.tokenizer_json import bpe_problem

    try:
        return bpe_problem(json.loads(raw))
    except ValueError:
        return ""


def load_tokenizer(path: str | Path):
    """Load a tokenizer.json (or a folder holding one) with a one-line error for a bad file."""
    return read_tokenizer(path)[0]


def max_token_id(tokenizer) -> int:
    """Largest id the tokenizer can emit, added tokens included."""
    return max(tokenizer.get_vocab(with_added_tokens=True).values())


def vocab_size(tokenizer, top_id: int) -> int:
    """Rows an embedding needs, given the largest id: the token count, or more when ids have gaps."""
    return max(tokenizer.get_vocab_size(with_added_tokens=True), top_id + 1)


def special_token_id(tokenizer, explicit: str | None, candidates: tuple[str, ...], role: str, path) -> int | None:
    """Id of `explicit` (which must exist), else of the first candidate present, else None."""
    if explicit is not None:
        token_id = tokenizer.token_to_id(explicit)
        if token_id is None:
            raise PytrainError(f"{path}: has no {role} token {explicit!r}")
        return token_id
    for name in candidates:
        token_id = tokenizer.token_to_id(name)
        if token_id is not None:
            return token_id
    return None


def _check_replaceable(out: Path, inputs, overwrite: bool) -> None:
    """--out may replace only a tokenizer.json outside the run and pack folders pytrain reads it from, and
    never one of the inputs."""
    if (out.parent / "manifest.json").exists() or (out.parent / "config.yaml").exists():
        raise PytrainError(f"{out}: is the tokenizer a pack or run in {out.parent} was made with; refusing to write "
                           "it there (write the new tokenizer elsewhere)")
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise PytrainError(f"{out}: already exists; choose another --out or pass --overwrite")
    if any(out.resolve() == Path(given).resolve() for given in inputs):
        raise PytrainError(f"{out}: is one of the inputs; refusing to replace it even with --overwrite")
    try:
        is_tokenizer = out.is_file() and not out.is_symlink() and "model" in json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        is_tokenizer = False
    if not is_tokenizer:
        raise PytrainError(f"{out}: is not a tokenizer.json; refusing to replace it even with --overwrite")


def train_tokenizer(
    inputs, out, vocab_size: int, eos_token: str | None = None, special_tokens=None,
    min_frequency: int = 2, field: str = "text", jq: str | None = None, txt_split: str = "file",
    on_bad_line: str = "error", max_documents: int | None = None, overwrite: bool = False,
    style: str = "gpt2", like: str | Path | None = None,
) -> Path:
    """Train a BPE on the documents `pack` would read from `inputs`, shaped as `style` (gpt2: byte-level;
    llama2: SentencePiece-style with byte fallback) or like the reference tokenizer.json `like`."""
    from tokenizers import Tokenizer, trainers

    from pytrain.data.sources import ReadSettings, open_sources, parse_field_path
    from pytrain.data.tokenizer_styles import STYLE_EOS, finished, like_reference, prepare, style_reference
    from pytrain.fsutil import atomic_write_text

    out = Path(out)
    if out.is_dir() or str(out).endswith("/"):
        out = out / "tokenizer.json"
    _check_replaceable(out, inputs, overwrite)
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
    sources = open_sources(inputs, ReadSettings(parse_field_path(field, jq), txt_split=txt_split, on_bad_line=on_bad_line))

    used = 0

    def documents():
        nonlocal used
        for batch in sources.batches():
            for text in batch.texts:
                if max_documents is not None and used >= max_documents:
                    return
                used += 1
                yield text

    trainer = trainers.BpeTrainer(  # the reference's non-special added tokens come on top of what is learned
        vocab_size=vocab_size - len(training.others), min_frequency=min_frequency, special_tokens=training.specials,
        initial_alphabet=training.alphabet, show_progress=False,
    )
    training.tokenizer.train_from_iterator(documents(), trainer=trainer)
    if used == 0:
        raise PytrainError(f"no documents found in {', '.join(map(str, inputs))}; nothing to train on")
    text = finished(recipe, training)
    atomic_write_text(out, text)
    written = Tokenizer.from_str(text)
    eos_id = special_token_id(written, None, ((eos_token,) if eos_token else ()) + EOS_CANDIDATES, "EOS", out)
    eos = written.id_to_token(eos_id) if eos_id is not None else None
    print(f"wrote {out}: {written.get_vocab_size()} tokens ({recipe.source}, EOS {eos!r} = id {eos_id}) "
          f"from {used} documents")
    if written.get_vocab_size() < vocab_size:
        print(f"note: asked for {vocab_size} tokens, but the input only supports {written.get_vocab_size()} "
              f"merges with --min-frequency {min_frequency}; give it more text for a larger vocabulary")
    return out
