"""Loading a tokenizer.json and finding its special tokens.

Any HF `tokenizer.json` (ours, GPT-2's, Llama-2's, Llama-3's) works wherever pytrain takes a
tokenizer; its EOS/BOS tokens are found by name unless given explicitly.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
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

    from pytrain.safe_read import MAX_TOKENIZER_BYTES, checked_json_text, read_bytes

    path = tokenizer_file(path)
    try:
        raw = read_bytes(path, MAX_TOKENIZER_BYTES, "tokenizer.json")
    except FileNotFoundError:
        raise PytrainError(f"{path}: no such tokenizer file; train one with `pytrain tokenizer train`") from None
    except OSError as error:
        raise PytrainError(f"{path}: cannot read the tokenizer ({error.strerror})") from None
    text = checked_json_text(raw, str(path))
    try:
        with _rust_panic_output_hidden():
            tokenizer = Tokenizer.from_str(text)
    except BaseException as error:  # a bare Exception for parse errors; pyo3's PanicException (a BaseException)
        if not isinstance(error, Exception) and type(error).__name__ != "PanicException":  # Ctrl-C, SIGTERM
            raise
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        from pytrain.tokenizer.checks import located_problem

        problem = _keyed_problem(raw) or located_problem(raw, first_line) or first_line
        raise PytrainError(f"{path}: not a valid tokenizer.json ({problem})") from None
    # pytrain encodes whole documents: a file's padding (whose length `tokenizers` allocates unchecked: a huge
    # one panics) or truncation (which would silently cut documents) never applies.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer, raw, path


@contextlib.contextmanager
def _rust_panic_output_hidden():
    """File descriptor 2 pointed at /dev/null: `tokenizers`' Rust panic hook prints the panic and a backtrace there
    before pyo3 raises PanicException, whose message the one-line error then carries."""
    sys.stderr.flush()
    saved, quiet = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(quiet, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(quiet)


def _keyed_problem(raw: bytes) -> str:
    """What is wrong with a file `tokenizers` refused, naming the key, when the structural checks find it."""
    from pytrain.tokenizer.checks import bpe_problem

    try:
        return bpe_problem(json.loads(raw))  # nested at most MAX_JSON_DEPTH deep: checked before
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
