"""`pytrain plot`: one PNG of a run's curves, or several runs overlaid.

Rows: against optimizer steps, then against training tokens. Columns: training loss (solid) with
validation loss (dots), learning rate, training tokens/s. Runs trained on a mixture (`data.mixture`)
add a row: each source's validation loss against steps and against tokens (one colour per source,
one line style per run). Runs with validation bits per byte (val_bpb) or downstream task scores
(`eval.tasks`) add a row against steps: val_bpb, then each task's metrics (the harness's names, standard
errors left out): scores in [0, 1] in one panel, perplexities and bits per byte (log scale) in the next.
Everything comes from each run's
metrics.jsonl; matplotlib (the `plot` extra) is imported only here, without pyplot's global state.
Without matplotlib, the PNG holds the loss, learning-rate and tokens/s panels against steps, drawn by
pytrain.chart (numpy and zlib).
"""

from __future__ import annotations

import math
from pathlib import Path

from pytrain.errors import PytrainError
from pytrain.fsutil import atomic_file, output_lock
from pytrain.safe_read import UnreadableInput, parse_json, read_text_lines

TRAIN_KEYS = ("step", "tokens", "loss", "lr", "tokens_per_s")
EVAL_KEYS = ("step", "tokens", "val_loss")
AXIS_KEYS = ("step", "tokens")
PLOTTABLE = 1e100  # a curve's values beyond this (or inf, nan) are drawn as gaps: axis limits must stay finite


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict], list[dict]]:
    """(training rows, evaluation rows, downstream task rows) of a run's metrics.jsonl. A torn last line (a
    run killed while writing, or still writing) is left out, as the trainer drops it on resume; rows without
    the fields a curve needs, or whose step or token count is not a count, are left out too, and a curve's
    value that is not a finite number of plottable size becomes a gap (nan)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise PytrainError(f"{path}: not found; --run takes a directory written by `pytrain train`")
    lines = read_text_lines(path)
    rows = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                rows.append(parse_json(line, f"{path}:{number}"))
            except UnreadableInput:
                if number == len(lines):
                    break
                raise
    rows = [r for r in rows if isinstance(r, dict)]
    train = [_plottable(r, TRAIN_KEYS) for r in rows if _has_numbers(r, TRAIN_KEYS)]
    evals = [_plottable(r, EVAL_KEYS) for r in rows if _has_numbers(r, EVAL_KEYS)]
    tasks = [r for r in rows if _has_numbers(r, AXIS_KEYS) and isinstance(r.get("tasks"), dict)]
    return train, evals, tasks


def _task_curves(rows: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """{"task metric": (steps, values)} from downstream rows, standard errors left out."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for row in rows:
        for task, metrics in row["tasks"].items():
            for metric, value in (metrics.items() if isinstance(metrics, dict) else ()):
                if "_stderr" not in metric and _is_number(value):
                    steps, values = curves.setdefault(f"{task} {metric}", ([], []))
                    steps.append(row["step"])
                    values.append(_value(value))
    return curves


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _has_numbers(row: dict, keys) -> bool:
    return (all(_is_number(row.get(k)) for k in keys)
            and all(isinstance(row[k], int) and 0 <= row[k] < 2**63 for k in AXIS_KEYS))


def _plottable(row: dict, keys) -> dict:
    """The row with each curve value as a float, nan where it cannot be drawn; val_bpb kept when a number,
    val_loss_by_source only as a mapping from source names to numbers."""
    out = {k: row[k] if k in AXIS_KEYS else _value(row[k]) for k in keys}
    if _is_number(row.get("val_bpb")):
        out["val_bpb"] = _value(row["val_bpb"])
    by_source = row.get("val_loss_by_source")
    if isinstance(by_source, dict):
        out["val_loss_by_source"] = {str(name): _value(v) for name, v in by_source.items() if _is_number(v)}
    return out


