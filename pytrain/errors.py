"""The one exception type users see.

Every failure caused by the user's input (a bad line, a wrong path, an unknown config
key, a corrupted dataset) raises `PytrainError` with a one-line message that names the
file/line/key and says what to do. The CLI prints it without a traceback.
"""


class PytrainError(Exception):
    """A user-facing error with a one-line, actionable message."""


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
