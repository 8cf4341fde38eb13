"""Command-line values checked where argparse reads them: integers within bounds, and one-line usage errors.

A bound is what the value can mean, not a taste: a vocabulary larger than 2**24 tokens makes `tokenizers`'
trainer allocate in proportion and panic near 2**31; a negative count cannot be converted for it at all.
"""

from __future__ import annotations

import argparse
import sys


def integer(low: int, high: int, what: str = "an integer"):
    """An argparse `type`: an int in [low, high] (written as digits), else a one-line usage error."""

    def parse(text: str) -> int:
        text = text.strip()
        digits = text[1:] if text[:1] in "+-" else text
        if not digits.isascii() or not digits.isdigit() or len(digits) > 30:
            raise argparse.ArgumentTypeError(f"expected {what} in [{low}, {high}], got {text[:40]!r}")
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value

    parse.__name__ = what
    return parse


def text(value: str) -> str:
    """An argparse `type` for options that are text, not paths (a token, a JSON key): valid UTF-8. A byte that is not
    arrives as a lone surrogate (Python's surrogateescape), which no tokenizer or JSON key can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise argparse.ArgumentTypeError(f"not valid UTF-8 text (character {error.start + 1}); pass UTF-8 text") from None
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the command, the problem, where the help is), as every other
    error of pytrain's is; `--help` still shows the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")

    def exit(self, status: int = 0, message: str | None = None):
        if message:
            from pytrain.errors import bounded

            sys.stderr.write(bounded(message.rstrip("\n")) + "\n")
        sys.exit(status)
