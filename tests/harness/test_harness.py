"""`pytrain eval` and `eval:` during training against lm-evaluation-harness's own Hugging Face backend.

One tiny run is trained here (8 steps, on ASCII documents so that the bits-per-byte reference can decode
any slice of them exactly) with downstream evaluation every 4 steps; its step-8 checkpoint is exported and
scored by `lm_eval --model hf` (the harness's `simple_evaluate(model="hf")`, what the CLI calls) on three
local tasks this file writes: multiple choice, rolling log-likelihood (one document longer than the
model's context, so it spans several windows) and greedy generation.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")  # lm-eval's hf backend, the reference

from _train_fixtures import BASE, ENV, train  # noqa: E402
from conftest import run_cli  # noqa: E402
from pytrain.cli import main  # noqa: E402
from pytrain.errors import PytrainError  # noqa: E402

TASKS = ["mini_mc", "mini_roll", "mini_gen"]
LIMIT_IN_LOOP = 6


def _write_tasks(folder: Path, documents: list[str]) -> None:
    """Three task YAMLs over local JSONL files (absolute paths: the harness resolves them from the cwd)."""
    rng = random.Random(0)
    # One-token choices (in the tests' tokenizer: the requests of a question share a forward) and longer ones
    # (each its own: sharing one would score them on each other's tokens); the last question is longer than
    # the model's context (256 tokens), so it is left-truncated.
    words = [" return", " class", " value", " function", " object", " def __init__(self, name):",
             " raise ValueError(name)"]
    questions = [doc[:80] for doc in documents[:11]] + ["\n\n".join(documents)[:4000]]
    mc = [{"question": question, "choices": rng.sample(words, 4), "answer": i % 4} for i, question in enumerate(questions)]
    # The last document spans several context windows (256 tokens), all of them on one of two ranks: an
    # imbalance of forwards that the sharded model must absorb.
    rolling = [{"text": doc[:300]} for doc in documents[:11]] + [{"text": "\n\n".join(documents)[:6000]}]
    generation = [{"prompt": doc[:60], "target": doc[60:64]} for doc in documents[:6]]
    data = {"mc": mc, "roll": rolling, "gen": generation}
    for name, rows in data.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = lambda name: {"dataset_path": "json", "test_split": "test",  # noqa: E731
                           "dataset_kwargs": {"data_files": {"test": str(folder / f"{name}.jsonl")}}}
    configs = {
        "mini_mc": {**common("mc"), "output_type": "multiple_choice", "doc_to_text": "{{question}}",
                    "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}",
                    "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]},
        "mini_roll": {**common("roll"), "output_type": "loglikelihood_rolling", "doc_to_text": "",
                      "doc_to_target": "{{text}}", "metric_list": [{"metric": "word_perplexity"},
                                                                   {"metric": "byte_perplexity"},
                                                                   {"metric": "bits_per_byte"}]},
        "mini_gen": {**common("gen"), "output_type": "generate_until", "doc_to_text": "{{prompt}}",
                     "doc_to_target": "{{target}}", "metric_list": [{"metric": "exact_match"}],
                     "generation_kwargs": {"until": ["\n", " "], "max_gen_toks": 12, "do_sample": False}},
    }
    for task, config in configs.items():
        (folder / f"{task}.yaml").write_text(yaml.safe_dump({"task": task, **config}))


@pytest.fixture(scope="module")
def ascii_documents(documents) -> list[str]:
    picked = [doc for doc in documents if doc.isascii()]
    assert len(picked) >= 20
    return picked


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory, ascii_documents) -> Path:
    folder = tmp_path_factory.mktemp("tasks")
    _write_tasks(folder, ascii_documents[-12:])
    return folder


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory, ascii_documents, tokenizer_path, tasks_dir) -> Path:
    """A tiny run on ASCII documents, scored on mini_mc and mini_roll every 4 steps (and at the end)."""
    root = tmp_path_factory.mktemp("eval_run")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in ascii_documents))
    subprocess.run([sys.executable, "-m", "pytrain", "pack", str(corpus), "--tokenizer", str(tokenizer_path),
                    "--out", str(root / "data"), "--val-docs", "12"], check=True, capture_output=True, env=ENV)
    config = json.loads(json.dumps(BASE))
    config["data"]["path"] = str(root / "data")
    config["logging"]["sample_every"] = 0
    config["optim"]["lr"] = 1e-3  # at 1e-2 the 8 steps end in a model that generates nothing but newlines
    config["eval"] = {"tasks": ["mini_mc", "mini_roll"], "every": 4, "include_path": str(tasks_dir),
                      "limit": LIMIT_IN_LOOP, "batch_size": 4}
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    train(root / "run.yaml", f"train.run_dir={root / 'run'}")
    return root / "run"


@pytest.fixture(scope="module")
def exported(eval_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "hf"
    run_cli("export", "--run", eval_run, "--out", out)
    return out


def _hf_results(exported: Path, tasks_dir: Path, **options) -> dict:
    """The harness's own Hugging Face backend on the export: what `lm_eval --model hf` computes."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(model="hf", model_args=f"pretrained={exported},dtype=float32", tasks=TASKS,
                           task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
                           batch_size=4, device="cpu", bootstrap_iters=0, **options)


