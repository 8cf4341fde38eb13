"""The fast encoder for `pytrain pack`: pytrain._native.BpeEncoder, used only where it is exact.

`fast_encoder(tokenizer.json bytes, loaded tokenizer)` reads the JSON (never executes anything) and
returns (FastBpe, "") when the tokenizer means exactly what the native encoder implements, else
(None, a one-line reason). Supported, all conditions together (Sequences of one step, nested
Sequences and options that only move offsets, such as trim_offsets, count as what they amount to):

- model BPE with no dropout, no continuing_subword_prefix / end_of_word_suffix, no byte_fallback,
  every one of the 256 byte-level characters in the vocabulary (so unk_token is never used);
  ignore_merges true or false;
- no normalizer, or NFC: a text NFC might change (one with a code point outside the NFC-inert set,
  see gen_bpe_unicode.nfc_changing) is encoded by `tokenizers` itself, the rest natively;
- no truncation, no padding; a post-processor that adds nothing without special tokens (none,
  ByteLevel, TemplateProcessing, or a Sequence of them); pack encodes with add_special_tokens=False;
  the decoder plays no part in encoding;
- pre-tokenizer ByteLevel(add_prefix_space=false, use_regex=true) (GPT-2, GPT-NeoX, `pytrain
  tokenizer train`), or Split(Regex(P), Isolated, invert=false) + ByteLevel(add_prefix_space=false,
  use_regex=false) with P GPT-2's pattern, Llama-3's, or Qwen2's (Llama-3's with \\p{N} for \\p{N}{1,3});
- added tokens with lstrip, rstrip and single_word false and distinct contents; normalized=true ones
  need NFC (if any) to leave their content alone and be unable to overlap a normalized=false one
  (then one leftmost-longest pass splits them out as `tokenizers`' two passes do; bpe_support.py);
- the installed `tokenizers` regex engine classifies the sentinel code points as the tables' Unicode
  version does (bpe_unicode.py), whatever its release.

SentencePiece-style BPEs (byte_fallback) are checked and built by fast_sentencepiece.py.

Then ids equal `tokenizers`' for every text; tests/data/test_bpe_*.py check it against `tokenizers`.
As a last guard, a loaded encoder must reproduce `tokenizers` on a fixed probe text. A file that
claims a BPE model but is malformed in a way `tokenizers` accepts (one id for two tokens) is a
PytrainError naming the key (checks.py).
"""

from __future__ import annotations

import json

import numpy as np

from pytrain.errors import PytrainError
from pytrain.tokenizer.bpe_support import (
    Unsupported, added_tokens, check_model_options, check_neutral_extras, require, steps, vocab_and_merges,
)

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# pattern string -> (native pattern, max_digits)
SPLIT_PATTERNS = {
    GPT2_PATTERN: ("gpt2", 3),
    LLAMA3_PATTERN: ("llama3", 3),
    LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}"): ("llama3", 1),
}
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


