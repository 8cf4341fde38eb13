"""The one exception type users see.

Every failure caused by the user's input (a bad line, a wrong path, an unknown config
key, a corrupted dataset) raises `PytrainError` with a one-line message that names the
file/line/key and says what to do. The CLI prints it without a traceback.

A message echoes what it was given (a value, a path, a parser's complaint), and what it was given
may be huge or hostile: the message is bounded where it is made, so no input can turn an error into
megabytes of output (each line at most MAX_LINE characters, at most MAX_LINES lines; only
`pytrain verify`'s list of problems has more than one), and control characters are shown escaped, so
a crafted value cannot move the terminal's cursor or fake a second line.
"""

import re

MAX_LINE = 1000   # characters of one line of a message
MAX_LINES = 40    # lines of one message (a list of problems: `pytrain verify`)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u0085\u2028\u2029]")


def _escaped(match: re.Match) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def _clipped(line: str) -> str:
    line = _CONTROL.sub(_escaped, line.replace("\t", " "))
    if len(line) <= MAX_LINE:
        return line
    keep = MAX_LINE - 40  # room for the note, so that a clipped line is never clipped again
    return f"{line[:keep]}... ({len(line) - keep} more characters)"


def bounded(message: str) -> str:
    """`message` with each line clipped to MAX_LINE characters, at most MAX_LINES lines, control characters
    escaped."""
    lines = str(message).split("\n")
    if len(lines) > MAX_LINES:  # the first MAX_LINES - 1, and a note: bounding a bounded message changes nothing
        lines[MAX_LINES - 1:] = [f"... ({len(lines) - MAX_LINES + 1} more lines)"]
    return "\n".join(_clipped(line) for line in lines)


class PytrainError(Exception):
    """A user-facing error with a one-line, actionable message (bounded: see `bounded`)."""

    def __init__(self, message: object = "") -> None:
        super().__init__(bounded(str(message)))


def shown(value: object, limit: int = 80) -> str:
    """repr(value) for an error message, cut to about `limit` characters without building the whole repr
    (a value read from a file can be nested or enormous)."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 3, limit, limit
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 8
    text = short.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def did_you_mean(name: str, candidates) -> str:
    """Return ' (did you mean "x"?)' for the closest candidate, or '' if none is close."""
    import difflib

    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


class Stopped(Exception):
    """A command stopped early on request (a signal) after keeping what it needs to continue: the CLI prints
    the one-line message and exits with `exit_code` (128 + the signal's number)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
