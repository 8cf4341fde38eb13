"""pytrain: pre-train (or continue) Llama, Qwen2/3, Mistral and GPT-NeoX language models.

The top-level package imports nothing heavy (no torch, no datasets) so that
`pytrain pack` and `pytrain --help` start fast; each command imports what it needs.
"""

# The one place the version lives: pyproject.toml reads it from here at build time
# (scikit-build-core's regex provider), and nothing pays for importlib.metadata at start-up.
__version__ = "0.1.0"

from pytrain import _source_tree
from pytrain.errors import PytrainError

_source_tree.install()  # a source checkout (repo root on sys.path) finds kernels/ and its own built extension

__all__ = ["PytrainError", "__version__"]