@pytest.fixture(scope="module")
def hf_results(exported, tasks_dir) -> dict:
    return _hf_results(exported, tasks_dir, log_samples=True)


def _assert_same_scores(ours: dict, reference: dict) -> None:
    """acc / acc_norm / exact_match equal; bits per byte within 1e-4; perplexities within 1e-4 relative."""
    for task in TASKS:
        mine, theirs = ours["results"][task], reference["results"][task]
        metrics = [key for key in theirs if "," in key and "_stderr" not in key]
        assert metrics and sorted(metrics) == sorted(k for k in mine if "," in k and "_stderr" not in k), task
        for key in metrics:
            if "perplexity" in key:
                assert mine[key] == pytest.approx(theirs[key], rel=1e-4), (task, key)
            elif "bits_per_byte" in key:
                assert mine[key] == pytest.approx(theirs[key], abs=1e-4), (task, key)
            else:
                assert mine[key] == theirs[key], (task, key)


def _eval(run: Path, tasks_dir: Path, out: Path, *extra: str) -> int:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(["eval", str(run), "--tasks", ",".join(TASKS), "--include-path", str(tasks_dir),
                     "--out", str(out), "--batch-size", "4", "--bootstrap-iters", "0", *extra])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def our_results(eval_run, tasks_dir, tmp_path_factory) -> tuple[dict, str]:
    """`pytrain eval` in one process: (its results file, what it printed)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("ours") / "results.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert _eval(eval_run, tasks_dir, out) == 0
    assert not list(out.parent.glob(".results.json.tmp-*"))
    return json.loads(out.read_text()), printed.getvalue()


def test_pytrain_eval_gives_the_numbers_of_lm_eval_hf_on_the_export(our_results, hf_results):
    results, printed = our_results
    _assert_same_scores(results, hf_results)
    assert results["pytrain"]["step"] == 8 and results["pytrain"]["command"] == "eval"
    for key in ("results", "versions", "n-shot", "configs", "higher_is_better", "n-samples"):  # the harness's schema
        assert key in results, key
    from lm_eval.utils import make_table

    assert make_table(results) in printed  # the table lm_eval prints


def test_every_answer_matches_the_hf_backend(eval_run, hf_results, tasks_dir):
    """Per document, through the model registered with the harness as "pytrain": the same log-likelihoods (and
    greedy flags) and the same generated text as the Hugging Face backend."""
    import pytrain.eval  # noqa: F401  (registers "pytrain")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from pytrain.train.distributed import shutdown

    try:
        ours = simple_evaluate(model="pytrain", model_args=f"run={eval_run}", tasks=TASKS, batch_size=4,
                               task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
                               bootstrap_iters=0, log_samples=True)
    finally:
        shutdown()
    generated = []
    for task in TASKS:
        theirs = {s["doc_id"]: s for s in hf_results["samples"][task]}
        mine = {s["doc_id"]: s for s in ours["samples"][task]}
        assert sorted(mine) == sorted(theirs) and mine
        for doc_id, sample in mine.items():
            for a, b in zip(sample["resps"], theirs[doc_id]["resps"], strict=True):
                if task == "mini_gen":
                    assert a == b, (doc_id, a, b)
                    generated.append(a[0])
                elif task == "mini_mc":
                    assert a[0][0] == pytest.approx(b[0][0], abs=1e-4) and a[0][1] == b[0][1], (doc_id, a, b)
                else:
                    assert a[0] == pytest.approx(b[0], abs=1e-3), (doc_id, a, b)
    assert any(text.strip() for text in generated)  # the generations compared are not all empty


def test_two_ranks_give_the_numbers_of_one(eval_run, tasks_dir, our_results, tmp_path):
    """torchrun, 2 CPU ranks (gloo): requests split over the ranks and gathered, the model sharded by FSDP2
    (forwards in lockstep) and, with --no-shard, a copy per rank: the same numbers as one process."""
    one = our_results[0]
    outs = [tmp_path / "sharded.json", tmp_path / "copies.json"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(Path(__file__).parent / "_eval_twice.py"), *map(str, outs), str(eval_run), "--tasks",
               ",".join(TASKS), "--include-path", str(tasks_dir), "--batch-size", "4", "--bootstrap-iters", "0"]
    proc = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("sharded over 2 ranks") == 2  # the first evaluation, on both ranks
    for out in outs:
        two = json.loads(out.read_text())
        for task in TASKS:
            for key, value in one["results"][task].items():
                if isinstance(value, float):
                    assert two["results"][task][key] == pytest.approx(value, rel=1e-9), (out.name, task, key)
                else:
                    assert two["results"][task][key] == value, (out.name, task, key)


def test_scores_during_training_are_those_of_pytrain_eval_on_the_checkpoint(eval_run, tasks_dir, tmp_path):
    """metrics.jsonl: one row per downstream evaluation (steps 4 and 8), the harness's metric names, the
    numbers `pytrain eval` gives on the checkpoint of that step."""
    rows = [json.loads(line) for line in (eval_run / "metrics.jsonl").read_text().splitlines()]
    task_rows = [row for row in rows if "tasks" in row]
    assert [row["step"] for row in task_rows] == [4, 8]
    for row in task_rows:
        out = tmp_path / f"step{row['step']}.json"
        assert main(["eval", str(eval_run), "--step", str(row["step"]), "--tasks", "mini_mc,mini_roll",
                     "--include-path", str(tasks_dir), "--limit", str(LIMIT_IN_LOOP), "--out", str(out),
                     "--batch-size", "4", "--bootstrap-iters", "0"]) == 0
        results = json.loads(out.read_text())["results"]
        assert sorted(row["tasks"]) == ["mini_mc", "mini_roll"]
        for task, metrics in row["tasks"].items():
            expected = {k: v for k, v in results[task].items() if "," in k and isinstance(v, (int, float))}
            assert sorted(metrics) == sorted(expected)
            for key, value in expected.items():
                assert metrics[key] == pytest.approx(value, rel=1e-6), (row["step"], task, key)
    log = (eval_run / "train.log").read_text()
    assert "tasks step 8 | mini_mc acc,none" in log


def test_scores_during_sharded_training_are_those_of_the_checkpoint(eval_run, tasks_dir, tmp_path):
    """torchrun, 2 CPU ranks: the model being trained is FSDP2-sharded; its scores at the last step (eval.every
    0) are those `pytrain eval` gives on that step's checkpoint in one process."""
    run = tmp_path / "run2"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pytrain",
               "train", "--config", str(eval_run.parent / "run.yaml"), f"train.run_dir={run}", "train.steps=4",
               "eval.every=0", "logging.every=4"]
    proc = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (row,) = [row for row in rows if "tasks" in row]
    assert row["step"] == 4
    out = tmp_path / "step4.json"
    assert main(["eval", str(run), "--tasks", "mini_mc,mini_roll", "--include-path", str(tasks_dir), "--limit",
                 str(LIMIT_IN_LOOP), "--out", str(out), "--batch-size", "4", "--bootstrap-iters", "0"]) == 0
    results = json.loads(out.read_text())["results"]
    for task, metrics in row["tasks"].items():
        assert metrics == pytest.approx({k: v for k, v in results[task].items() if k in metrics}, rel=1e-6), task
        assert metrics, task


