"""pytrain: pre-train Llama-style language models from scratch.

The top-level package imports nothing heavy (no torch, no datasets) so that
`pytrain pack` and `pytrain --help` start fast; each command imports what it needs.
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("pytrain")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"

from pytrain.errors import PytrainError

__all__ = ["PytrainError", "__version__"]
