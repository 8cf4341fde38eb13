"""Does the installed `tokenizers` regex engine classify code points as the fast encoder's tables do?

The native encoder's \\p{L} / \\p{N} / \\s classes and contraction case folds come from one version
of the Unicode Character Database (csrc/bpe_unicode_table.h, benchmarks/gen_bpe_unicode.py). The
regex engine inside `tokenizers` (Oniguruma) carries its own Unicode tables, whose version depends
on the release. Asking that engine about every code point takes seconds, so this asks it about
the sentinels: the code points whose class changed between the Unicode versions around the
table's. An engine on another Unicode version disagrees on some of them, and the fast encoder
is then not used.
"""

from __future__ import annotations

import functools

CLASS_PATTERNS = {1: (r"\p{L}", "a letter"), 2: (r"\p{N}", "a number"), 3: (r"\s", "whitespace")}


def _matched(pattern: str, codes: list[int]) -> set[int]:
    """The code points among `codes` that the tokenizers regex `pattern` matches, one at a time."""
    from tokenizers import Regex, pre_tokenizers

    text = "".join(map(chr, codes))
    split = pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=False)
    kept = {ord(ch) for piece, _ in split.pre_tokenize_str(text) for ch in piece}
    return set(codes) - kept


@functools.lru_cache(maxsize=1)
def engine_disagreement() -> str:
    """"" when the installed engine agrees with the tables on every sentinel and case fold, else why not.

    Cached: the engine cannot change within a process."""
    import tokenizers

    from pytrain import _native

    expected = {cp: cls for first, last, cls in _native.bpe_unicode_sentinels for cp in range(first, last + 1)}
    codes = sorted(expected)
    for cls, (pattern, name) in CLASS_PATTERNS.items():
        got = _matched(pattern, codes)
        for cp in codes:
            if (cp in got) != (expected[cp] == cls):
                return (f"the regex engine of the installed tokenizers {tokenizers.__version__} "
                        f"{'takes' if cp in got else 'does not take'} U+{cp:04X} for {name}, unlike Unicode "
                        f"{_native.bpe_unicode_version} (the fast encoder's tables)")
    folds = _native.bpe_contraction_folds
    candidates = sorted({cp for codes in folds.values() for cp in codes} | {0x212A, 0x130, 0x131, 0x1E9E})
    for letter, codes in folds.items():
        if _matched(f"(?i:{letter})", candidates) != set(codes):
            return (f"the regex engine of the installed tokenizers {tokenizers.__version__} case-folds "
                    f"{letter!r} unlike the fast encoder's tables")
    return ""