def test_val_bpb_is_the_plain_python_formula(eval_run, exported):
    """val_bpb = sum of the text targets' NLL (nats) / ln 2 / UTF-8 bytes of their text, recomputed from the
    exported model in transformers (float64 log-softmax) and the tokenizer's own decode."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from pytrain.sampling.dataset import PackedDataset

    row = [json.loads(line) for line in (eval_run / "metrics.jsonl").read_text().splitlines()
           if '"val_loss"' in line and json.loads(line)["step"] == 8][0]
    config = yaml.safe_load((eval_run / "config.yaml").read_text())
    seq_len, batches, micro = config["data"]["seq_len"], config["train"]["eval_max_batches"], config["train"]["batch_size"]
    data = PackedDataset(config["data"]["path"], seq_len, split="val", shuffle=False)
    samples = [data[i] for i in range(batches * micro)]  # what the evaluator reads, in order
    model = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    tokenizer = Tokenizer.from_file(str(eval_run / "tokenizer.json"))
    special = {i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}
    nll, targets = 0.0, []
    with torch.no_grad():
        for sample in samples:
            ids = torch.as_tensor(sample["input_ids"])[None]
            logprobs = model(ids).logits[0].double().log_softmax(-1)
            for position, label in enumerate(sample["labels"].tolist()):
                targets.append(label)
                if label not in special:
                    nll -= float(logprobs[position, label])
    # Consecutive samples share a token, so the targets are one stretch of the validation stream: decode each
    # document's part of it.
    pieces, piece = [], []
    for token in targets:
        if token in special:
            pieces.append(piece)
            piece = []
        else:
            piece.append(token)
    text = [tokenizer.decode(p) for p in pieces + [piece]]
    assert all("\ufffd" not in t and t.isascii() for t in text)
    expected = nll / math.log(2) / sum(len(t.encode("utf-8")) for t in text)
    assert row["val_bpb"] == pytest.approx(expected, abs=1e-4)
    assert row["val_bpb"] != pytest.approx(row["val_loss"] / math.log(2), abs=1e-2)  # not bits per token


def test_an_evaluation_during_training_leaves_the_run_as_it_was(eval_run, tasks_dir):
    """The harness seeds Python's, numpy's and torch's generators and the model goes to eval mode: all given back."""
    import numpy as np
    import torch

    from pytrain.config import EvalSection
    from pytrain.train.distributed import init_distributed, shutdown
    from pytrain.train.downstream import DownstreamEval
    from pytrain.train.run_dir import RunDir

    run = RunDir(eval_run)
    model, model_config = run.load_model()
    model.train()
    d = init_distributed("cpu")
    try:
        section = EvalSection(tasks=["mini_mc"], include_path=str(tasks_dir), limit=2)
        downstream = DownstreamEval(section, model_config, run.tokenizer_file, run.eos_id(run.tokenizer()), d)
        random.seed(7), np.random.seed(7), torch.manual_seed(7)
        before = (random.random(), float(np.random.rand()), float(torch.rand(1)))
        random.seed(7), np.random.seed(7), torch.manual_seed(7)
        row = downstream.row(model)
        after = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    finally:
        shutdown()
    assert set(row["tasks"]["mini_mc"]) == {"acc,none", "acc_norm,none"}
    assert after == before and model.training


