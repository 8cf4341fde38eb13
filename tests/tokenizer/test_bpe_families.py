"""The published layouts (benchmarks/bpe_families.py) are what transformers' own converters write."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from tokenizers import Tokenizer

from _bpe_cases import _families, training_documents

SECTIONS = ("normalizer", "pre_tokenizer", "post_processor", "decoder")


def _through_tokenizers(config: dict) -> dict:
    """The layout as tokenizers serializes it (every default spelled out)."""
    return json.loads(Tokenizer.from_str(json.dumps(config)).to_str())


@pytest.mark.parametrize("family, converter_name", [("gpt2", "GPT2Converter"), ("qwen2", "Qwen2Converter")])
def test_layout_equals_the_transformers_converter(family, converter_name):
    import importlib

    convert_slow_tokenizer = importlib.import_module("transformers.convert_slow_tokenizer")

    families = _families()
    vocab, merges = families.train(family, training_documents(0), 600)
    original = SimpleNamespace(add_prefix_space=False, add_bos_token=False)
    converter = getattr(convert_slow_tokenizer, converter_name)(original)
    theirs = json.loads(converter.converted(vocab=dict(vocab), merges=[tuple(m.split(" ")) for m in merges]).to_str())
    ours = _through_tokenizers(families.layout(family, vocab, merges))
    for section in SECTIONS:
        assert ours[section] == theirs[section], section
    options = {k: v for k, v in theirs["model"].items() if k not in ("vocab", "merges")}
    assert {k: ours["model"][k] for k in options} == options