class FastBpe:
    """pytrain._native.BpeEncoder plus the conveniences pack needs.

    With `nfc_reference` (the tokenizer has an NFC normalizer), a text that NFC might change (one with
    a code point outside the NFC-inert set: combining marks, unnormalized or unassigned characters) is
    encoded by that reference `tokenizers.Tokenizer` instead, so ids stay exact; the others, all text
    that NFC leaves as it is, go to the native encoder.
    """

    def __init__(self, native, threads: int = 0, nfc_reference=None):
        self._native = native
        self.threads = threads
        self._nfc_reference = nfc_reference

    def _needs_reference(self, texts: list[str]) -> np.ndarray | None:
        """Indices of the texts the reference must encode, or None when there are none."""
        if self._nfc_reference is None or not texts:
            return None
        from pytrain import _native

        changing = np.flatnonzero(~_native.bpe_nfc_unchanged(texts))
        return changing if len(changing) else None

    def _reference_ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._nfc_reference.encode_batch_fast(texts, add_special_tokens=False)]

    def encode_framed(self, texts: list[str], bos: int, eos: int, dtype: str):
        """(tokens of `dtype` with bos/eos per document, lengths, documents dropped for having no tokens)."""
        slow = self._needs_reference(texts)
        if slow is None:
            return self._native.encode(texts, self.threads, bos, eos, dtype, True)
        fast = np.setdiff1d(np.arange(len(texts)), slow)
        fast_tokens, fast_lengths, _ = self._native.encode([texts[i] for i in fast], self.threads, bos, eos, dtype,
                                                           False)
        frame = [bos] * (bos >= 0), [eos] * (eos >= 0)
        slow_docs = [frame[0] + ids + frame[1] for ids in self._reference_ids([texts[i] for i in slow])]
        flat = [t for doc in slow_docs for t in doc]
        if flat and max(flat) > np.iinfo(dtype).max:
            raise ValueError(f"token id {max(flat)} does not fit {dtype}")
        tokens = np.concatenate([fast_tokens, np.array(flat, dtype=fast_tokens.dtype)])
        lengths = np.empty(len(texts), dtype=np.int64)
        starts = np.empty(len(texts), dtype=np.int64)  # where each document's tokens start in `tokens`
        lengths[fast], lengths[slow] = fast_lengths, [len(doc) for doc in slow_docs]
        starts[fast] = np.cumsum(fast_lengths) - fast_lengths
        starts[slow] = len(fast_tokens) + np.cumsum(lengths[slow]) - lengths[slow]
        keep = lengths > len(frame[0]) + len(frame[1])
        kept_lengths, kept_starts = lengths[keep], starts[keep]
        out_starts = np.cumsum(kept_lengths) - kept_lengths
        gather = np.repeat(kept_starts - out_starts, kept_lengths) + np.arange(int(kept_lengths.sum()))
        return tokens[gather], kept_lengths, int(len(texts) - keep.sum())

    def encode_lists(self, texts: list[str]) -> list[list[int]]:
        """Ids per text, as lists (what `tokenizers` returns)."""
        slow = self._needs_reference(texts)
        fast = np.arange(len(texts)) if slow is None else np.setdiff1d(np.arange(len(texts)), slow)
        tokens, lengths, _ = self._native.encode(texts if slow is None else [texts[i] for i in fast], self.threads)
        out: list = [None] * len(texts)
        for i, part in zip(fast.tolist(), np.split(tokens, np.cumsum(lengths)[:-1])):
            out[i] = part.tolist()
        if slow is not None:
            for i, ids in zip(slow.tolist(), self._reference_ids([texts[i] for i in slow])):
                out[i] = ids
        return out


def _byte_level_ok(step: dict, use_regex: bool) -> None:
    """ByteLevel with add_prefix_space false (trim_offsets only moves offsets) and the given use_regex."""
    require(not step.get("add_prefix_space", True), "ByteLevel add_prefix_space=true")
    require(step.get("use_regex", True) == use_regex,
            "ByteLevel use_regex=true after a Split" if not use_regex else "ByteLevel use_regex=false without a Split pattern")


def _pattern(pre: dict | None) -> tuple[str, int]:
    parts = steps(pre, "pretokenizers")
    require(bool(parts), "no pre-tokenizer")
    kinds = [step.get("type") for step in parts]
    if kinds == ["ByteLevel"]:
        _byte_level_ok(parts[0], use_regex=True)
        return "gpt2", 3
    require(kinds == ["Split", "ByteLevel"],
            f"pre-tokenizer {kinds[0]!r}" if len(kinds) == 1 else "pre-tokenizer sequence other than Split + ByteLevel")
    split, byte_level = parts
    pattern = split.get("pattern") or {}
    require(isinstance(pattern, dict) and set(pattern) == {"Regex"}, "Split on a string, not a regex")
    require(split.get("behavior") == "Isolated" and not split.get("invert"), "Split behavior other than Isolated")
    require(pattern["Regex"] in SPLIT_PATTERNS, "unknown pre-tokenizer regex")
    _byte_level_ok(byte_level, use_regex=False)
    return SPLIT_PATTERNS[pattern["Regex"]]


