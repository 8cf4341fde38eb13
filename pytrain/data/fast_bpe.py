"""The fast encoder for `pytrain pack`: pytrain._native.BpeEncoder, used only where it is exact.

`fast_encoder(tokenizer.json bytes)` reads the JSON (never executes anything) and returns
(FastBpe, "") when the tokenizer means exactly what the native encoder implements, else
(None, a one-line reason). Supported, all conditions together:

- model BPE with no dropout, no continuing_subword_prefix / end_of_word_suffix, no byte_fallback,
  every one of the 256 byte-level characters in the vocabulary (so unk_token is never used);
  ignore_merges true or false;
- no normalizer, no truncation, no padding; a post-processor that adds nothing without
  special tokens (none, ByteLevel, TemplateProcessing, or a Sequence of them) — pack encodes
  with add_special_tokens=False;
- pre-tokenizer ByteLevel(add_prefix_space=false, use_regex=true) (GPT-2, `pytrain tokenizer
  train`), or Sequence[Split(Regex(P), Isolated, invert=false), ByteLevel(add_prefix_space=false,
  use_regex=false)] with P GPT-2's pattern, Llama-3's, or Llama-3's with \\p{N} for \\p{N}{1,3};
- added tokens with normalized, lstrip, rstrip and single_word all false and distinct contents;
- the installed `tokenizers` is the release whose regex engine the Unicode tables were probed
  from (benchmarks/gen_bpe_unicode.py): another release may classify code points differently.

SentencePiece-style BPEs (byte_fallback) are checked and built by fast_sentencepiece.py.

Then ids equal `tokenizers`' for every text; tests/data/test_bpe_*.py check it against `tokenizers`.
As a last guard, a loaded encoder must reproduce `tokenizers` on a fixed probe text.
"""

from __future__ import annotations

import json

import numpy as np

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# pattern string -> (native pattern, max_digits)
SPLIT_PATTERNS = {
    GPT2_PATTERN: ("gpt2", 3),
    LLAMA3_PATTERN: ("llama3", 3),
    LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}"): ("llama3", 1),
}
NEUTRAL_POST_PROCESSORS = ("ByteLevel", "TemplateProcessing")
PROBE_TEXT = (
    "Hello world! It's 2024: we'll test 12345 numbers, I'M SHOUTING, don't ſtop 'Re\r\n\r\n"
    "  indented\tcode(x) -> {y};   \n\n\u00e9t\u00e9 \u4e2d\u6587 \u0661\u0662\u0663 \U0001F600\U0001F44D\u200d "
    "\u00a0nbsp\u3000ideographic  trailing   "
)


