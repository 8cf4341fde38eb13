"""Added tokens in the fast encoders: split out as `tokenizers` splits them (leftmost-longest), for any set of
tokens, in time linear in the text (csrc/bpe_batch.h's AddedTokens), and their overlap check (bpe_support.py)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer

from _bpe_cases import assert_same_ids, fast_pair, published_family_json
from _sp_cases import sentencepiece_json, train_model
from pytrain.tokenizer.bpe_support import OVERLAP_CHECK_BUDGET, Unsupported, _overlapping_pair

_LETTERS = "ab<|é "
_TOKENS = st.lists(st.text(_LETTERS, min_size=1, max_size=6), min_size=1, max_size=12, unique=True)
_TEXTS = st.lists(st.text(_LETTERS + "xy\n", max_size=80), min_size=1, max_size=6)


@pytest.fixture(scope="module")
def configs(documents):
    return {"byte-level": published_family_json("llama3"),
            "sentencepiece": sentencepiece_json(train_model(documents[:40], 800, words=False))}


@pytest.mark.parametrize("family", ["byte-level", "sentencepiece"])
def test_random_overlapping_added_tokens_split_as_tokenizers_does(configs, family):
    """Tokens that are prefixes, suffixes and infixes of one another, over texts of the same letters: the ids equal
    `tokenizers`' (the reference), for every token set hypothesis draws."""

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(_TOKENS, _TEXTS)
    def check(tokens, texts):
        reference = Tokenizer.from_str(configs[family])
        reference.add_tokens([AddedToken(t, normalized=False, special=True) for t in tokens])
        reference, fast = fast_pair(reference.to_str())
        assert_same_ids(reference, fast, texts + ["".join(tokens), "".join(reversed(tokens)) * 3])

    check()


def test_many_added_tokens_sharing_a_prefix(configs):
    """20k "<|tok_N|>" tokens, and tokens that almost match a long run ("aaa...ab" over a's): the case the
    former bucketed scan handled in time quadratic in the tokens or in the run."""
    reference = Tokenizer.from_str(configs["byte-level"])
    reference.add_special_tokens([f"<|tok_{i}|>" for i in range(20_000)] + ["a" * 300 + "b", "a" * 7, "<|tok_1"])
    reference, fast = fast_pair(reference.to_str())
    texts = ["x<|tok_19999|><|tok_1<|tok_12|>|> <|tok_", "a" * 5000 + "b" + "a" * 299 + "b", "a" * 299 + "b"]
    assert_same_ids(reference, fast, texts)


def _can_overlap(a: str, b: str) -> bool:
    """The definition, pair by pair: one inside the other, or a proper suffix of one is a proper prefix of the other."""
    return a in b or b in a or any(a.endswith(b[:k]) or b.endswith(a[:k]) for k in range(1, min(len(a), len(b))))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.text("abc", min_size=1, max_size=5), max_size=6), st.lists(st.text("abc", min_size=1, max_size=5), max_size=6))
def test_overlap_check_agrees_with_the_pairwise_definition(left, right):
    pair = _overlapping_pair(left, right)
    if pair is None:
        assert not any(_can_overlap(a, b) for a in left for b in right)
    else:
        assert pair[0] in left and pair[1] in right and _can_overlap(*pair)


def test_overlap_check_beyond_its_budget_falls_back():
    """Long tokens of both kinds: Unsupported (then `tokenizers` encodes), never minutes of checking."""
    side = ["x" * 800 + str(i) for i in range(OVERLAP_CHECK_BUDGET // 800**2 + 1)]
    with pytest.raises(Unsupported, match="too many long added tokens of both kinds"):
        _overlapping_pair(side, ["y"])
    assert json.dumps(_overlapping_pair(["ab"], ["bc"])) == '["ab", "bc"]'