def _uses_nfc(normalizer: dict | None) -> bool:
    """Whether the normalizer is NFC (True) or nothing (False); anything else is unsupported."""
    kinds = [step.get("type") for step in steps(normalizer, "normalizers")]
    require(kinds in ([], ["NFC"]), f"normalizer {kinds[0]!r}" if len(kinds) == 1 else f"normalizer sequence {kinds}")
    return bool(kinds)


def build_native(config: dict, reference):
    """(pytrain._native.BpeEncoder, whether the tokenizer normalizes with NFC) for a parsed tokenizer.json,
    or Unsupported(reason); PytrainError for a file that claims a BPE but is malformed.

    `reference` is the loaded tokenizers.Tokenizer: an added token's id is the one `tokenizers` gave
    it when loading (the model's id for a content already in the vocabulary), not the JSON's "id".
    """
    from pytrain import _native

    require(isinstance(config, dict), "not a JSON object")
    model = config.get("model") or {}
    if model.get("byte_fallback"):
        from pytrain.tokenizer.fast_sentencepiece import build_sentencepiece

        return build_sentencepiece(config, reference), False
    nfc = _uses_nfc(config.get("normalizer"))
    check_neutral_extras(config)
    pattern, max_digits = _pattern(config.get("pre_tokenizer"))
    check_model_options(model)
    vocab, merge_rows = vocab_and_merges(model)
    chars = byte_level_chars()
    missing = [byte for byte, c in enumerate(chars) if c not in vocab]
    if missing and model.get("unk_token") is None:
        raise PytrainError(f"model.vocab: the byte-level character {chars[missing[0]]!r} (byte 0x{missing[0]:02X}) is "
                           f"missing ({len(missing)} of 256 are) and there is no unk_token, so tokenizers would drop "
                           "those bytes from the text; add them to the vocabulary (or pack with --encoder tokenizers "
                           "to accept the loss)")
    require(not missing, f"{len(missing)} byte-level characters missing from the vocabulary")
    byte_ids = [vocab[c] for c in chars]
    ignore_merges = bool(model.get("ignore_merges", False))
    whole_words = []
    if ignore_merges:
        to_byte = {c: b for b, c in enumerate(chars)}
        for token, token_id in vocab.items():
            if all(c in to_byte for c in token):
                whole_words.append((bytes(to_byte[c] for c in token), token_id))
    added = added_tokens(config, reference, "nfc" if nfc else "none")
    native = _native.BpeEncoder(byte_ids, merge_rows, whole_words, ignore_merges, added, pattern, max_digits)
    return native, nfc


def fast_encoder(tokenizer_bytes: bytes, reference, threads: int = 0) -> tuple[FastBpe | None, str]:
    """(FastBpe, "") when the tokenizer is supported and agrees with `reference` (the loaded
    tokenizers.Tokenizer) on PROBE_TEXT; else (None, why not in a few words). Raises PytrainError
    (naming the key) for a tokenizer.json that claims a BPE model but is malformed."""
    from pytrain.tokenizer.bpe_unicode import engine_disagreement

    try:
        config = json.loads(tokenizer_bytes)
        native, nfc = build_native(config, reference)
    except Unsupported as why:
        return None, str(why)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as error:
        return None, f"unexpected tokenizer.json layout ({type(error).__name__})"
    if getattr(reference, "encode_special_tokens", False):
        return None, "encode_special_tokens is set"
    byte_level = not config["model"].get("byte_fallback")  # the SentencePiece-style encoder uses no Unicode classes
    if byte_level and (why := engine_disagreement()):
        return None, why
    encoder = FastBpe(native, threads, reference if nfc else None)
    expected = reference.encode(PROBE_TEXT, add_special_tokens=False).ids
    if FastBpe(native, threads).encode_lists([PROBE_TEXT])[0] != expected:
        return None, "the fast encoder disagrees with tokenizers on the probe text"
    return encoder, ""