def test_generation_stops_at_the_stop_string(eval_run, exported):
    """generate_until ends decoding as soon as a stop string appears (not at max_gen_toks): no more forwards
    than transformers' greedy decoding of the same prompt needs to reach the stop, and its text before it."""
    import torch
    from lm_eval.api.instance import Instance
    from transformers import AutoModelForCausalLM

    from pytrain.eval import load_lm
    from pytrain.train.distributed import shutdown
    from pytrain.train.run_dir import RunDir

    prompt, budget = "def main(self):\n    return", 40
    try:
        lm, _ = load_lm(RunDir(eval_run), 8, batch_size=4, dtype="fp32", device="cpu", shard=False)
        ids = lm.tok_encode(prompt)
        hf = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
        with torch.no_grad():
            greedy = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=budget, do_sample=False, eos_token_id=None,
                                 pad_token_id=lm.eot_token_id)[0, len(ids):].tolist()
        greedy = greedy[:greedy.index(lm.eot_token_id)] if lm.eot_token_id in greedy else greedy
        text = lm.tokenizer.decode(greedy)
        stop = text[len(text) // 3:len(text) // 3 + 2]  # two characters a third of the way in
        assert len(greedy) > 6 and stop.strip(), (greedy, text)
        needed = next(n for n in range(1, len(greedy) + 1) if stop in lm.tokenizer.decode(greedy[:n]))
        forwards = []
        lm.model.register_forward_pre_hook(lambda *args: forwards.append(1))
        request = Instance("generate_until", {}, (prompt, {"until": [stop], "max_gen_toks": budget}), 0)
        (answer,) = lm.generate_until([request], disable_tqdm=True)
    finally:
        shutdown()
    assert answer == text[:text.index(stop)]
    assert len(forwards) <= needed < budget

# ----------------------------------------------------------------------------- refusals
def _refused(capsys, *args) -> str:
    assert main(["eval", *map(str, args)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_refusals_are_one_line_with_what_to_do(eval_run, tasks_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "r.json"
    common = ["--include-path", tasks_dir, "--out", out]
    assert "unknown task 'mini_mcq' (did you mean \"mini_mc\"?)" in _refused(capsys, eval_run, "--tasks", "mini_mcq", *common)
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "hub_task.yaml").write_text(yaml.safe_dump({
        "task": "hub_task", "dataset_path": "nobody-pytrain-test/not-a-dataset", "output_type": "multiple_choice",
        "test_split": "test", "doc_to_text": "{{q}}", "doc_to_choice": "{{c}}", "doc_to_target": 0}))
    err = _refused(capsys, eval_run, "--tasks", "hub_task", "--include-path", tmp_path / "hub", "--out", out)
    assert "task hub_task: its data is not available offline" in err and "datasets cache" in err
    (tmp_path / "bad").mkdir()
    local = {"dataset_path": "json", "test_split": "test", "output_type": "loglikelihood_rolling",
             "doc_to_target": "{{text}}", "dataset_kwargs": {"data_files": {"test": str(tasks_dir / "roll.jsonl")}}}
    (tmp_path / "bad" / "no_text.yaml").write_text(yaml.safe_dump({"task": "no_text", **local}))  # no doc_to_text
    local["dataset_kwargs"] = {"data_files": {"test": str(tmp_path / "missing.jsonl")}}
    (tmp_path / "bad" / "no_file.yaml").write_text(yaml.safe_dump({"task": "no_file", **local, "doc_to_text": ""}))
    err = _refused(capsys, eval_run, "--tasks", "no_text", "--include-path", tmp_path / "bad", "--out", out)
    assert "task no_text: lm-evaluation-harness could not build it from its YAML (TypeError)" in err
    assert "offline" not in err
    err = _refused(capsys, eval_run, "--tasks", "no_file", "--include-path", tmp_path / "bad", "--out", out)
    assert "task no_file: its data is not available offline (FileNotFoundError" in err
    import datasets

    assert os.environ["HF_DATASETS_OFFLINE"] == os.environ["HF_HUB_OFFLINE"] == "1"  # nothing was looked up online
    assert datasets.config.HF_DATASETS_OFFLINE
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text((eval_run / "config.yaml").read_text())
    assert "no complete checkpoint yet" in _refused(capsys, bare, "--tasks", "mini_mc", *common)
    assert "not a run directory" in _refused(capsys, tmp_path, "--tasks", "mini_mc", *common)
    out.write_text("precious\n")
    assert "already exists" in _refused(capsys, eval_run, "--tasks", "mini_mc", *common)
    assert "not a results file of `pytrain eval`" in _refused(capsys, eval_run, "--tasks", "mini_mc", *common,
                                                               "--overwrite")
    assert out.read_text() == "precious\n"
    assert "--limit must be >= 1" in _refused(capsys, eval_run, "--tasks", "mini_mc", "--limit", 0)
    assert not list(tmp_path.glob(".r.json.tmp-*"))

    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else find_spec(name, *a))
    err = _refused(capsys, eval_run, "--tasks", "mini_mc", "--include-path", tasks_dir, "--out", tmp_path / "new.json")
    assert "pip install 'pytrain[eval]'" in err
    config = yaml.safe_load((eval_run / "config.yaml").read_text())
    config["train"]["run_dir"] = str(tmp_path / "never")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(tmp_path / "run.yaml")]) == 2
    assert "eval.tasks is set, but lm-evaluation-harness is not installed" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_an_unknown_task_is_looked_for_among_the_built_in_ones(eval_run, tasks_dir, tmp_path, capsys):
    """A name --include-path does not hold is searched in the harness's own task index too (indexed once per
    process: seconds)."""
    err = _refused(capsys, eval_run, "--tasks", "mini_mc,hellaswagg", "--include-path", tasks_dir, "--out",
                   tmp_path / "r.json")
    assert 'unknown task \'hellaswagg\' (did you mean "hellaswag"?)' in err and "built-in tasks" in err


