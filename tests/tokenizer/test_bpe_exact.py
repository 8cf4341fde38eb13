"""The fast encoder gives `tokenizers`' ids, token for token, for every supported tokenizer family."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer

from _bpe_cases import (
    FAMILY_TEXTS, LLAMA3_PATTERN, SPECIALS_IN_TEXT, TRICKY, generated_texts, gpt2_split_tokenizer_json,
    llama3_tokenizer_json, published_family_json, split_tokenizer_json, assert_same_ids, fast_pair,
)
from conftest import run_cli
from pytrain.tokenizer.fast_bpe import fast_encoder
from pytrain.errors import PytrainError


def _pytrain_tokenizer(tmp_path_factory, corpus_jsonl, vocab_size: int, specials: list[str]) -> str:
    out = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    run_cli("tokenizer", "train", corpus_jsonl, "--vocab-size", vocab_size, "--out", out,
            "--special-tokens", *specials, "--max-documents", 300)
    tokenizer = Tokenizer.from_file(str(out))
    # A non-special added token (with a space) must be split out of the text as well.
    tokenizer.add_tokens([AddedToken("hello world", normalized=False)])
    return tokenizer.to_str()


PUBLISHED = ["gpt2", "llama3", "qwen2", "qwen3", "neox"]  # the published layouts (tests/_bpe_cases.py)
FAMILIES = ["pytrain-300", "pytrain-2000", "pytrain-8000", "gpt2-split", "llama3-split", "llama3-merges", "qwen-digits",
            *(f"published-{name}" for name in PUBLISHED)]


@pytest.fixture(scope="module")
def family_json(tmp_path_factory, corpus_jsonl):
    cache = {}

    def build(name: str) -> str:
        if name not in cache:
            if name.startswith("pytrain-"):
                cache[name] = _pytrain_tokenizer(tmp_path_factory, corpus_jsonl, int(name.split("-")[1]),
                                                 ["<pad>", "<|user|>", "<|eot|>", "<|eot_id|>"])
            elif name == "gpt2-split":
                cache[name] = gpt2_split_tokenizer_json(1500)
            elif name == "llama3-split":
                cache[name] = llama3_tokenizer_json(1500)
            elif name.startswith("published-"):
                cache[name] = published_family_json(name.split("-")[1])
            elif name == "llama3-merges":
                cache[name] = split_tokenizer_json(LLAMA3_PATTERN, 1500, ignore_merges=False, seed=1)
            else:
                cache[name] = split_tokenizer_json(LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}"), 800,
                                                   ignore_merges=True)
        return cache[name]

    return build


@pytest.mark.parametrize("name", FAMILIES)
def test_generated_texts_match(family_json, documents, name):
    reference, fast = fast_pair(family_json(name))
    assert_same_ids(reference, fast, FAMILY_TEXTS + generated_texts(seed=len(name)) + documents[:200])


def test_thread_count_does_not_change_ids(family_json, documents):
    config = family_json("published-qwen2")  # with NFC: some documents go to the reference
    texts = FAMILY_TEXTS + generated_texts(seed=7, count=300) + documents[:100]
    one = fast_pair(config, threads=1)[1].encode_framed(texts, 5, 6, "uint32")
    many = fast_pair(config, threads=7)[1].encode_framed(texts, 5, 6, "uint32")
    assert one[0].tobytes() == many[0].tobytes() and one[1].tolist() == many[1].tolist() and one[2] == many[2]


@pytest.mark.parametrize("name, texts", [
    ("pytrain-300", ["a b", "", "<pad>", "x"]),
    ("published-neox", ["a b", "e\u0301 x", "", "<|padding|>", "\u212b", "x   y", ""]),  # NFC: some go to tokenizers
])
def test_framing_drops_empty_documents_and_narrows(family_json, name, texts):
    reference, fast = fast_pair(family_json(name))
    tokens, lengths, dropped = fast.encode_framed(texts, 7, 9, "uint16")
    ids = [e.ids for e in reference.encode_batch_fast(texts, add_special_tokens=False)]
    expected = [[7, *x, 9] for x in ids if x]
    assert dropped == texts.count("") and tokens.dtype.str == "<u2"
    assert tokens.tolist() == [t for doc in expected for t in doc] and lengths.tolist() == [len(d) for d in expected]


_ALPHABET = st.one_of(
    st.characters(exclude_categories=("Cs",)),
    st.sampled_from(list(" \t\r\n'0123456789sStTlLdDmMreREvV\u017f\u00a0\u3000") + TRICKY.split(" ")),
    st.sampled_from(SPECIALS_IN_TEXT),
)
_TEXTS = st.lists(st.lists(_ALPHABET, max_size=60).map("".join), min_size=1, max_size=8)


@pytest.mark.parametrize("name", ["pytrain-2000", "published-llama3", "published-qwen3", "published-neox"])
def test_fuzzed_texts_match(family_json, name):
    reference, fast = fast_pair(family_json(name))

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(_TEXTS)
    def check(texts):
        assert_same_ids(reference, fast, texts)

    check()


def _config_with(base: str, edit) -> str:
    config = json.loads(base)
    edit(config)
    return json.dumps(config)


@pytest.mark.parametrize("edit, reason", [
    (lambda c: c.__setitem__("normalizer", {"type": "NFKC"}), "normalizer 'NFKC'"),
    (lambda c: c.__setitem__("normalizer", {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]}),
     "normalizer sequence ['NFC', 'Lowercase']"),
    (lambda c: c["model"].__setitem__("byte_fallback", True), "byte_fallback"),
    (lambda c: c["model"].__setitem__("dropout", 0.1), "dropout"),
    (lambda c: c["pre_tokenizer"].__setitem__("add_prefix_space", True), "add_prefix_space"),
    (lambda c: c["added_tokens"][0].__setitem__("lstrip", True), "lstrip=true"),
    (lambda c: c.__setitem__("post_processor", {"type": "BertProcessing", "sep": ["x", 1], "cls": ["y", 2]}),
     "post-processor 'BertProcessing'"),
    (lambda c: c.__setitem__("pre_tokenizer", {"type": "Whitespace"}), "pre-tokenizer 'Whitespace'"),
    (lambda c: c["model"].update(unk_token="a") or c["model"]["vocab"].pop("Ā"), "byte-level characters missing"),
])
def test_unsupported_configurations_fall_back_with_a_reason(family_json, edit, reason):
    base = family_json("pytrain-300")
    fast, why_not = fast_encoder(_config_with(base, edit).encode(), Tokenizer.from_str(base))
    assert fast is None and reason in why_not


def test_unknown_split_pattern_falls_back(family_json):
    def edit(c):
        c["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = LLAMA3_PATTERN + "|x"
    base = family_json("llama3-split")
    fast, why_not = fast_encoder(_config_with(base, edit).encode(), Tokenizer.from_str(base))
    assert fast is None and "unknown pre-tokenizer regex" in why_not


def test_wordpiece_falls_back():
    from tokenizers import models

    tokenizer = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    fast, why_not = fast_encoder(tokenizer.to_str().encode(), tokenizer)
    assert fast is None and why_not


def test_a_regex_engine_on_another_unicode_version_falls_back(family_json, monkeypatch):
    """An engine that classifies a sentinel code point otherwise (as another Unicode version would) is refused."""
    from pytrain import _native
    from pytrain.tokenizer import bpe_unicode

    first, last, cls = next(r for r in _native.bpe_unicode_sentinels if r[2] == 1)  # a letter since some version
    monkeypatch.setattr(_native, "bpe_unicode_sentinels", [(first, last, 0)])
    bpe_unicode.engine_disagreement.cache_clear()
    try:
        config = family_json("pytrain-300")
        fast, why_not = fast_encoder(config.encode(), Tokenizer.from_str(config))
    finally:
        bpe_unicode.engine_disagreement.cache_clear()
    assert fast is None and f"takes U+{first:04X} for a letter, unlike Unicode 16.0.0" in why_not


def test_another_tokenizers_release_keeps_the_fast_path(family_json, monkeypatch):
    """No release is required: what decides is whether its regex engine agrees with the tables."""
    import tokenizers

    monkeypatch.setattr(tokenizers, "__version__", "0.0.0")
    reference, fast = fast_pair(family_json("published-llama3"))
    assert_same_ids(reference, fast, FAMILY_TEXTS)


@pytest.mark.parametrize("edit", [
    lambda c: c["pre_tokenizer"].update(trim_offsets=False),  # offsets only
    lambda c: c.__setitem__("pre_tokenizer", {"type": "Sequence", "pretokenizers": [c["pre_tokenizer"]]}),
    lambda c: c.__setitem__("normalizer", {"type": "Sequence", "normalizers": []}),
    lambda c: c.__setitem__("post_processor", {"type": "Sequence", "processors": [{**c["post_processor"], "trim_offsets": True}]}),
    lambda c: c.__setitem__("decoder", None),
    lambda c: c["added_tokens"][0].update(normalized=False),
])
def test_no_op_variants_stay_on_the_fast_path(family_json, edit):
    config = _config_with(family_json("published-gpt2"), edit)
    reference, fast = fast_pair(config)
    assert_same_ids(reference, fast, FAMILY_TEXTS + generated_texts(seed=3, count=100))


def test_added_tokens_of_both_kinds_that_can_overlap_fall_back(family_json):
    """tokenizers splits normalized=false tokens out first, then normalized=true ones (NeoX's space runs):
    one leftmost-longest pass differs once a token of each kind can overlap, as "x  y" can with "x " here."""
    def edit(c):
        c["added_tokens"].append({**c["added_tokens"][0], "id": c["added_tokens"][-1]["id"] + 1, "content": "x "})
    config = _config_with(family_json("published-neox"), edit)
    fast, why_not = fast_encoder(config.encode(), Tokenizer.from_str(config))
    assert fast is None and "'x ' (normalized=false) and '" in why_not and "' (normalized=true) can overlap" in why_not


def test_added_tokens_of_both_kinds_that_cannot_overlap_stay_fast(family_json):
    """GPT-2's published file (<|endoftext|> normalized=true) with chat tokens added the usual way."""
    reference = Tokenizer.from_str(family_json("published-gpt2"))
    reference.add_special_tokens(["<|im_start|>", "<|im_end|>", "<pad>"])
    fast, why_not = fast_encoder(reference.to_str().encode(), reference)
    assert fast is not None, why_not
    assert_same_ids(reference, fast, FAMILY_TEXTS + SPECIALS_IN_TEXT + ["<|im_start|><|endoftext|><|im_end|><pad>x",
                                                                       "<<|im_start|>|endoftext|>"])


def test_byte_level_file_missing_a_byte_without_unk_is_an_error(family_json):
    """tokenizers would silently drop that byte from the text: a one-line error naming the key instead."""
    config = json.loads(family_json("pytrain-300"))
    del config["model"]["vocab"]["Ā"]
    text = json.dumps(config)
    with pytest.raises(PytrainError, match=r"model\.vocab: the byte-level character 'Ā' \(byte 0x00\) is missing"):
        fast_encoder(text.encode(), Tokenizer.from_str(text))


def test_dropout_zero_is_no_dropout(family_json):
    config = _config_with(family_json("published-gpt2"), lambda c: c["model"].__setitem__("dropout", 0.0))
    assert_same_ids(*fast_pair(config), FAMILY_TEXTS + generated_texts(seed=5, count=100))


def test_concurrent_calls_on_one_encoder(family_json, documents):
    import threading

    reference, fast = fast_pair(family_json("pytrain-2000"))
    texts = documents[:150] + generated_texts(seed=11, count=150)
    expected = [e.ids for e in reference.encode_batch_fast(texts, add_special_tokens=False)]
    results = []
    workers = [threading.Thread(target=lambda: results.append(fast.encode_lists(texts))) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not any(worker.is_alive() for worker in workers)
    assert results == [expected] * 3


def test_added_tokens_sharing_first_bytes_one_byte_tokens_and_prefixes(family_json):
    """Leftmost-longest across tokens of one and more bytes that share first bytes (bucketed in csrc)."""
    reference = Tokenizer.from_str(family_json("published-llama3"))
    reference.add_special_tokens(["[", "[c", "[control_1]", "[control_10]", "[co", "é", "éa", "\u2581"])
    fast, why_not = fast_encoder(reference.to_str().encode(), reference)
    assert fast is not None, why_not
    assert_same_ids(reference, fast, ["[", "[[", "[c", "[co", "[con", "[control_1]", "[control_10]", "[control_100]",
                                      "x[control_1[control_10]]", "éé éa éaa [é", "\u2581\u2581[", "a[", "[\u2581"])
