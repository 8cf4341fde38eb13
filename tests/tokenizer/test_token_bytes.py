"""Bytes per token (the denominator of val_bpb) against the tokenizer's own decode, on whole documents."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from pytrain.tokenizer.files import load_tokenizer
from pytrain.tokenizer.token_bytes import token_bytes

EXTRA = ["naïve café — 東京 🙂 déjà vu", " leading space", "  two leading spaces\n\ttab", "x"]


@pytest.fixture(scope="module")
def llama2_tokenizer(tmp_path_factory, corpus_jsonl):
    out = tmp_path_factory.mktemp("tok_llama2") / "tokenizer.json"
    run_cli("tokenizer", "train", corpus_jsonl, "--style", "llama2", "--vocab-size", 600, "--out", out)
    return out


@pytest.mark.parametrize("style", ["gpt2", "llama2"])
def test_document_bytes_are_the_utf8_bytes_of_the_decoded_text(style, tokenizer_path, llama2_tokenizer, documents):
    """Byte-level (GPT-2 style) and SentencePiece-style (▁, <0xNN> byte fallback, the decoder's leading-space
    strip) tokenizers: for every document, multi-byte characters split across tokens included, the table's
    bytes equal len(tokenizer.decode(ids).encode())."""
    tokenizer = load_tokenizer(tokenizer_path if style == "gpt2" else llama2_tokenizer)
    table = token_bytes(tokenizer)
    assert table is not None and len(table.lengths) == tokenizer.get_vocab_size(with_added_tokens=True)
    split_characters = 0
    for text in documents[:80] + EXTRA:
        ids = tokenizer.encode(text).ids  # with the post-processor's BOS, for llama2
        decoded = tokenizer.decode(ids)
        assert table.document_bytes(ids) == len(decoded.encode("utf-8")), text[:40]
        split_characters += "\ufffd" in "".join(tokenizer.decode([i]) for i in ids)
    assert split_characters  # some characters are split over several tokens (or byte-fallback tokens)
    specials = [i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special]
    assert specials and all(table.lengths[i] == 0 for i in specials)
    if style == "llama2":
        assert table.start_cut.max() == 1  # the space the normalizer prepends, stripped by the decoder


def test_an_unknown_decoder_gives_no_table(tokenizer_path, tmp_path):
    config = json.loads(tokenizer_path.read_text())
    config["decoder"] = {"type": "WordPiece", "prefix": "##", "cleanup": True}
    (tmp_path / "tokenizer.json").write_text(json.dumps(config))
    assert token_bytes(load_tokenizer(tmp_path / "tokenizer.json")) is None
    config["decoder"] = {"type": "Sequence", "decoders": [{"type": "Strip", "content": " ", "start": 1, "stop": 0},
                                                         {"type": "ByteFallback"}, {"type": "Fuse"}]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(config))  # a Strip before Fuse strips every token
    assert token_bytes(load_tokenizer(tmp_path / "tokenizer.json")) is None
