"""csrc/bpe_unicode_table.h is what the installed `tokenizers` regex engine says, code point for code point."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_table_matches_the_installed_regex_engine():
    spec = importlib.util.spec_from_file_location("gen_bpe_unicode", ROOT / "benchmarks" / "gen_bpe_unicode.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    expected = generator.render(*generator.probe())
    assert (ROOT / "csrc" / "bpe_unicode_table.h").read_text(encoding="utf-8") == expected, (
        "the tokenizers regex engine classifies code points differently; rerun benchmarks/gen_bpe_unicode.py")
