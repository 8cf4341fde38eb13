"""Where evaluation numbers go: downstream task rows to metrics.jsonl, TensorBoard, W&B and train.log;
val_bpb of a mixture; `pytrain plot`'s evaluation row."""

from __future__ import annotations

import json
import math

import pytest

from conftest import run_cli
from pytrain.config import LoggingSection
from pytrain.train.log import RunLogger

TASK_ROW = {"step": 4, "tokens": 512, "tasks": {"mini_mc": {"acc,none": 0.5, "acc_stderr,none": 0.1},
                                                "mini_roll": {"bits_per_byte,none": 4.25}}}


class Recorder:
    def __init__(self):
        self.rows = []

    def log(self, row, step):
        self.rows.append((step, row))

    def add_scalar(self, tag, value, step):
        self.rows.append((step, {tag: value}))


def test_task_rows_reach_metrics_tensorboard_wandb_and_the_log(tmp_path):
    logger = RunLogger(tmp_path, LoggingSection(progress="none", tensorboard=False), enabled=True, total_steps=8)
    logger._wandb, logger._tensorboard = Recorder(), Recorder()
    logger.log_tasks(TASK_ROW)
    expected = {"eval/tasks/mini_mc/acc,none": 0.5, "eval/tasks/mini_mc/acc_stderr,none": 0.1,
                "eval/tasks/mini_roll/bits_per_byte,none": 4.25}
    assert logger._wandb.rows == [(4, expected)]
    assert logger._tensorboard.rows == [(4, {key: value}) for key, value in expected.items()]
    logger._wandb = logger._tensorboard = None
    logger.close()
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [TASK_ROW]
    assert ("tasks step 4 | mini_mc acc,none 0.5000 | mini_roll bits_per_byte,none 4.2500"
            in (tmp_path / "train.log").read_text())


def test_a_mixture_reports_val_bpb_weighted_as_its_val_loss():
    from pytrain.train.evaluate import MixtureEvaluator

    sources = {"web": (3.0, lambda model: (2.0, math.exp(2.0), 1.5)),
               "code": (1.0, lambda model: (1.0, math.exp(1.0), 0.5))}
    row = MixtureEvaluator(sources).row(None)
    assert row["val_loss"] == pytest.approx((3 * 2.0 + 1.0) / 4) and row["val_bpb"] == pytest.approx((3 * 1.5 + 0.5) / 4)
    sources["code"] = (1.0, lambda model: (1.0, math.exp(1.0), None))  # a source without a byte table
    assert "val_bpb" not in MixtureEvaluator(sources).row(None)


def test_plot_draws_val_bpb_and_the_task_metrics(tmp_path, monkeypatch):
    """The evaluation row: val_bpb against steps; task scores in [0, 1] in one panel, the other metrics (log
    scale) in the next; standard errors left out."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from pytrain.plot import plot_runs

    rows = [{"step": s, "tokens": 128 * s, "loss": 3.0 / s, "lr": 1e-3, "tokens_per_s": 100.0} for s in (1, 2, 3, 4)]
    rows += [{"step": s, "tokens": 128 * s, "val_loss": 2.0, "val_ppl": 7.4, "val_bpb": 4.0 / s} for s in (2, 4)]
    rows += [{**TASK_ROW, "step": 2, "tokens": 256, "tasks": {"mini_mc": {"acc,none": 0.25}, "mini_roll": {"bits_per_byte,none": 5.0}}},
             TASK_ROW]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    figures = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (figures.append(self), save(self, *a, **k))[1])
    plot_runs([str(tmp_path)])
    axes = {ax.get_title(): ax for ax in figures[0].axes}
    bpb = axes["validation bits per byte vs step"].lines
    assert [(list(line.get_xdata()), list(line.get_ydata())) for line in bpb] == [([2, 4], [2.0, 1.0])]
    curves = lambda ax: {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}  # noqa: E731
    assert curves(axes["downstream scores vs step"]) == {"mini_mc acc,none": ([2, 4], [0.25, 0.5])}
    other = axes["downstream perplexities, bits per byte vs step"]
    assert curves(other) == {"mini_roll bits_per_byte,none": ([2, 4], [5.0, 4.25])}
    assert other.get_yscale() == "log"


@pytest.mark.parametrize("style", ["gpt2", "llama2"])
def test_val_bpb_counts_the_bytes_each_document_decodes_to(style, tokenizer_path, corpus_jsonl, documents, tmp_path):
    """The evaluator's byte count over a packed row (documents end to end, EOS after each, the row starting
    after an EOS) is the UTF-8 length of every document's decoded text: multi-byte characters split over
    tokens and the SentencePiece decoder's stripped leading space included; EOS targets are left out of the
    loss sum. With a loss of 1 on every target the check is exact: val_bpb = text targets / ln 2 / bytes."""
    import torch

    from pytrain.tokenizer.files import load_tokenizer
    from pytrain.tokenizer.token_bytes import token_bytes
    from pytrain.train.distributed import init_distributed, shutdown
    from pytrain.train.evaluate import Evaluator

    if style == "llama2":
        tokenizer_path = tmp_path / "tokenizer.json"
        run_cli("tokenizer", "train", corpus_jsonl, "--style", "llama2", "--vocab-size", 600, "--out", tokenizer_path)
    tokenizer = load_tokenizer(tokenizer_path)
    eos = tokenizer.token_to_id("<|endoftext|>" if style == "gpt2" else "</s>")
    texts = [doc[:300] for doc in documents[:30]] + ["naïve café — 東京 🙂", " leading space", "x"]
    docs = [tokenizer.encode(text, add_special_tokens=False).ids for text in texts]
    stream = torch.tensor([eos] + [token for ids in docs for token in ids + [eos]])

    class OneRow:
        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

        def next_batch(self, size):
            return {"input_ids": stream[None, :-1], "labels": stream[None, 1:]}

    class UnitLoss(torch.nn.Module):
        def forward(self, input_ids, labels, reduction="mean"):
            return torch.ones(labels.numel())

    init_distributed("cpu")
    try:
        loss, _, bpb = Evaluator(OneRow(), 1, 1, False, torch.device("cpu"), token_bytes(tokenizer))(UnitLoss())
    finally:
        shutdown()
    text_bytes = sum(len(tokenizer.decode(ids).encode("utf-8")) for ids in docs)
    text_targets = sum(map(len, docs))
    assert loss == 1.0 and bpb == pytest.approx(text_targets / math.log(2) / text_bytes, rel=1e-12)
