"""pytrain: pre-train Llama-style language models from scratch.

The top-level package imports nothing heavy (no torch, no datasets) so that
`pytrain pack` and `pytrain --help` start fast; each command imports what it needs.
"""

# The one place the version lives: pyproject.toml reads it from here at build time
# (scikit-build-core's regex provider), and nothing pays for importlib.metadata at start-up.
__version__ = "0.1.0"

from pytrain.errors import PytrainError

__all__ = ["PytrainError", "__version__"]
