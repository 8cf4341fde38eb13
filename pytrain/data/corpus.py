"""A real-text corpus available on every Python install, for the demo, tests and benchmarks.

Documents are the interpreter's help topics (`pydoc_data.topics`) and the docstrings of
the standard library's modules, classes and functions, read with `ast` (nothing is
imported or downloaded). `mixed_documents` recombines their paragraphs into any amount
of text with a realistic length spread, for benchmarks that need more than the ~1.8 MB
the sources hold.
"""

from __future__ import annotations

import ast
import json
import random
import sysconfig
from collections import deque
from pathlib import Path
from typing import Iterator

MIN_DOCSTRING_CHARS = 200


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


def stdlib_documents(max_files: int | None = None) -> list[str]:
    """Help topics plus long docstrings from the first `max_files` stdlib files (all by default)."""
    from pydoc_data.topics import topics

    documents = [topics[name].strip() for name in sorted(topics)]
    for path in _stdlib_files()[:max_files]:
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in _statements(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= MIN_DOCSTRING_CHARS:
                    documents.append(doc)
    return documents


# Where statements live: a def (the only node with a docstring besides the module) is always a statement,
# reached from the module through statements, except handlers and match cases alone.
_BLOCKS = frozenset(("body", "orelse", "finalbody", "handlers", "cases"))


def _statements(tree: ast.Module) -> Iterator[ast.AST]:
    """ast.walk's nodes in ast.walk's order (breadth first), less every expression: the module, its
    statements, except handlers and match cases. Expressions are ~90% of a module's nodes and hold no
    docstring, so this visits a tenth of them."""
    queue = deque([tree])
    while queue:
        node = queue.popleft()
        queue.extend(child for field in node._fields if field in _BLOCKS for child in getattr(node, field))
        yield node


def mixed_documents(base: list[str], target_chars: int, seed: int = 0) -> Iterator[str]:
    """Yield documents of 1–12 paragraphs drawn from `base` until `target_chars` are produced."""
    rng = random.Random(seed)
    paragraphs = [p.strip() for doc in base for p in doc.split("\n\n") if p.strip()]
    produced = 0
    while produced < target_chars:
        doc = "\n\n".join(rng.choice(paragraphs) for _ in range(rng.randint(1, 12)))
        produced += len(doc)
        yield doc


def write_jsonl(path: str | Path, documents, field: str = "text") -> int:
    """Write one {"field": text} object per line; returns the number of bytes written."""
    written = 0
    with open(path, "w", encoding="utf-8") as handle:
        for doc in documents:
            line = json.dumps({field: doc}, ensure_ascii=False) + "\n"
            handle.write(line)
            written += len(line.encode("utf-8"))
    return written
