"""csrc/bpe_unicode_table.h is the Unicode Character Database it names, and agrees with the installed regex engine.

The table comes from the UCD of one Unicode version (benchmarks/gen_bpe_unicode.py, via unicodedata2);
the engine inside `tokenizers` has its own. pytrain.tokenizer.bpe_unicode checks that engine on sentinel
code points only; these tests check that the sentinels are enough (every code point, when they pass)
and that the NFC-inert set is left alone by the installed tokenizers' own NFC.
"""

from __future__ import annotations

import importlib.util
import random
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEADER = (ROOT / "csrc" / "bpe_unicode_table.h").read_text(encoding="utf-8")
CLASS_INDEX = {"kOther": 0, "kLetter": 1, "kNumber": 2, "kSpace": 3, "1": 1}


def _generator():
    spec = importlib.util.spec_from_file_location("gen_bpe_unicode", ROOT / "benchmarks" / "gen_bpe_unicode.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _header_ranges(name: str) -> list[tuple[int, int, int]]:
    block = re.search(rf"{name}\[\] = \{{(.*?)\n\}};", HEADER, re.S).group(1)
    return [(int(a, 16), int(b, 16), CLASS_INDEX[c]) for a, b, c in re.findall(r"\{0x(\w+), 0x(\w+), (\w+)\}", block)]


def _header_table(name: str) -> list[int]:
    table = [0] * 0x110000
    for first, last, cls in _header_ranges(name):
        table[first:last + 1] = [cls] * (last - first + 1)
    return table


def _engine_classes(codes: list[int]) -> list[int]:
    """Each code point's class as the installed tokenizers' regex engine sees it (the full probe: seconds)."""
    from pytrain.tokenizer.bpe_unicode import CLASS_PATTERNS, _matched

    out = [0] * 0x110000
    for cls, (pattern, _) in CLASS_PATTERNS.items():
        for cp in _matched(pattern, codes):
            assert out[cp] == 0, f"U+{cp:04X} is in two classes"
            out[cp] = cls
    return out


def test_table_is_the_named_unicode_version():
    unicodedata2 = pytest.importorskip("unicodedata2")  # pinned in pyproject's [test] extra
    generator = _generator()
    assert f"Unicode Character Database {generator.TABLE_UNICODE_VERSION};" in HEADER
    assert unicodedata2.unidata_version == generator.TABLE_UNICODE_VERSION
    assert _header_table("kClassRanges") == generator.classes(unicodedata2)
    changing = generator.nfc_changing(unicodedata2)
    assert _header_table("kNfcChangingRanges") == [1 if c in changing else 0 for c in range(0x110000)]
    from pytrain import _native

    assert _native.bpe_contraction_folds == generator.folds()
    older = generator.classes(__import__("unicodedata"))
    table = generator.classes(unicodedata2)
    sentinels = {cp for first, last, _ in _native.bpe_unicode_sentinels for cp in range(first, last + 1)}
    assert {c for c in range(0x110000) if table[c] != older[c]} <= sentinels


def test_sentinels_decide_agreement_with_the_installed_engine():
    """When the sentinel check passes, the engine agrees on every code point (the whole probe)."""
    from pytrain import _native
    from pytrain.tokenizer.bpe_unicode import engine_disagreement

    generator = _generator()
    engine = _engine_classes(generator.scalar_values())
    differing = [c for c, (a, b) in enumerate(zip(engine, _header_table("kClassRanges"))) if a != b]
    if engine_disagreement():
        assert differing, "the sentinel check refused an engine that agrees everywhere"
    else:
        assert not differing, (f"{len(differing)} code points (first U+{differing[0]:04X}) differ from Unicode "
                               f"{_native.bpe_unicode_version}, yet the sentinels passed")


def test_nfc_inert_texts_are_left_alone_by_tokenizers_nfc():
    from tokenizers import normalizers

    from pytrain import _native

    changing = _header_table("kNfcChangingRanges")
    inert = [chr(c) for c in range(0x110000) if not changing[c] and not 0xD800 <= c <= 0xDFFF]
    rng = random.Random(0)
    texts = ["".join(inert)] + ["".join(rng.choices(inert, k=200)) for _ in range(200)]
    nfc = normalizers.NFC()
    assert all(nfc.normalize_str(text) == text for text in texts)
    assert _native.bpe_nfc_unchanged(texts).all()
    assert not _native.bpe_nfc_unchanged(["e\u0301", "\u212b", "\u1100\u1161", "\uac00\u11a8", "\u0378"]).any()