def test_overwrite_replaces_a_results_file_of_pytrain_eval(eval_run, tasks_dir, tmp_path):
    out = tmp_path / "results.json"
    assert _eval(eval_run, tasks_dir, out, "--limit", "2") == 0
    first = json.loads(out.read_text())
    assert _eval(eval_run, tasks_dir, out, "--limit", "3", "--overwrite") == 0
    assert json.loads(out.read_text())["config"]["limit"] == 3 and first["config"]["limit"] == 2


def test_a_second_eval_writing_the_same_out_is_refused(eval_run, tasks_dir, tmp_path):
    """Two `pytrain eval --out` of one file at once: the second is refused in one line, before it evaluates
    anything, and changes nothing; the first writes its results as if alone."""
    from conftest import check_second_writer_refused

    out = tmp_path / "out" / "results.json"
    args = ["eval", eval_run, "--tasks", ",".join(TASKS), "--include-path", tasks_dir, "--out", out,
            "--batch-size", "4", "--bootstrap-iters", "0", "--limit", "2"]
    check_second_writer_refused(args, out, out, tmp_path / "out")
    assert json.loads(out.read_text())["pytrain"]["command"] == "eval"


@pytest.mark.parametrize("arg, message", [("step=abc", "step must be an integer >= 0, got 'abc'"),
                                          ("step=-1", "step must be an integer >= 0"),
                                          ("batch_size=0", "batch_size must be an integer >= 1"),
                                          ("dtype=int8", "dtype must be one of fp32, bf16, fp16")])
def test_the_registered_model_checks_its_model_args(arg, message):
    """`simple_evaluate(model="pytrain", model_args=...)`: a bad value is named before anything is loaded."""
    pytest.importorskip("lm_eval")
    import pytrain.eval  # noqa: F401  (registers "pytrain")
    from lm_eval.api.registry import get_model

    with pytest.raises(PytrainError, match=re.escape(message)):
        get_model("pytrain").create_from_arg_string(f"run=/nonexistent-run,{arg}")
