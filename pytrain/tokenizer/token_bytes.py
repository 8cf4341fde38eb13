"""How many UTF-8 bytes of text each token id stands for: the denominator of bits per byte.

Bits per byte (val_bpb) compares models whatever their tokenizers: the loss is divided by the bytes of the
text the targets decode to instead of by the number of tokens. A token's share of those bytes follows from
the tokenizer's decoder:

- byte-level (GPT-2, Llama-3, Qwen, pytrain's `--style gpt2`): every character of a vocabulary token is
  one byte (the GPT-2 byte-to-character table), so a token is `len(token)` bytes;
- SentencePiece-style (`Replace(▁, " ")`, `ByteFallback`, `Fuse`, `Strip(" ", k, 0)`, or `Metaspace`:
  Llama-2, Mistral, pytrain's `--style llama2`): `<0xNN>` is one byte, any other token its text with ▁ as
  a space; the decoder strips up to `k` leading spaces (the one the normalizer prepended) from a
  decoded document, so the token that opens a document counts that many bytes fewer (`TokenBytes.start_cut`);
- special tokens (EOS, BOS, pad) decode to nothing: zero bytes.

The sum over a document's tokens (less the start's strip) equals `len(tokenizer.decode(ids).encode())`
exactly, which tests/tokenizer/test_token_bytes.py checks on real documents. Other decoders (WordPiece,
...) are not supported: `token_bytes` returns None and the caller leaves bits per byte out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from pytrain.tokenizer.bpe_support import META

_SENTENCEPIECE_STEPS = ("Replace", "ByteFallback", "Fuse", "Strip", "Metaspace")


@dataclass(frozen=True)
class TokenBytes:
    lengths: np.ndarray    # int64 [size]: UTF-8 bytes each id decodes to (0: special tokens)
    start_cut: np.ndarray  # int64 [size]: bytes the decoder strips when the id opens a document (its leading spaces)

    def document_bytes(self, ids) -> int:
        """UTF-8 bytes of the text a whole document's ids decode to."""
        ids = [i for i in ids if self.lengths[i]]
        return int(self.lengths[ids].sum() - (self.start_cut[ids[0]] if ids else 0))


def _decoder_steps(decoder: dict | None) -> list[dict]:
    if decoder is None:
        return []
    if decoder.get("type") == "Sequence":
        return [step for child in decoder.get("decoders") or [] for step in _decoder_steps(child)]
    return [decoder]


def _sentencepiece_strip(steps: list[dict]) -> int | None:
    """The leading spaces a SentencePiece-style decoder strips from a document, or None when `steps` is not
    one (a Strip before Fuse would strip every token, not the document)."""
    strip, fused = 0, False
    for step in steps:
        kind = step.get("type")
        if kind not in _SENTENCEPIECE_STEPS:
            return None
        fused = fused or kind == "Fuse"
        if kind == "Replace" and (step.get("pattern", {}).get("String") != META or step.get("content") != " "):
            return None
        if kind == "Strip":
            if step.get("content") != " " or step.get("stop", 0) != 0 or not fused:
                return None
            strip += int(step.get("start", 0))
        if kind == "Metaspace":
            if step.get("replacement", META) != META:
                return None
            strip += step.get("prepend_scheme", "always") != "never" and step.get("add_prefix_space", True)
    return strip


def token_bytes(tokenizer) -> TokenBytes | None:
    """Bytes per token id for `tokenizer` (a tokenizers.Tokenizer), over its vocabulary, added tokens included;
    None for a decoder this module does not know."""
    steps = _decoder_steps(json.loads(tokenizer.to_str()).get("decoder"))
    kinds = {step.get("type") for step in steps}
    if kinds == {"ByteLevel"}:
        strip, byte_level = 0, True
    else:
        strip, byte_level = _sentencepiece_strip(steps), False
        if strip is None or "ByteFallback" not in kinds and "Metaspace" not in kinds:
            return None
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    lengths = np.zeros(vocab_size, dtype=np.int64)
    start_cut = np.zeros_like(lengths)
    added = tokenizer.get_added_tokens_decoder()
    for token, token_id in tokenizer.get_vocab(with_added_tokens=True).items():
        if token_id in added and added[token_id].special:
            continue
        if byte_level:
            lengths[token_id] = len(token)
            continue
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            text = " " if token == "<0x20>" else "?"  # one byte; only <0x20> is a space the decoder strips
        else:
            text = token.replace(META, " ")
        lengths[token_id] = len(text.encode("utf-8"))
        start_cut[token_id] = min(strip, len(text) - len(text.lstrip(" ")))
    return TokenBytes(lengths, start_cut)
