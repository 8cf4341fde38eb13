"""A tokenizer.json that claims a BPE model but is malformed: `pytrain pack` names the key, one line, exit 2."""

from __future__ import annotations

import json

import pytest

from _bpe_cases import published_family_json
from conftest import run_cli
from pytrain.data.corpus import write_jsonl

SPLIT_WITH_NUMBER = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": 5}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["model"].__setitem__("merges", {"a": 1}), "model.merges: is not a list"),
    (lambda c: c["model"]["merges"].insert(3, "zzz q"), "model.merges[3]: 'zzz q' names 'zzz', which is not in model.vocab"),
    (lambda c: c["model"]["merges"].insert(0, "a b c"), "model.merges[0]: 'a b c' is not two tokens separated by one space"),
    (lambda c: c["model"]["vocab"].__setitem__("dup", c["model"]["vocab"]["a"]), "model.vocab: the id"),
    (lambda c: c["model"].__setitem__("vocab", [1, 2]), "model.vocab: is not a mapping from token to id"),
    (lambda c: c.pop("model"), "model: missing"),
    (lambda c: c.__setitem__("pre_tokenizer", SPLIT_WITH_NUMBER),
     "pre_tokenizer.pretokenizers[0].pattern: {'Regex': 5} is not"),
    (lambda c: c["added_tokens"][0].pop("content"), "added_tokens[0]: needs a string \"content\" and an integer \"id\""),
    # what tokenizers' own parser refuses, keyed from the position it reports
    (lambda c: c["added_tokens"][0].__setitem__("normalized", "no"),
     'added_tokens[0].normalized: invalid type: string "no", expected a boolean'),
    (lambda c: c["model"].__setitem__("ignore_merges", "yes"), 'model.ignore_merges: invalid type: string "yes"'),
    (lambda c: c.__setitem__("normalizer", "NFC"), "normalizer: data did not match any variant"),
    (lambda c: c.__setitem__("post_processor", "ByteLevel"), "post_processor: data did not match any variant"),
    (lambda c: c["pre_tokenizer"].__setitem__("add_prefix_space", 0),
     "pre_tokenizer.add_prefix_space: invalid type: integer `0`, expected a boolean"),
    (lambda c: c["model"]["merges"].__setitem__(2, c["model"]["merges"][2].split(" ")),
     "model.merges[2]: written as a pair, unlike model.merges[0]"),
    (lambda c: c["added_tokens"].append(dict(c["added_tokens"][0], id=5)), "added_tokens[1]: the content"),
])
def test_malformed_bpe_file_is_a_keyed_one_line_error(tmp_path, edit, message):
    config = json.loads(published_family_json("gpt2", 400))
    edit(config)
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text(json.dumps(config))
    write_jsonl(tmp_path / "c.jsonl", ["hello world"] * 3)
    proc = run_cli("pack", tmp_path / "c.jsonl", "--tokenizer", tokenizer, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert str(tokenizer) in proc.stderr and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