def _value(number) -> float:
    try:
        value = float(number)
    except OverflowError:  # an integer beyond float's range
        return math.nan
    return value if math.isfinite(value) and abs(value) <= PLOTTABLE else math.nan


def plot_runs(run_dirs: list[str], out: str | Path | None = None) -> Path:
    """Write the PNG (default: the first run's plot.png) and return its path."""
    if not run_dirs:
        raise PytrainError("pass at least one --run DIR")
    read = [(_label(run, run_dirs), *read_metrics(run)) for run in run_dirs]
    if not any(train or val or tasks for _, train, val, tasks in read):
        raise PytrainError(f"{', '.join(run_dirs)}: no logged steps yet")
    out = Path(out) if out is not None else Path(run_dirs[0]) / "plot.png"
    with output_lock(out, "plot"):  # one writer per PNG
        _check_replaceable(out)
        return _write_png(out, read)


def _write_png(out: Path, read: list) -> Path:
    """`read`: (label, training rows, evaluation rows, downstream task rows) per run."""
    runs = [(label, train, val) for label, train, val, _ in read]
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import EngFormatter
    except ImportError:
        with atomic_file(out) as handle:
            handle.write(_fallback_chart(runs))
        return out

    sources = list(dict.fromkeys(name for _, _, val in runs for row in val for name in row.get("val_loss_by_source", {})))
    evaluated = any(tasks or any("val_bpb" in row for row in val) for _, _, val, tasks in read)
    extra_rows = bool(sources) + evaluated
    figure = Figure(figsize=(15, 8 + 4 * extra_rows), layout="constrained")
    axes = figure.subplots(2 + extra_rows, 3)
    for row, (x_key, x_label) in enumerate((("step", "step"), ("tokens", "tokens"))):
        loss_ax, lr_ax, speed_ax = axes[row]
        for index, (label, train, val) in enumerate(runs):
            color = f"C{index % 10}"
            if train:
                xs = [r[x_key] for r in train]
                loss_ax.plot(xs, [r["loss"] for r in train], color=color, label=f"{label} train")
                lr_ax.plot(xs, [r["lr"] for r in train], color=color, label=label)
                speed_ax.plot(xs, [r["tokens_per_s"] for r in train], color=color, label=label)
            if val:
                loss_ax.plot([r[x_key] for r in val], [r["val_loss"] for r in val], "o--", color=color,
                             markersize=4, label=f"{label} val")
        for ax, title, y_label in ((loss_ax, "loss", "loss"), (lr_ax, "learning rate", "learning rate"),
                                   (speed_ax, "training tokens/s", "tokens/s")):
            ax.set_title(f"{title} vs {x_label}")
            ax.set_ylabel(y_label)
            ax.set_xlabel(x_label)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_formatter(EngFormatter())
        speed_ax.yaxis.set_major_formatter(EngFormatter())
        loss_ax.legend(fontsize="small")
        if sources:
            _plot_by_source(axes[2][row], runs, sources, x_key, x_label, EngFormatter())
    if sources:
        axes[2][2].set_visible(False)
    if evaluated:
        _plot_evaluations(axes[2 + bool(sources)], read, EngFormatter())
    with atomic_file(out) as handle:
        figure.savefig(handle, format="png", dpi=100)
    return out


def _plot_by_source(ax, runs, sources: list[str], x_key: str, x_label: str, formatter) -> None:
    styles = ("-", "--", ":", "-.")
    for index, (label, _, val) in enumerate(runs):
        for number, name in enumerate(sources):
            points = [(r[x_key], r["val_loss_by_source"][name]) for r in val if name in r.get("val_loss_by_source", {})]
            if points:
                ax.plot(*zip(*points), styles[index % len(styles)], marker="o", markersize=3,
                        color=f"C{number % 10}", label=f"{label} {name}" if len(runs) > 1 else name)
    ax.set_title(f"validation loss by source vs {x_label}")
    ax.set_xlabel(x_label)
    ax.set_ylabel("validation loss")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_formatter(formatter)
    if len(sources) * len(runs) <= 20:
        ax.legend(fontsize="small")


