"""The fast encoder gives `tokenizers`' ids for SentencePiece-style BPEs (Llama-2, Mistral, TinyLlama)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from _bpe_cases import TRICKY, assert_same_ids, fast_pair, generated_texts
from _sp_cases import SP_TEXTS, metaspace, mistral_json, sentencepiece_json, train_model
from pytrain.tokenizer.fast_bpe import fast_encoder
from pytrain.errors import PytrainError

# name -> (vocabulary trained over whole texts or over words, pre-tokenizer (None: Prepend+Replace), ignore_merges)
TRAINED = {
    "llama2": (False, None, False),
    "llama2-words": (True, None, False),
    "metaspace-first": (False, metaspace("first", False), False),
    "metaspace-always-split": (True, metaspace("always", True), False),
    "metaspace-never": (False, metaspace("never", False), False),
    "metaspace-first-split-ignore-merges": (False, metaspace("first", True), True),
    "llama2-ignore-merges": (False, None, True),
}


@pytest.fixture(scope="module")
def trained(documents):
    models, configs = {}, {}

    def build(name: str) -> str:
        if name not in configs:
            words, pre, ignore_merges = TRAINED[name]
            if words not in models:
                models[words] = train_model(documents[:60], 1000, words)
            configs[name] = sentencepiece_json(models[words], pre, ignore_merges)
        return configs[name]

    return build


def _texts(documents, seed: int, count: int = 300) -> list[str]:
    """Edge cases, the byte-level suite's generated texts (all planes, long runs, specials) with Llama's
    specials mixed in, and real documents."""
    sp = [text.replace("<|endoftext|>", "</s>").replace("<pad>", "<s>") for text in generated_texts(seed, count)]
    return SP_TEXTS + sp + documents[:count // 3]


@pytest.mark.parametrize("name", list(TRAINED))
def test_trained_vocabularies_match(trained, documents, name):
    reference, fast = fast_pair(trained(name))
    assert_same_ids(reference, fast, _texts(documents, seed=len(name)))


def test_vocabulary_with_merges_across_spaces_really_needs_the_cut_check(trained, documents):
    """Merges trained over whole texts span "▁" ("▁of▁the"), so cutting before every "▁" (what Metaspace
    split=true does) changes ids; the encoder cuts only where no merge result can span and stays exact."""
    config = trained("llama2")
    merged = {"".join(m.split(" ") if isinstance(m, str) else m) for m in json.loads(config)["model"]["merges"]}
    assert any("\u2581" in token[1:-1] and token.strip("\u2581") for token in merged)
    split_everywhere = json.loads(config)
    split_everywhere.update(normalizer=None, pre_tokenizer=metaspace("always", True))
    texts = [d for d in documents[:200] if d.strip()]
    whole, cut = Tokenizer.from_str(config), Tokenizer.from_str(json.dumps(split_everywhere))
    assert [e.ids for e in whole.encode_batch_fast(texts)] != [e.ids for e in cut.encode_batch_fast(texts)]
    assert_same_ids(*fast_pair(config), texts)


def test_thread_count_does_not_change_ids(trained, documents):
    texts = _texts(documents, seed=3)
    one = fast_pair(trained("llama2"), threads=1)[1].encode_framed(texts, 1, 2, "uint16")
    many = fast_pair(trained("llama2"), threads=5)[1].encode_framed(texts, 1, 2, "uint16")
    assert one[0].tobytes() == many[0].tobytes() and one[1].tolist() == many[1].tolist() and one[2] == many[2]


_ALPHABET = st.one_of(
    st.characters(exclude_categories=("Cs",)),
    st.sampled_from(list("  \t\n\u2581ab") + TRICKY.split(" ") + ["<s>", "</s>", "<unk>", "<0x41>", "▁▁"]),
)


@pytest.mark.parametrize("name", ["llama2", "metaspace-first"])
def test_fuzzed_texts_match(trained, name):
    reference, fast = fast_pair(trained(name))

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.lists(st.lists(_ALPHABET, max_size=60).map("".join), min_size=1, max_size=8))
    def check(texts):
        assert_same_ids(reference, fast, texts)

    check()


def test_older_metaspace_fields_mean_what_tokenizers_reads(trained, documents):
    """Older files: add_prefix_space (false: never), no prepend_scheme (always), no split (true), str_rep."""
    base = json.loads(trained("metaspace-first"))
    for fields in ({"add_prefix_space": False, "prepend_scheme": "never"}, {"add_prefix_space": True}, {},
                   {"str_rep": "\u2581", "add_prefix_space": True, "prepend_scheme": "first"}):
        config = dict(base, pre_tokenizer={"type": "Metaspace", "replacement": "\u2581", **fields})
        assert_same_ids(*fast_pair(json.dumps(config)), SP_TEXTS + documents[:50])


@pytest.mark.parametrize("edit, reason", [
    (lambda c: c["model"]["vocab"].pop("<0x41>"), "byte tokens missing"),
    (lambda c: c["model"].__setitem__("dropout", 0.1), "dropout"),
    (lambda c: c["normalizer"]["normalizers"].append({"type": "NFKC"}), "not Prepend + Replace"),
    (lambda c: c["normalizer"]["normalizers"][1].__setitem__("content", "_"), "Replace other than"),
    (lambda c: c.__setitem__("pre_tokenizer", metaspace("first", False)), "'Prepend' with the pre-tokenizer 'Metaspace'"),
    (lambda c: c.update(normalizer=None, pre_tokenizer={"type": "Whitespace"}), "'Whitespace' with byte_fallback"),
    (lambda c: c.update(normalizer=None, pre_tokenizer=dict(metaspace("first", False), replacement="_")),
     "replacement '_'"),
    (lambda c: c["added_tokens"][1].__setitem__("normalized", True), "normalized=true"),
])
def test_unsupported_configurations_fall_back_with_a_reason(trained, edit, reason):
    base = trained("llama2")
    config = json.loads(base)
    edit(config)
    fast, why_not = fast_encoder(json.dumps(config).encode(), Tokenizer.from_str(base))
    assert fast is None and reason in why_not


@pytest.mark.parametrize("name, edit", [
    ("metaspace-first", lambda c: c.__setitem__("pre_tokenizer", {"type": "Sequence", "pretokenizers": [c["pre_tokenizer"]]})),
    ("metaspace-first", lambda c: c.__setitem__("normalizer", {"type": "Sequence", "normalizers": []})),
    ("llama2", lambda c: c.__setitem__("pre_tokenizer", {"type": "Sequence", "pretokenizers": []})),
    ("llama2", lambda c: c["model"].__setitem__("dropout", 0.0)),
])
def test_no_op_variants_stay_on_the_fast_path(trained, documents, name, edit):
    config = json.loads(trained(name))
    edit(config)
    assert_same_ids(*fast_pair(json.dumps(config)), SP_TEXTS + documents[:30])


def test_token_ids_past_int32_fall_back(trained):
    config = json.loads(trained("llama2"))
    config["model"]["vocab"]["q"] = 3_000_000_000
    text = json.dumps(config)
    fast, why_not = fast_encoder(text.encode(), Tokenizer.from_str(text))
    assert fast is None and "a token id above 2147483647" in why_not


def test_malformed_merge_is_an_error_naming_the_key(trained):
    base = trained("llama2")
    config = json.loads(base)
    config["model"]["merges"].insert(0, "<0x41> <0x42>")
    with pytest.raises(PytrainError, match=r"model\.merges\[0\]: .*'<0x41><0x42>', which is not in model\.vocab"):
        fast_encoder(json.dumps(config).encode(), Tokenizer.from_str(base))


def test_merges_of_byte_tokens_fall_back(trained):
    config = json.loads(trained("llama2"))
    model = config["model"]
    model["vocab"]["<0x41><0x42>"] = len(model["vocab"])
    model["merges"].insert(0, ["<0x41>", "<0x42>"])
    text = json.dumps(config)
    fast, why_not = fast_encoder(text.encode(), Tokenizer.from_str(text))
    assert fast is None and "a merge of <0xNN> byte tokens" in why_not


@pytest.fixture(scope="module")
def shipped():
    """Mistral's SentencePiece models from the mistral-common package, converted by transformers."""
    pytest.importorskip("sentencepiece")
    pytest.importorskip("mistral_common")
    cache = {}

    def build(name: str, legacy: bool) -> str:
        if (name, legacy) not in cache:
            cache[name, legacy] = mistral_json(name, legacy)
        return cache[name, legacy]

    return build