def byte_level_chars() -> list[str]:
    """GPT-2's byte -> printable character map, as tokenizers' ByteLevel uses it (index = byte)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


class Unsupported(Exception):
    """The tokenizer means something the native encoder does not implement (message: why)."""


class FastBpe:
    """pytrain._native.BpeEncoder plus the conveniences pack needs."""

    def __init__(self, native, threads: int = 0):
        self._native = native
        self.threads = threads

    def encode_framed(self, texts: list[str], bos: int, eos: int, dtype: str):
        """(tokens of `dtype` with bos/eos per document, lengths, documents dropped for having no tokens)."""
        return self._native.encode(texts, self.threads, bos, eos, dtype, True)

    def encode_lists(self, texts: list[str]) -> list[list[int]]:
        """Ids per text, as lists (what `tokenizers` returns)."""
        tokens, lengths, _ = self._native.encode(texts, self.threads)
        ends = np.cumsum(lengths)
        return [part.tolist() for part in np.split(tokens, ends[:-1])] if len(texts) else []


def _require(condition: bool, reason: str) -> None:
    if not condition:
        raise Unsupported(reason)


def _pattern(pre: dict | None) -> tuple[str, int]:
    _require(pre is not None, "no pre-tokenizer")
    kind = pre.get("type")
    if kind == "ByteLevel":
        _require(not pre.get("add_prefix_space", True), "ByteLevel add_prefix_space=true")
        _require(pre.get("use_regex", True), "ByteLevel use_regex=false without a Split pattern")
        return "gpt2", 3
    _require(kind == "Sequence", f"pre-tokenizer {kind!r}")
    steps = pre.get("pretokenizers") or []
    _require(len(steps) == 2 and [s.get("type") for s in steps] == ["Split", "ByteLevel"],
             "pre-tokenizer sequence other than Split + ByteLevel")
    split, byte_level = steps
    pattern = split.get("pattern") or {}
    _require(set(pattern) == {"Regex"}, "Split on a string, not a regex")
    _require(split.get("behavior") == "Isolated" and not split.get("invert"), "Split behavior other than Isolated")
    _require(pattern["Regex"] in SPLIT_PATTERNS, "unknown pre-tokenizer regex")
    _require(not byte_level.get("add_prefix_space", True), "ByteLevel add_prefix_space=true")
    _require(not byte_level.get("use_regex", True), "ByteLevel use_regex=true after a Split")
    return SPLIT_PATTERNS[pattern["Regex"]]


def _check_post_processor(post: dict | None) -> None:
    if post is None:
        return
    kind = post.get("type")
    if kind == "Sequence":
        for step in post.get("processors") or []:
            _check_post_processor(step)
        return
    _require(kind in NEUTRAL_POST_PROCESSORS, f"post-processor {kind!r}")


def _merge_rows(merges: list, vocab: dict) -> np.ndarray:
    """(left id, right id, merged id) per merge, in rank order; merges are "a b" strings or [a, b] pairs."""
    ids: list[int] = []
    for merge in merges:
        try:
            a, b = merge.split(" ") if isinstance(merge, str) else merge
            ids += (vocab[a], vocab[b], vocab[a + b])
        except (ValueError, TypeError, KeyError):
            raise Unsupported(f"merge {merge!r} is malformed or names a token outside the vocabulary") from None
    return np.array(ids, dtype=np.uint32).reshape(-1, 3)


def build_native(config: dict, token_to_id):
    """pytrain._native.BpeEncoder for a parsed tokenizer.json, or Unsupported(reason).

    `token_to_id` is the loaded tokenizer's: an added token's id is the one `tokenizers` gave it
    when loading (the model's id for a content already in the vocabulary), not the JSON's "id".
    """
    from pytrain import _native

    _require(isinstance(config, dict), "not a JSON object")
    if (config.get("model") or {}).get("byte_fallback"):
        from pytrain.data.fast_sentencepiece import build_sentencepiece

        return build_sentencepiece(config, token_to_id)
    _require(config.get("normalizer") is None, f"normalizer {(config.get('normalizer') or {}).get('type')!r}")
    check_neutral_extras(config)
    pattern, max_digits = _pattern(config.get("pre_tokenizer"))
    model = config.get("model") or {}
    _require(model.get("type") == "BPE", f"{model.get('type')} model")
    _require(model.get("dropout") is None, "BPE dropout")
    _require(not model.get("continuing_subword_prefix"), "continuing_subword_prefix")
    _require(not model.get("end_of_word_suffix"), "end_of_word_suffix")
    _require(not model.get("byte_fallback"), "byte_fallback (SentencePiece-style)")
    vocab = model.get("vocab")
    _require(isinstance(vocab, dict), "BPE vocab is not a mapping")
    chars = byte_level_chars()
    missing = [c for c in chars if c not in vocab]
    _require(not missing, f"{len(missing)} byte-level characters missing from the vocabulary")
    byte_ids = [vocab[c] for c in chars]
    merges = _merge_rows(model.get("merges") or [], vocab)
    ignore_merges = bool(model.get("ignore_merges", False))
    whole_words = []
    if ignore_merges:
        to_byte = {c: b for b, c in enumerate(chars)}
        for token, token_id in vocab.items():
            if all(c in to_byte for c in token):
                whole_words.append((bytes(to_byte[c] for c in token), token_id))
    added = added_tokens(config, token_to_id)
    return _native.BpeEncoder(byte_ids, merges, whole_words, ignore_merges, added, pattern, max_digits)


def check_neutral_extras(config: dict) -> None:
    """No truncation, no padding, and a post-processor that adds nothing without special tokens."""
    _require(config.get("truncation") is None, "truncation is set")
    _require(config.get("padding") is None, "padding is set")
    _check_post_processor(config.get("post_processor"))


def added_tokens(config: dict, token_to_id) -> list[tuple[bytes, int]]:
    """(UTF-8 content, id) of every added token, each matched literally in the raw text."""
    added, seen = [], set()
    for token in config.get("added_tokens") or []:
        content = token.get("content", "")
        for flag in ("normalized", "lstrip", "rstrip", "single_word"):
            _require(not token.get(flag, False), f"added token {content!r} has {flag}=true")
        _require(content and content not in seen, f"empty or repeated added token {content!r}")
        seen.add(content)
        token_id = token_to_id(content)
        _require(token_id is not None, f"added token {content!r} has no id")
        added.append((content.encode("utf-8"), token_id))
    return added


def fast_encoder(tokenizer_bytes: bytes, reference, threads: int = 0) -> tuple[FastBpe | None, str]:
    """(FastBpe, "") when the tokenizer is supported and agrees with `reference` (the loaded
    tokenizers.Tokenizer) on PROBE_TEXT; else (None, why not in a few words)."""
    import tokenizers

    from pytrain import _native

    if tokenizers.__version__ != _native.bpe_tables_tokenizers_version:
        return None, (f"its Unicode tables were probed from tokenizers {_native.bpe_tables_tokenizers_version}, "
                      f"not the installed {tokenizers.__version__} (rerun benchmarks/gen_bpe_unicode.py)")
    try:
        native = build_native(json.loads(tokenizer_bytes), reference.token_to_id)
    except Unsupported as why:
        return None, str(why)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as error:
        return None, f"unexpected tokenizer.json layout ({type(error).__name__})"
    if getattr(reference, "encode_special_tokens", False):
        return None, "encode_special_tokens is set"
    encoder = FastBpe(native, threads)
    expected = reference.encode(PROBE_TEXT, add_special_tokens=False).ids
    if encoder.encode_lists([PROBE_TEXT])[0] != expected:
        return None, "the fast encoder disagrees with tokenizers on the probe text"
    return encoder, ""
