"""SentencePiece-style BPE tokenizer.json files for the fast-encoder tests, all made offline.

Two sources, named so every fixture can be traced:
- `train_model` + `sentencepiece_json`: vocabularies trained here with `tokenizers`' BpeTrainer on the test corpus, laid out as
  the published Llama-2 file is (ids 0-2 <unk> <s> </s>, 3-258 the <0x00>..<0xFF> byte tokens, then the
  pieces; BPE with byte_fallback, fuse_unk, unk_token <unk>) and given each published pipeline: the
  Llama-2 / Mistral v0.1 normalizer Prepend("▁") + Replace(" ", "▁") with no pre-tokenizer, or the
  Metaspace pre-tokenizer of Mistral v0.3 and transformers' non-legacy LlamaConverter. limit_alphabet
  leaves characters out of the vocabulary, so byte fallback is exercised.
- `mistral_json` (benchmarks/llama2_tokenizer.py): the SentencePiece models the `mistral-common` PyPI
  package ships (mistral_common/data/tokenizer.model.v1: Mistral 7B v0.1/v0.2, Llama-2's format;
  *.model.v3: Mistral 7B v0.3), converted with transformers' own LlamaConverter (needs sentencepiece
  and protobuf).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from _bpe_cases import training_documents
from pytrain.tokenizer.bpe_support import BYTE_TOKENS, META

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from llama2_tokenizer import mistral_json  # noqa: E402  (re-exported for the tests)

SPECIALS = ["<unk>", "<s>", "</s>"]
SP_TEXTS = [
    "", " ", "  ", "   x", "x   ", " leading", "trailing ", "a  b   c    d", "\n", "\n\n x \n", "\t\tx",
    "<s>", "</s>", "<unk>", "<s>x", "x<s>", " <s> ", "<s> hello</s>", "a<s>b</s> c <unk>", "<s><s></s>",
    "▁", "▁▁x", " ▁x", "x▁ ▁y", "<0x41>", "<0x0A> literal", "café naïve 中文 😀 𝔘 \U000e0041 \U0010fffd",
    " " * 300, "▁" * 300, "ab" * 3000, "the of the of the " * 200,
]
LEGACY_NORMALIZER = {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": META}, {"type": "Replace", "pattern": {"String": " "}, "content": META}]}
DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": META}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
BOS_TEMPLATE = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                          {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}


def metaspace(prepend_scheme: str, split: bool) -> dict:
    return {"type": "Metaspace", "replacement": META, "prepend_scheme": prepend_scheme, "split": split}


def train_model(documents: list[str], vocab_size: int, words: bool) -> dict:
    """A byte_fallback BPE model trained over whole texts (merges may span "▁"), or over Metaspace words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    if words:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always", split=True)
    else:
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(META), normalizers.Replace(" ", META)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS + BYTE_TOKENS, limit_alphabet=120,
                                  show_progress=False)
    tokenizer.train_from_iterator(training_documents(0) + documents, trainer=trainer)
    return json.loads(tokenizer.to_str())["model"]


def sentencepiece_json(model: dict, pre_tokenizer: dict | None = None, ignore_merges: bool = False) -> str:
    """The Llama-2 layout over a trained model; `pre_tokenizer` None means the Llama-2 pipeline (Prepend +
    Replace normalizer), else that pre-tokenizer with no normalizer."""
    model = dict(model, ignore_merges=ignore_merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    added = [{"id": i, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, token in enumerate(SPECIALS)]
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": LEGACY_NORMALIZER if pre_tokenizer is None else None, "pre_tokenizer": pre_tokenizer,
        "post_processor": BOS_TEMPLATE, "decoder": DECODER, "model": model,
    })
