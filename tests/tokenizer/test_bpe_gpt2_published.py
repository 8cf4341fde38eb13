"""GPT-2's own vocabulary in the Hugging Face file's published layout takes the fast path, exactly.

The vocabulary is GPT-2's real one: the ranks in whisper/assets/gpt2.tiktoken, which the openai-whisper
sdist on PyPI ships (.ci/run downloads that sdist from the package registry and names it in
PYTRAIN_TEST_WHISPER_SDIST; `python benchmarks/gpt2_tokenizer.py --fetch` does the same by hand). The
merges implied by the ranks are checked against tiktoken on the same ranks, an independent BPE; the file
around them is the layout the HF gpt2 repository publishes (benchmarks/bpe_families.py: `<|endoftext|>`
with normalized=true, ByteLevel pre-tokenizer/post-processor/decoder).
"""

from __future__ import annotations

import json
import os

import pytest
from tokenizers import Tokenizer

from _bpe_cases import (
    FAMILY_TEXTS, SPACES, SPECIALS_IN_TEXT, TRICKY, _families, assert_same_ids, benchmark_module, generated_texts,
)
from conftest import run_cli

SDIST = os.environ.get("PYTRAIN_TEST_WHISPER_SDIST")
pytestmark = pytest.mark.skipif(not SDIST, reason="PYTRAIN_TEST_WHISPER_SDIST (the openai-whisper sdist) not set; "
                                                   ".ci/run sets it")


@pytest.fixture(scope="module")
def gpt2():
    """(ranks, GPT-2's tokenizer.json text in the published layout)."""
    builder = benchmark_module("gpt2_tokenizer")
    ranks = builder.ranks_from_sdist(SDIST)
    model = json.loads(builder.build_tokenizer(ranks).to_str())["model"]
    vocab = {token: i for token, i in model["vocab"].items() if token != "<|endoftext|>"}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return ranks, json.dumps(_families().layout("gpt2", vocab, merges))


def test_published_gpt2_file_is_exact_on_the_fast_path(gpt2, documents):
    import tiktoken

    ranks, config = gpt2
    assert json.loads(config)["added_tokens"][0]["normalized"] is True  # what used to send it to tokenizers
    reference = Tokenizer.from_str(config)
    texts = FAMILY_TEXTS + [TRICKY, SPACES] + SPECIALS_IN_TEXT + generated_texts(seed=11) + documents[:300]
    independent = tiktoken.Encoding("gpt2-ranks", pat_str=benchmark_module("gpt2_tokenizer").GPT2_PAT_STR,
                                    mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})
    want = [independent.encode(t, allowed_special="all") for t in texts]
    assert [e.ids for e in reference.encode_batch(texts, add_special_tokens=False)] == want
    from pytrain.tokenizer.fast_bpe import fast_encoder

    fast, why_not = fast_encoder(config.encode(), reference, threads=2)
    assert fast is not None, why_not
    assert_same_ids(reference, fast, texts)


def test_pack_uses_the_fast_encoder_on_it(gpt2, tmp_path):
    (tmp_path / "tokenizer.json").write_text(gpt2[1], encoding="utf-8")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in FAMILY_TEXTS + [TRICKY]),
                                         encoding="utf-8")
    run_cli("pack", tmp_path / "docs.jsonl", "--tokenizer", tmp_path / "tokenizer.json", "--out", tmp_path / "packed",
            "--encoder", "fast")
    assert json.loads((tmp_path / "packed" / "manifest.json").read_text())["encoder"] == "fast"