def _plot_evaluations(axes, read, formatter) -> None:
    """Validation bits per byte vs step; downstream task metrics vs step: scores in [0, 1] (accuracy, exact
    match) in one panel, the others (perplexities, bits per byte) on a log scale in the next."""
    bpb_ax, score_ax, other_ax = axes
    styles = ("-", "--", ":", "-.")
    run_curves = [_task_curves(tasks) for *_, tasks in read]
    names = list(dict.fromkeys(name for curves in run_curves for name in curves))
    for index, ((label, _, val, _), curves) in enumerate(zip(read, run_curves)):
        points = [(r["step"], r["val_bpb"]) for r in val if "val_bpb" in r]  # a float when present (_plottable)
        if points:
            bpb_ax.plot(*zip(*points), "o--", color=f"C{index % 10}", markersize=4, label=label)
        for name, (steps, values) in curves.items():
            ax = score_ax if all(0 <= v <= 1 for v in values) else other_ax
            ax.plot(steps, values, styles[index % len(styles)], marker="o", markersize=3,
                    color=f"C{names.index(name) % 10}", label=f"{label} {name}" if len(read) > 1 else name)
    if other_ax.lines and all(min(line.get_ydata()) > 0 for line in other_ax.lines):
        other_ax.set_yscale("log")
    for ax, title, y_label in ((bpb_ax, "validation bits per byte vs step", "bits per byte"),
                               (score_ax, "downstream scores vs step", "score"),
                               (other_ax, "downstream perplexities, bits per byte vs step", "value")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_formatter(formatter)
        if ax.lines and len(ax.lines) <= 20:
            ax.legend(fontsize="small")


def _label(run: str, runs: list[str]) -> str:
    """The run directory's name, or its whole path when two runs share a name."""
    name = Path(run).name or str(run)
    return name if sum(Path(r).name == name for r in runs) == 1 else str(run)


def _fallback_chart(runs: list[tuple[str, list[dict], list[dict]]]) -> bytes:
    """Without matplotlib: loss (training, and validation as dots), learning rate and training tokens/s
    against steps, one panel each, drawn by pytrain.chart."""
    from pytrain.chart import COLORS, Panel, Series, panels_png

    loss, lr, speed = [], [], []
    for index, (label, train, val) in enumerate(runs):
        color = COLORS[index % len(COLORS)]
        prefix = f"{label} " if len(runs) > 1 else ""
        steps = [r["step"] for r in train]
        loss.append(Series(f"{prefix}train", steps, [r["loss"] for r in train], color))
        if val:
            loss.append(Series(f"{prefix}val", [r["step"] for r in val], [r["val_loss"] for r in val],
                               COLORS[(index + 3) % len(COLORS)], dotted=True))
        lr.append(Series(label, steps, [r["lr"] for r in train], color))
        speed.append(Series(label, steps, [r["tokens_per_s"] for r in train], color))
    return panels_png([Panel("loss vs step", "step", "loss", loss),
                       Panel("learning rate vs step", "step", "learning rate", lr),
                       Panel("training tokens/s vs step", "step", "tokens/s", speed)])


def _check_replaceable(out: Path) -> None:
    """The PNG replaces only an earlier PNG (a plot), never another file of a run or of the user."""
    if out.is_dir():
        raise PytrainError(f"--out {out}: is a directory; name the PNG file to write")
    if out.exists() or out.is_symlink():
        try:
            with open(out, "rb") as handle:
                is_png = not out.is_symlink() and handle.read(8) == b"\x89PNG\r\n\x1a\n"
        except OSError:
            is_png = False
        if not is_png:
            raise PytrainError(f"--out {out}: exists and is not a PNG; refusing to replace it (choose another --out)")
