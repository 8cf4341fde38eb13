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
  need NFC (if any) to leave their content alone and share no character with the normalized=false ones
  (then one leftmost-longest pass splits them out as `tokenizers`' two passes do);
- the installed `tokenizers` regex engine classifies the sentinel code points as the tables' Unicode
  version does (bpe_unicode.py), whatever its release.

Then ids equal `tokenizers`' for every text; tests/data/test_bpe_*.py check it against `tokenizers`.
As a last guard, a loaded encoder must reproduce `tokenizers` on a fixed probe text. A file that
claims a BPE model but is malformed in a way `tokenizers` accepts (one id for two tokens) is a
PytrainError naming the key (tokenizer_json.py).
"""

from __future__ import annotations

import json

import numpy as np

from pytrain.errors import PytrainError

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


def _require(condition: bool, reason: str) -> None:
    if not condition:
        raise Unsupported(reason)


def _steps(component: dict | None, kind_key: str) -> list[dict]:
    """A component as its flat list of steps: a Sequence of Sequences is the steps in order, null is none."""
    if component is None:
        return []
    _require(isinstance(component, dict), f"{kind_key} is not an object")
    if component.get("type") != "Sequence":
        return [component]
    steps = component.get(kind_key)
    _require(isinstance(steps, list), f"Sequence without a {kind_key!r} list")
    return [step for inner in steps for step in _steps(inner, kind_key)]


def _byte_level_ok(step: dict, use_regex: bool) -> None:
    """ByteLevel with add_prefix_space false (trim_offsets only moves offsets) and the given use_regex."""
    _require(not step.get("add_prefix_space", True), "ByteLevel add_prefix_space=true")
    _require(step.get("use_regex", True) == use_regex,
             "ByteLevel use_regex=true after a Split" if not use_regex else "ByteLevel use_regex=false without a Split pattern")


def _pattern(pre: dict | None) -> tuple[str, int]:
    steps = _steps(pre, "pretokenizers")
    _require(bool(steps), "no pre-tokenizer")
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"]:
        _byte_level_ok(steps[0], use_regex=True)
        return "gpt2", 3
    _require(kinds == ["Split", "ByteLevel"],
             f"pre-tokenizer {kinds[0]!r}" if len(kinds) == 1 else "pre-tokenizer sequence other than Split + ByteLevel")
    split, byte_level = steps
    pattern = split.get("pattern") or {}
    _require(isinstance(pattern, dict) and set(pattern) == {"Regex"}, "Split on a string, not a regex")
    _require(split.get("behavior") == "Isolated" and not split.get("invert"), "Split behavior other than Isolated")
    _require(pattern["Regex"] in SPLIT_PATTERNS, "unknown pre-tokenizer regex")
    _byte_level_ok(byte_level, use_regex=False)
    return SPLIT_PATTERNS[pattern["Regex"]]


def _uses_nfc(normalizer: dict | None) -> bool:
    """Whether the normalizer is NFC (True) or nothing (False); anything else is unsupported."""
    kinds = [step.get("type") for step in _steps(normalizer, "normalizers")]
    _require(kinds in ([], ["NFC"]), f"normalizer {kinds[0]!r}" if len(kinds) == 1 else f"normalizer sequence {kinds}")
    return bool(kinds)


def _check_post_processor(post: dict | None) -> None:
    for step in _steps(post, "processors"):
        _require(step.get("type") in NEUTRAL_POST_PROCESSORS, f"post-processor {step.get('type')!r}")


def _merge_rows(merges: list, vocab: dict) -> np.ndarray:
    """(left id, right id, merged id) per merge, in rank order; merges are "a b" strings or [a, b] pairs."""
    from pytrain.data.tokenizer_json import merge_problem

    ids: list[int] = []
    for rank, merge in enumerate(merges):
        try:
            a, b = merge.split(" ") if isinstance(merge, str) else merge
            ids += (vocab[a], vocab[b], vocab[a + b])
        except (ValueError, TypeError, KeyError):
            raise PytrainError(f"model.merges[{rank}]: {merge_problem(merge, vocab)}") from None
    return np.array(ids, dtype=np.uint32).reshape(-1, 3)


def _added_tokens(config: dict, reference, nfc: bool) -> list[tuple[bytes, int]]:
    """(content, id) of every added token, if splitting them out in one leftmost-longest pass over the raw
    text is what `tokenizers` does: it extracts normalized=false tokens from the raw text first, then
    normalized=true ones from the normalized rest. One pass is the same when the normalizer leaves the
    text as it is (none, or NFC on an NFC-inert text, see FastBpe) and no character is in tokens of both
    kinds (so no match of one kind can overlap one of the other)."""
    added, seen, chars = [], set(), {False: set(), True: set()}
    for token in config.get("added_tokens") or []:
        content = token.get("content", "")
        for flag in ("lstrip", "rstrip", "single_word"):
            _require(not token.get(flag, False), f"added token {content!r} has {flag}=true")
        _require(content and content not in seen, f"empty or repeated added token {content!r}")
        normalized = bool(token.get("normalized", False))
        if normalized and nfc:
            _require(reference.normalizer.normalize_str(content) == content,
                     f"added token {content!r} has normalized=true and NFC changes it")
        seen.add(content)
        chars[normalized] |= set(content)
        token_id = reference.token_to_id(content)
        _require(token_id is not None, f"added token {content!r} has no id")
        added.append((content.encode("utf-8"), token_id))
    shared = chars[False] & chars[True]
    _require(not shared, f"added tokens with normalized=true and =false share the character {min(shared or ' ')!r}")
    return added


def build_native(config: dict, reference):
    """(pytrain._native.BpeEncoder, whether the tokenizer normalizes with NFC) for a parsed tokenizer.json,
    or Unsupported(reason); PytrainError for a file that claims a BPE but is malformed.

    `reference` is the loaded tokenizers.Tokenizer: an added token's id is the one `tokenizers` gave
    it when loading (the model's id for a content already in the vocabulary), not the JSON's "id".
    """
    from pytrain import _native
    from pytrain.data.tokenizer_json import duplicate_id_problem

    _require(isinstance(config, dict), "not a JSON object")
    nfc = _uses_nfc(config.get("normalizer"))
    _require(config.get("truncation") is None, "truncation is set")
    _require(config.get("padding") is None, "padding is set")
    _check_post_processor(config.get("post_processor"))
    pattern, max_digits = _pattern(config.get("pre_tokenizer"))
    model = config.get("model") or {}
    _require(model.get("type") == "BPE", f"{model.get('type')} model")
    _require(model.get("dropout") is None, "BPE dropout")
    _require(not model.get("continuing_subword_prefix"), "continuing_subword_prefix")
    _require(not model.get("end_of_word_suffix"), "end_of_word_suffix")
    _require(not model.get("byte_fallback"), "byte_fallback (SentencePiece-style)")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise PytrainError("model.vocab: is not a mapping from token to id")
    if problem := duplicate_id_problem(vocab):
        raise PytrainError(f"model.vocab: {problem}")
    chars = byte_level_chars()
    missing = [c for c in chars if c not in vocab]
    _require(not missing, f"{len(missing)} byte-level characters missing from the vocabulary")
    byte_ids = [vocab[c] for c in chars]
    merges = model.get("merges") or []
    if not isinstance(merges, list):
        raise PytrainError("model.merges: is not a list")
    merge_rows = _merge_rows(merges, vocab)
    ignore_merges = bool(model.get("ignore_merges", False))
    whole_words = []
    if ignore_merges:
        to_byte = {c: b for b, c in enumerate(chars)}
        for token, token_id in vocab.items():
            if all(c in to_byte for c in token):
                whole_words.append((bytes(to_byte[c] for c in token), token_id))
    added = _added_tokens(config, reference, nfc)
    native = _native.BpeEncoder(byte_ids, merge_rows, whole_words, ignore_merges, added, pattern, max_digits)
    return native, nfc


def fast_encoder(tokenizer_bytes: bytes, reference, threads: int = 0) -> tuple[FastBpe | None, str]:
    """(FastBpe, "") when the tokenizer is supported and agrees with `reference` (the loaded
    tokenizers.Tokenizer) on PROBE_TEXT; else (None, why not in a few words). Raises PytrainError
    (naming the key) for a tokenizer.json that claims a BPE model but is malformed."""
    from pytrain.data.bpe_unicode import engine_disagreement

    try:
        native, nfc = build_native(json.loads(tokenizer_bytes), reference)
    except Unsupported as why:
        return None, str(why)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as error:
        return None, f"unexpected tokenizer.json layout ({type(error).__name__})"
    if getattr(reference, "encode_special_tokens", False):
        return None, "encode_special_tokens is set"
    if why := engine_disagreement():
        return None, why
    encoder = FastBpe(native, threads, reference if nfc else None)
    expected = reference.encode(PROBE_TEXT, add_special_tokens=False).ids
    if FastBpe(native, threads).encode_lists([PROBE_TEXT])[0] != expected:
        return None, "the fast encoder disagrees with tokenizers on the probe text"
    return encoder, ""