@pytest.mark.parametrize("name, legacy", [
    ("tokenizer.model.v1", True),  # Mistral 7B v0.1/v0.2: the Llama-2 / TinyLlama pipeline
    ("tokenizer.model.v1", False),  # transformers' non-legacy conversion: Metaspace(first, split=false)
    ("mistral_instruct_tokenizer_240323.model.v3", False),  # Mistral 7B v0.3, 770 control tokens
])
def test_shipped_mistral_vocabularies_match(shipped, documents, name, legacy):
    config = shipped(name, legacy)
    reference, fast = fast_pair(config)
    controls = [t["content"] for t in json.loads(config)["added_tokens"][:40]]
    texts = _texts(documents, seed=5, count=120) + [f"{a} x{b}y {a}{b}  " for a, b in zip(controls, controls[1:])]
    assert_same_ids(reference, fast, texts)


def test_a_regex_engine_on_another_unicode_version_does_not_matter_here(trained, monkeypatch):
    """The SentencePiece-style encoder uses no Unicode classes: an engine that disagrees with the byte-level
    tables (which refuses the byte-level encoder, test_bpe_exact.py) leaves this one on the fast path."""
    from pytrain import _native
    from pytrain.tokenizer import bpe_unicode

    first, last, _ = next(r for r in _native.bpe_unicode_sentinels if r[2] == 1)
    monkeypatch.setattr(_native, "bpe_unicode_sentinels", [(first, last, 0)])
    bpe_unicode.engine_disagreement.cache_clear()
    try:
        assert bpe_unicode.engine_disagreement()
        config = trained("llama2")
        fast, why_not = fast_encoder(config.encode(), Tokenizer.from_str(config))
    finally:
        bpe_unicode.engine_disagreement.cache_clear()
    assert fast is not None, why_not
