"""Bad input through the real CLI, one table per validation layer (pytrain/safe_read.py, pytrain/arguments.py,
pytrain/errors.py): exit 2, exactly one line on stderr naming the file or option, no traceback or Rust panic,
nothing on disk changed. Commands that fail before importing torch, so each row costs a fraction of a second."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_cli
from pytrain.errors import MAX_LINE, PytrainError
from pytrain.safe_read import MAX_JSON_DEPTH, json_depth

DEEP = "[" * 100_000 + "]" * 100_000


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mode, p.read_bytes() if p.is_file() and not p.is_fifo() else b"")
            for p in sorted(folder.rglob("*"))}


def assert_one_line_refusal(args, where: Path, *expected: str) -> str:
    """Run `pytrain ARGS`; it must be refused in one line holding every `expected` text, changing nothing in `where`."""
    before = _snapshot(where)
    proc = run_cli(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "panicked" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < MAX_LINE + 100, proc.stderr[:3000]
    for text in expected:
        assert text in lines[0], lines[0]
    assert _snapshot(where) == before
    return lines[0]


@pytest.fixture
def work(tmp_path, corpus_jsonl, tokenizer_path):
    """A folder holding a copy of the corpus and the tokenizer, and a small config whose data path is missing."""
    (tmp_path / "corpus.jsonl").write_bytes(Path(corpus_jsonl).read_bytes())
    (tmp_path / "tokenizer.json").write_bytes(Path(tokenizer_path).read_bytes())
    return tmp_path


# ----------------------------------------------------------------------------- JSON: depth, size, kind of file
def _tokenizer_nested(work: Path) -> Path:
    (work / "deep.json").write_text('{"model": ' + DEEP + "}")
    return work / "deep.json"


def _config(text: str):
    def make(work: Path) -> Path:
        (work / "run.json").write_text(text)
        return work / "run.json"
    return make


@pytest.mark.parametrize("make, args, expected", [
    (_tokenizer_nested, lambda w, f: ["pack", w / "corpus.jsonl", "--tokenizer", f, "--out", w / "out"],
     ["deep.json", f"more than the {MAX_JSON_DEPTH}"]),
    (_tokenizer_nested, lambda w, f: ["tokenizer", "train", w / "corpus.jsonl", "--like", f, "--vocab-size", "400",
                                      "--out", w / "t.json"], ["deep.json", "JSON nested"]),
    (_config('{"train": ' + DEEP + "}"), lambda w, f: ["train", "--config", f],
     ["run.json", "JSON nested 100001 levels deep"]),
    (_config('{"train": {"steps": 5, "steps": 6}}'), lambda w, f: ["train", "--config", f],
     ["run.json", 'key "steps" appears twice']),
    (_config('{"train": {"steps": ' + "9" * 5000 + "}}"), lambda w, f: ["train", "--config", f],
     ["run.json", "not valid JSON"]),
])
def test_json_files(work, make, args, expected):
    assert_one_line_refusal(args(work, make(work)), work, *expected)


def test_a_nested_manifest_and_metrics_row(work, tmp_path_factory, corpus_jsonl, tokenizer_path):
    pack = tmp_path_factory.mktemp("pack") / "data"
    run_cli("pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", pack)
    (pack / "manifest.json").write_text(DEEP)
    assert_one_line_refusal(["inspect", pack], pack.parent, "manifest.json", "unreadable manifest", "nested")
    assert_one_line_refusal(["verify", pack], pack.parent, "manifest.json", "nested")
    run = work / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(DEEP + "\n" + json.dumps({"step": 1, "tokens": 5, "loss": 1.0, "lr": 1.0,
                                                                 "tokens_per_s": 1.0}) + "\n")
    assert_one_line_refusal(["plot", "--run", run], work, "metrics.jsonl:1", "nested")


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_inputs_that_are_not_regular_files_never_block(work, kind):
    """A FIFO would block forever, /dev/zero never ends, a folder is no file: refused before anything opens them
    for reading, as a config, a tokenizer, or a document input."""
    odd = {"fifo": work / "odd.jsonl", "directory": work / "odd.jsonl", "device": Path("/dev/zero")}[kind]
    if kind == "fifo":
        os.mkfifo(odd)
    elif kind == "directory":
        odd.mkdir()
    expected = str(odd) if kind != "directory" else "odd.jsonl"
    assert_one_line_refusal(["train", "--config", odd], work, expected)
    assert_one_line_refusal(["pack", work / "corpus.jsonl", "--tokenizer", odd, "--out", work / "out"], work, expected)
    if kind != "directory":  # a folder input is a datasets folder or nothing: refused in its own words
        link = work / "input.jsonl"
        link.symlink_to(odd)
        assert_one_line_refusal(["pack", link, "--tokenizer", work / "tokenizer.json", "--out", work / "out"], work,
                                "input.jsonl", "not a document file")


# ----------------------------------------------------------------------------- YAML: aliases, depth, recursion
def _laughs(levels: int) -> str:
    """A "billion laughs": each level an anchored list of nine aliases of the level below (9**levels values)."""
    parts = ['&l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    parts += [f"&l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


@pytest.mark.parametrize("text, expected", [
    (f"optim:\n  lr: {_laughs(7)}\n", "aliases expand to more than"),
    ("train: " + DEEP + "\n", "YAML nested more than"),
    ("data:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(200)), "YAML nested more than"),
    ("train: &a [1, *a]\n", "the alias *a is inside its own anchor"),
    ("optim:\n  lr: " + json.dumps([["x" * 300] * 20] * 20) + "\n", "optim.lr must be a finite number"),
])
def test_yaml_configs(work, text, expected):
    config = work / "run.yaml"
    config.write_text(text)
    assert len(config.read_bytes()) < 300_000
    assert_one_line_refusal(["train", "--config", config], work, "run.yaml", expected)


def test_an_alias_bomb_in_an_override(work):
    (work / "run.yaml").write_text("data: {path: x}\n")
    assert_one_line_refusal(["train", "--config", work / "run.yaml", f"logging.sample_prompts={_laughs(8)}"], work,
                            'override "logging.sample_prompts"', "aliases expand")


# ----------------------------------------------------------------------------- options: numbers, text, shards
@pytest.mark.parametrize("option, value, expected", [
    ("--vocab-size", "0", "--vocab-size: must be in [1, 16777216], got 0"),
    ("--vocab-size", "-1", "--vocab-size: must be in"),
    ("--vocab-size", str(2**40), "--vocab-size: must be in"),
    ("--vocab-size", "1e3", "--vocab-size: expected a token count"),
    ("--vocab-size", "9" * 5000, "--vocab-size: expected a token count"),
    ("--min-frequency", "-1", "--min-frequency: must be in [0,"),
    ("--min-frequency", str(2**64), "--min-frequency: must be in [0,"),
    ("--max-documents", "0", "--max-documents: must be in [1,"),
    ("--jq", ".\udcff", "--jq: not valid UTF-8 text"),
    ("--eos-token", "\udcff", "--eos-token: not valid UTF-8 text"),
    ("--special-tokens", "\udcff", "--special-tokens: not valid UTF-8 text"),
    ("--jq", '.["\\udcff"]', "holds a lone surrogate"),
])
def test_tokenizer_train_options(work, option, value, expected):
    args = ["tokenizer", "train", work / "corpus.jsonl", "--out", work / "t.json", option, value]
    if option != "--vocab-size":
        args += ["--vocab-size", "400"]
    assert_one_line_refusal(args, work, expected)


@pytest.mark.parametrize("shard, expected", [
    ("0/100000000000", "100000000000 shards; pack splits its inputs into at most 99999 shards"),
    ("0/" + "9" * 5000, "shards; pack splits its inputs into at most 99999"),
    ("5/3", "shard 5 of 3 is out of range"),
])
def test_shard_counts_are_bounded_before_any_work(work, shard, expected):
    """A shard count like a pasted job id was OOM-killed building a list of its N bounds."""
    assert_one_line_refusal(["pack", work / "corpus.jsonl", "--tokenizer", work / "tokenizer.json", "--out",
                             work / "out", "--shard", shard], work, expected)


def test_usage_errors_are_one_line(work):
    assert_one_line_refusal(["generate", "--run", work, "--step", "1e3"], work, "argument --step", "--help")
    assert_one_line_refusal(["pack"], work, "the following arguments are required")


# ----------------------------------------------------------------------------- tokenizer.json that tokenizers panics on
def test_a_tokenizer_that_tokenizers_panics_on(work):
    config = json.loads((work / "tokenizer.json").read_text())
    config["normalizer"] = {"type": "Precompiled", "precompiled_charsmap": "AAAA"}  # pyo3 PanicException at load
    (work / "panics.json").write_text(json.dumps(config))
    assert_one_line_refusal(["pack", work / "corpus.jsonl", "--tokenizer", work / "panics.json", "--out", work / "o"],
                            work, "panics.json: not a valid tokenizer.json")


def test_padding_in_a_tokenizer_json_is_not_applied(work, tmp_path_factory):
    """A huge Fixed padding made `tokenizers` panic on every encode ("capacity overflow"), and any padding or
    truncation would change the packed documents: the pack equals the one made without them."""
    config = json.loads((work / "tokenizer.json").read_text())
    config["padding"] = {"strategy": {"Fixed": 2**62}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0,
                         "pad_type_id": 0, "pad_token": "<pad>"}
    config["truncation"] = {"direction": "Right", "max_length": 3, "strategy": "LongestFirst", "stride": 0}
    (work / "padded.json").write_text(json.dumps(config))
    out = tmp_path_factory.mktemp("packs")
    for name in ("padded.json", "tokenizer.json"):
        run_cli("pack", work / "corpus.jsonl", "--tokenizer", work / name, "--out", out / name, "--encoder", "tokenizers")
    assert (out / "padded.json/train/tokens.bin").read_bytes() == (out / "tokenizer.json/train/tokens.bin").read_bytes()


# ----------------------------------------------------------------------------- the layers themselves
def _reference_depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((_reference_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_reference_depth(v) for v in value), default=0)
    return 0


_KEYS = st.text(alphabet='ab[]{}"\\ \u00e9\u2028', max_size=6)
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _KEYS,
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4), max_leaves=60)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(_JSON, st.booleans())
def test_json_depth_is_the_parsed_values_depth(value, ascii_only):
    """The byte scan agrees with the depth of what json.loads builds, brackets, quotes and backslashes inside
    strings included (the reference walks the parsed value)."""
    text = json.dumps(value, ensure_ascii=ascii_only).encode()
    depth = _reference_depth(value)
    found = json_depth(text)
    assert found == depth if text.count(b"[") + text.count(b"{") > MAX_JSON_DEPTH else found >= depth


def test_json_depth_on_a_large_file():
    deep = json.dumps({"a": [[[[{"b": "]]]}}}\\\\\"[[["}]]]]} | {f"k{i}": [i, "[{"] for i in range(100)})
    assert json_depth(deep.encode()) == 6


def test_messages_are_bounded_and_control_characters_escaped():
    error = PytrainError("ab\x1b[2J\rcd" + "x" * 10**7 + "\n" + "\n".join(["y"] * 100))
    lines = str(error).split("\n")
    assert len(lines) <= 41 and all(len(line) <= MAX_LINE for line in lines)
    assert str(error).startswith("ab\\x1b[2J\\rcd") and "\x1b" not in str(error) and "\r" not in str(error)
    assert str(PytrainError(str(error))) == str(error)  # bounding twice changes nothing (pickling re-creates it)


# ----------------------------------------------------------------------------- metrics for `pytrain plot`
@pytest.mark.parametrize("matplotlib", [True, False])
def test_plot_draws_extreme_values_as_gaps(tmp_path, matplotlib):
    """inf, nan, 1e308, integers beyond float, strings and booleans in metrics.jsonl: each was a traceback in
    matplotlib's or the fallback chart's axis code (a range of 2e308 overflows). Values that cannot be drawn
    become gaps, rows whose step or token count is not a count are left out, and the plot is written."""
    from pytrain.plot import read_metrics

    run = tmp_path / "run"
    run.mkdir()
    weird = [float("inf"), float("nan"), 1e308, -1e308, 10**400, "x", True, None, 2.5]
    rows = [{"step": i + 1, "tokens": 64 * (i + 1), "loss": v, "lr": 1e-3, "tokens_per_s": 1e308 if i % 2 else 9.0}
            for i, v in enumerate(weird)]
    rows += [{"step": 10**400, "tokens": 1, "loss": 1.0, "lr": 1.0, "tokens_per_s": 1.0},
             {"step": 99, "tokens": 10**30, "loss": 1.0, "lr": 1.0, "tokens_per_s": 1.0},
             {"step": 3, "tokens": 192, "val_loss": float("inf"), "val_loss_by_source": {"a": "x", "b": 1e308, "c": 2.0}},
             {"step": 6, "tokens": 384, "val_loss": 3.0, "val_loss_by_source": "junk"}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    train, evals = read_metrics(run)
    plottable = [v for v in weird if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert [r["step"] for r in train] == [i + 1 for i, v in enumerate(weird) if v in plottable]
    assert [r["loss"] for r in train if r["loss"] == r["loss"]] == [2.5]  # the one finite, plottable loss
    assert evals[0]["val_loss_by_source"] == {"c": 2.0, "b": pytest.approx(float("nan"), nan_ok=True)}
    env = {} if matplotlib else {"PYTHONPATH": str(_hidden_matplotlib(tmp_path))}
    proc = run_cli("plot", "--run", run, "--out", tmp_path / "p.png", env=env)
    assert proc.stderr == "" and (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _hidden_matplotlib(tmp_path: Path) -> Path:
    """A folder that, first on PYTHONPATH, makes `import matplotlib` fail: the fallback chart draws the PNG."""
    stub = tmp_path / "no_matplotlib" / "matplotlib"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    return stub.parent


@pytest.mark.parametrize("pattern, expected", [("(", "end pattern with unmatched parenthesis"),
                                               ("\\p{Foo}", "invalid character property name")])
def test_a_regex_the_tokenizers_engine_rejects(work, pattern, expected):
    config = json.loads((work / "tokenizer.json").read_text())
    config["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}, config["pre_tokenizer"]]}
    (work / "regex.json").write_text(json.dumps(config))
    assert_one_line_refusal(["pack", work / "corpus.jsonl", "--tokenizer", work / "regex.json", "--out", work / "o"],
                            work, "regex.json: not a valid tokenizer.json (pre_tokenizer", expected)


@pytest.mark.parametrize("override, expected", [
    ("optim.eps=0", "optim.eps must be positive, got 0.0"), ("optim.eps=-1e-8", "optim.eps must be positive"),
    ("optim.eps=.inf", "optim.eps must be a finite number"), ("logging.peak_tflops=0", "logging.peak_tflops must be positive"),
    ("train.steps=" + "9" * 5000, "train.steps must be an integer"),
])
def test_numbers_in_the_config(work, override, expected):
    (work / "run.yaml").write_text("data: {path: x}\n")
    assert_one_line_refusal(["train", "--config", work / "run.yaml", override], work, expected)


def test_a_megatron_index_that_is_a_fifo(work):
    os.mkfifo(work / "m.idx")
    (work / "m.bin").write_bytes(b"\0" * 8)
    for name in ("m", "m.bin"):
        assert_one_line_refusal(["pack", work / name, "--tokenizer", work / "tokenizer.json", "--out", work / "out"],
                                work, "m.idx: is a named pipe (FIFO), not a Megatron index")
