"""Shared fixtures: a real-text corpus, a small trained tokenizer, and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import pytrain
from pytrain.data.corpus import stdlib_documents

# Subprocesses (the CLI, torchrun workers, helper scripts run by path) import the same pytrain as these
# tests: the source checkout when the tests run from it (`python -m pytest tests`), else the installed one.
if pytrain._source_tree.is_source_checkout():
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pytrain._source_tree.ROOT),
                                                             os.environ.get("PYTHONPATH")]))


def run_cli(*args, check=True, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Run `python -m pytrain ARGS...` and return the completed process (text output)."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "pytrain", *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"pytrain {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def documents() -> list[str]:
    return stdlib_documents(max_files=40)


@pytest.fixture(scope="session")
def corpus_jsonl(tmp_path_factory, documents):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for doc in documents:
            handle.write(json.dumps({"text": doc}) + "\n")
    return path


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory, corpus_jsonl):
    out = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    run_cli("tokenizer", "train", corpus_jsonl, "--vocab-size", 600, "--out", out)
    return out
