"""`pytrain pack --format chat`: conversations packed with an assistant-only loss mask."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from conftest import run_cli
from pytrain.data import format as fmt
from pytrain.sampling.dataset import PackedDataset
from pytrain.sampling.mixture import Mixture
from pytrain.labels import IGNORE_INDEX

CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4."}, {"role": "user", "content": "And 3+3?"},
     {"role": "assistant", "content": "6."}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue \ud800!"},
     {"role": "user", "content": "Thanks"}],
]
EXPECTED_TEXT = [
    "System: Be brief.\n\nUser: What is 2+2?\n\nAgent: 4.<|endoftext|>\n\nUser: And 3+3?\n\nAgent: 6.<|endoftext|>",
    "User: Name a colour.\n\nAgent: Blue \ufffd!<|endoftext|>\n\nUser: Thanks<|endoftext|>",
]
TRAINED = [["4.<|endoftext|>", "6.<|endoftext|>"], ["Blue \ufffd!<|endoftext|>"]]


def trained_spans(tok, tokens, mask):
    edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    return [tok.decode(t.tolist(), skip_special_tokens=False)
            for t, m in zip(np.split(tokens, edges), np.split(mask, edges)) if m[0]]


@pytest.fixture()
def chat_inputs(tmp_path):
    with open(tmp_path / "messages.jsonl", "w") as handle:
        for conversation in CONVERSATIONS:
            handle.write(json.dumps({"messages": conversation}) + "\n")
    with open(tmp_path / "textform.jsonl", "w") as handle:
        for text in EXPECTED_TEXT:
            handle.write(json.dumps({"text": text}) + "\n")
    return tmp_path


def test_messages_and_text_form_pack_the_same(chat_inputs, tokenizer_path):
    tok = Tokenizer.from_file(str(tokenizer_path))
    packed = {}
    for name, extra in (("messages.jsonl", []), ("textform.jsonl", ["--field", "text"])):
        out = chat_inputs / f"out-{name}"
        run_cli("pack", chat_inputs / name, "--format", "chat", *extra, "--tokenizer", tokenizer_path, "--out", out)
        data = fmt.open_split(out, "train")
        assert fmt.read_manifest(out)["loss_mask"] is True
        docs = [data.document(d) for d in range(data.num_docs)]
        masks = [np.asarray(data.mask[data.offsets[d]:data.offsets[d + 1]]) for d in range(data.num_docs)]
        assert [tok.decode(d.tolist(), skip_special_tokens=False) for d in docs] == EXPECTED_TEXT
        assert [trained_spans(tok, d, m) for d, m in zip(docs, masks)] == TRAINED
        assert all(d[-1] == 0 for d in docs)  # every document ends with EOS
        packed[name] = (out / "train/tokens.bin").read_bytes(), (out / "train/mask.bin").read_bytes()
        run_cli("verify", out)
    assert packed["messages.jsonl"] == packed["textform.jsonl"]


def test_dataset_labels_ignore_masked_tokens(chat_inputs, tokenizer_path):
    out = chat_inputs / "out"
    run_cli("pack", chat_inputs / "messages.jsonl", "--format", "chat", "--tokenizer", tokenizer_path, "--out", out)
    data = fmt.open_split(out, "train")
    ds = PackedDataset(out, 8, shuffle=False)
    stream, mask = np.asarray(data.tokens, dtype=np.int64), np.asarray(data.mask)
    for g in range(len(ds)):
        sample = ds[g]
        next_tokens = stream[g * 8 + 1: g * 8 + 9]
        expected = np.where(mask[g * 8 + 1: g * 8 + 9] == 1, next_tokens, IGNORE_INDEX)
        np.testing.assert_array_equal(sample["labels"], expected)
    assert (np.concatenate([ds[g]["labels"] for g in range(len(ds))]) == IGNORE_INDEX).any()
    batch = ds.get_batch(range(len(ds)))  # read as one window
    expected = np.where(mask[1:len(ds) * 8 + 1] == 1, stream[1:len(ds) * 8 + 1], IGNORE_INDEX)
    np.testing.assert_array_equal(batch["labels"].numpy().ravel(), expected)


def test_inspect_shows_masked_spans_and_verify_checks_the_mask(chat_inputs, tokenizer_path):
    out = chat_inputs / "out"
    run_cli("pack", chat_inputs / "messages.jsonl", "--format", "chat", "--tokenizer", tokenizer_path, "--out", out)
    shown = run_cli("inspect", out, "--doc", 1).stdout
    assert "\u27e6User: Name a colour.\n\nAgent: \u27e7Blue \ufffd!<|endoftext|>\u27e6\n\nUser: Thanks<|endoftext|>\u27e7" in shown
    mask = bytearray((out / "train/mask.bin").read_bytes())
    mask[3] ^= 1
    (out / "train/mask.bin").write_bytes(bytes(mask))
    proc = run_cli("verify", out, check=False)
    assert proc.returncode == 2 and "loss mask was modified" in proc.stderr


def test_bad_conversations_are_rejected_with_reasons(tmp_path, tokenizer_path):
    lines = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"messages": [{"role": "wizard", "content": "x"}]},
        {"messages": "not a list"},
        {"other": 1},
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    proc = run_cli("pack", tmp_path / "c.jsonl", "--format", "chat", "--tokenizer", tokenizer_path, "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "c.jsonl:2: conversation has no assistant turn" in proc.stderr
    run_cli("pack", tmp_path / "c.jsonl", "--format", "chat", "--tokenizer", tokenizer_path, "--out", tmp_path / "o",
            "--on-bad-line", "skip")
    manifest = fmt.read_manifest(tmp_path / "o")
    assert manifest["rejected"] == {"bad_conversation": 3, "missing_field": 1}
    assert manifest["splits"]["train"]["documents"] == 1


def test_a_mixture_of_chat_and_plain_data_masks_only_the_chat_rows(chat_inputs, tokenizer_path):
    """A batch mixing rows of a chat pack and of a plain pack: the plain rows train on every next token."""
    chat, plain = chat_inputs / "chat", chat_inputs / "plain"
    run_cli("pack", chat_inputs / "messages.jsonl", "--format", "chat", "--tokenizer", tokenizer_path, "--out", chat)
    run_cli("pack", chat_inputs / "textform.jsonl", "--field", "text", "--tokenizer", tokenizer_path, "--out", plain)
    ds = Mixture([{"name": "chat", "path": str(chat), "weight": 1.0},
                  {"name": "plain", "path": str(plain), "weight": 1.0}]).train_dataset(8, shuffle=False)
    batch = ds.get_batch(range(20))
    sources = [ds.names[ds.locate(g)[0]] for g in range(20)]
    assert set(sources) == {"chat", "plain"}
    ignored = (batch["labels"] == IGNORE_INDEX).numpy()
    plain_rows = [row for row, name in enumerate(sources) if name == "plain"]
    assert not ignored[plain_rows].any() and ignored[[r for r in range(20) if r not in plain_rows]].any()
    assert (batch["labels"][plain_rows, :-1] == batch["input_ids"][plain_rows, 1:]).all()
