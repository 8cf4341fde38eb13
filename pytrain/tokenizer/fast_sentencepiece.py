"""The fast encoder for SentencePiece-style BPE tokenizer.json files: pytrain._native.SentencePieceBpe.

fast_bpe.build_native hands a tokenizer whose BPE model has byte_fallback here. Supported, all together
(what transformers' LlamaConverter writes, and the published Llama-2, TinyLlama, Mistral v0.1-v0.3 files):

- model BPE with byte_fallback, no dropout, no continuing_subword_prefix / end_of_word_suffix, all 256
  `<0xNN>` byte tokens in the vocabulary (so a character outside it always falls back to its bytes and
  unk_token / fuse_unk never apply), no merge of a `<0xNN>` token; ignore_merges true or false;
- either the normalizer Prepend("▁") + Replace(" ", "▁") (a Sequence, in either order, Prepend optional)
  with no pre-tokenizer, or no normalizer with the pre-tokenizer Metaspace(replacement "▁", any
  prepend_scheme, split true or false);
- what bpe_support requires of every tokenizer: no truncation or padding, a neutral post-processor, added
  tokens with lstrip, rstrip and single_word false; normalized=true only without a normalizer (Metaspace
  files), where it means the same as false.

Without a pre-tokenizer (or with Metaspace split=false) `tokenizers` BPEs each text between added tokens
as one word; csrc/sp_bpe.cpp explains why cutting that word where no merge can span the cut gives the same
ids. tests/tokenizer/test_bpe_sentencepiece.py checks every variant against `tokenizers`.
"""

from __future__ import annotations

import numpy as np

from pytrain.tokenizer.bpe_support import (
    BYTE_TOKENS, META, added_tokens, check_model_options, check_neutral_extras, require, steps, vocab_and_merges,
)

MAX_CHAR_ID = 2**31 - 1  # sp_bpe.cpp keeps one-character token ids as int32 (-1: none)
# sp_bpe.cpp compares the text at each "▁" with every merge result holding a "▁" past its first byte (Llama-2's
# and Mistral's are their runs of "▁", about 15); a tokenizer with more is left to `tokenizers`.
MAX_STRADDLERS = 1024



def _normalizer_prepends(parts: list[dict]) -> bool:
    """Whether a supported Prepend/Replace normalizer (its steps) prepends "▁"; Unsupported for any other."""
    kinds = [step.get("type") for step in parts]
    require(kinds.count("Replace") == 1 and set(kinds) <= {"Prepend", "Replace"} and kinds.count("Prepend") <= 1,
             f"normalizer {'+'.join(map(str, kinds))} (not Prepend + Replace)")
    for step in parts:
        if step["type"] == "Prepend":
            require(step.get("prepend") == META, f"normalizer Prepend({step.get('prepend')!r}), not Prepend('▁')")
        else:
            require(step.get("pattern") == {"String": " "} and step.get("content") == META,
                     "normalizer Replace other than Replace(' ', '▁')")
    return "Prepend" in kinds


def _metaspace(pre: dict) -> tuple[str, bool]:
    """(prepend_scheme, split) of a Metaspace pre-tokenizer, read as tokenizers reads older files too: no
    prepend_scheme means "always", add_prefix_space=false "never" (tokenizers refuses it with any other
    scheme), no split means true."""
    require(pre.get("type") == "Metaspace", f"pre-tokenizer {pre.get('type')!r} with byte_fallback")
    require(pre.get("replacement") == META, f"Metaspace replacement {pre.get('replacement')!r}, not '▁'")
    scheme = "never" if pre.get("add_prefix_space") is False else pre.get("prepend_scheme", "always")
    require(scheme in ("always", "first", "never"), f"Metaspace prepend_scheme {scheme!r}")
    split = pre.get("split", True)
    require(isinstance(split, bool), "Metaspace split is not true or false")
    return scheme, split


def _prepend_and_split(config: dict) -> tuple[str, bool]:
    """How the native encoder prepends "▁" and whether it splits words at each "▁" (see sp_bpe.cpp). A
    Sequence of steps counts as its steps (an empty one as none)."""
    normalizer = steps(config.get("normalizer"), "normalizers")
    pre = steps(config.get("pre_tokenizer"), "pretokenizers")
    if not pre:
        require(bool(normalizer), "byte_fallback without a Prepend/Replace normalizer or Metaspace")
        return ("normalizer" if _normalizer_prepends(normalizer) else "never"), False
    require(len(pre) == 1, f"pre-tokenizer sequence {[p.get('type') for p in pre]} with byte_fallback")
    require(not normalizer, f"normalizer {(normalizer or [{}])[0].get('type')!r} with the pre-tokenizer {pre[0].get('type')!r}")
    return _metaspace(pre[0])


def build_sentencepiece(config: dict, reference):
    """pytrain._native.SentencePieceBpe for a parsed byte_fallback tokenizer.json, or Unsupported(reason);
    PytrainError naming the key for a malformed vocabulary or merge. `reference`: the loaded Tokenizer."""
    from pytrain import _native

    check_neutral_extras(config)
    prepend, split = _prepend_and_split(config)
    model = config["model"]
    check_model_options(model)
    vocab, merges = vocab_and_merges(model)
    missing = [token for token in BYTE_TOKENS if token not in vocab]
    require(not missing, f"{len(missing)} of the 256 <0xNN> byte tokens missing from the vocabulary")
    byte_ids = [vocab[token] for token in BYTE_TOKENS]
    require(max(vocab.values(), default=0) <= MAX_CHAR_ID, f"a token id above {MAX_CHAR_ID}")
    require(not np.isin(merges[:, :2], byte_ids).any(), "a merge of <0xNN> byte tokens")
    token_of = {token_id: token for token, token_id in vocab.items()}
    straddlers = {token_of[token_id] for token_id in np.unique(merges[:, 2]).tolist()}
    straddlers = [token.encode("utf-8") for token in sorted(straddlers) if META in token[1:]]
    require(len(straddlers) <= MAX_STRADDLERS, f"{len(straddlers)} merges with a '▁' inside (more than {MAX_STRADDLERS})")
    char_ids = [(ord(token), token_id) for token, token_id in vocab.items() if len(token) == 1]
    ignore_merges = bool(model.get("ignore_merges", False))
    whole_words = [(token.encode("utf-8"), token_id) for token, token_id in vocab.items()] if ignore_merges else []
    return _native.SentencePieceBpe(char_ids, byte_ids, merges, whole_words, ignore_merges,
                                    added_tokens(config, reference, "none" if config.get("normalizer") is None else "other"), straddlers,
                                    prepend, split)
