"""Summarise a gpu_check.sh run: OUT_DIR/RESULTS.md, results.json and results.png.

    python benchmarks/gpu_report.py OUT_DIR [--dry-run] [--budget S] [--elapsed S]

Reads what the stages left in OUT_DIR (stages.tsv, kernel_tests.xml, aot.json, train_*.json,
kernels/kernels.json, attention/*.json, moe/moe.md, optim/optim.json) and reports only what they measured. Exits 1 when a stage
failed or timed out (a stage skipped for lack of time is reported, not failed).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _stages(out: Path) -> list[dict]:
    with open(out / "stages.tsv", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _tests(out: Path) -> dict | None:
    try:
        suite = ET.parse(out / "kernel_tests.xml").getroot()
    except (OSError, ET.ParseError):
        return None
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    keys = ("tests", "failures", "errors", "skipped")
    return {k: int(suite.get(k, 0)) for k in keys}


def _aot_lines(aot: dict) -> list[str]:
    rows = aot["rows"]
    jit = any(r.get("jit_registers") is not None for r in rows)
    spills, errors = sum(1 for r in rows if r.get("spill_bytes")), sum(1 for r in rows if r.get("error"))
    lines = [f"triton {aot['triton']}; {len(rows)} kernel launches; spills: {spills}; compile errors: {errors}",
             "", "| arch | op | configuration | kernel | variant | regs | spill B | smem B | blocks/SM | ld v/s | st v/s |"
             + (" JIT regs | JIT spills |" if jit else ""),
             "|---|---|---|---|---|---:|---:|---:|---:|---|---|" + ("---:|---:|" if jit else "")]
    for r in rows:
        cells = [f"sm_{r['arch']}", r["op"], r["config"], r["kernel"].lstrip("_"), r["variant"],
                 "ERROR" if r.get("error") else str(r["registers"]), str(r.get("spill_bytes") or 0),
                 str(r.get("shared_bytes")), str(r.get("blocks_per_sm") or ""),
                 f"{r.get('vector_loads')}/{r.get('scalar_loads')}",
                 f"{r.get('vector_stores')}/{r.get('scalar_stores')}"]
        if jit:
            cells += [str(r.get("jit_registers") if r.get("jit_registers") is not None else ""),
                      str(r.get("jit_spills") if r.get("jit_spills") is not None else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _train_lines(name: str, report: dict) -> list[str]:
    lines = [f"### {name}: preset {report['preset']}, seq {report['seq_len']}, micro-batch {report['micro_batch']}, "
             f"{report['dtype']} ({report['device']})", "",
             "| variant | tokens/s | MFU | peak GiB | step ms | note |", "|---|---:|---:|---:|---:|---|"]
    for row in report["results"]:
        if "tokens_per_s" in row:
            mfu = "" if row.get("mfu") is None else f"{row['mfu']:.1%}"
            mem = "" if row.get("peak_memory_gib") is None else f"{row['peak_memory_gib']:.1f}"
            lines.append(f"| {row['variant']} | {row['tokens_per_s']:,.0f} | {mfu} | {mem} | {row['step_ms']:.1f} | "
                         f"loss {row['final_loss']:.3f} |")
        else:
            lines.append(f"| {row['variant']} | | | | | {row.get('skipped') or row.get('error')} |")
    return lines + [""] + [f"- {goal}" for goal in report.get("goals", [])]


def _plot(path: Path, stages: list[dict], trains: dict[str, dict]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    measured = {name: [r for r in rep["results"] if "tokens_per_s" in r] for name, rep in trains.items()}
    measured = {k: v for k, v in measured.items() if v}
    fig, axes = plt.subplots(1 + len(measured), 1, figsize=(9, 3 + 2.6 * len(measured)), squeeze=False)
    ax = axes[0, 0]
    colors = {"ok": "tab:green", "failed": "tab:red", "timeout": "tab:orange", "skipped": "tab:gray"}
    ax.barh([s["stage"] for s in stages], [float(s["seconds"] or 0) for s in stages],
            color=[colors.get(s["status"], "tab:blue") for s in stages])
    ax.invert_yaxis()
    ax.set_xlabel("seconds (green ok, red failed, orange timeout, grey skipped)")
    ax.set_title("gpu_check.sh stages")
    for ax, (name, rows) in zip(axes[1:, 0], measured.items()):
        ax.bar([r["variant"] for r in rows], [r["tokens_per_s"] for r in rows], color="tab:blue")
        ax.set_ylabel("tokens/s")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--budget", type=float, default=None)
    parser.add_argument("--elapsed", type=float, default=None)
    args = parser.parse_args(argv)
    out = args.out
    stages = _stages(out)
    tests = _tests(out)
    aot = _load(out / "aot.json")
    trains = {p.stem: rep for p in sorted(out.glob("train_*.json")) if (rep := _load(p))}
    kernels = _load(out / "kernels" / "kernels.json")
    attention = {p.name: _load(p) for p in sorted((out / "attention").glob("*.json"))}
    optim = _load(out / "optim" / "optim.json")

    title = "gpu_check.sh dry run (CPU, tiny sizes: plumbing only, no performance figures)" if args.dry_run \
        else "gpu_check.sh results"
    lines = [f"# {title}", "", f"Budget {args.budget:.0f} s, elapsed {args.elapsed:.0f} s." if args.budget else "", "",
             "| stage | status | seconds | exit | note |", "|---|---|---:|---:|---|"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']} | {s['exit_code']} | {s['note']} |" for s in stages]
    if tests:
        lines += ["", "## Kernel tests", "", f"{tests['tests']} tests: {tests['failures']} failures, "
                  f"{tests['errors']} errors, {tests['skipped']} skipped (kernel_tests.xml)"]
    if aot:
        lines += ["", "## AOT compile table" + (" beside the JIT's registers" if not args.dry_run else ""), ""]
        lines += _aot_lines(aot)
    if kernels:
        lines += ["", "## bench_kernels.py --quick", "", f"{kernels['meta']['device']}: copy "
                  f"{kernels['meta']['copy_gbps']:.0f} GB/s, bf16 matmul {kernels['meta']['matmul_tflops']:.0f} "
                  "TFLOP/s; full tables in kernels/kernels.md", "",
                  "| op | shape | provider | mode | ms | GB/s | peak MiB | note |",
                  "|---|---|---|---|---:|---:|---:|---|"]
        for r in kernels["records"]:
            lines.append(f"| {r['op']} | {r['shape']} | {r['provider']} | {r['mode']} | "
                         f"{'' if r['ms'] is None else format(r['ms'], '.3f')} | "
                         f"{'' if r['gbps'] is None else format(r['gbps'], '.0f')} | "
                         f"{'' if r['peak_mib'] is None else format(r['peak_mib'], '.0f')} | {r['error'] or ''} |")
    for name, report in trains.items():
        lines += ["", *_train_lines(name, report)]
    if attention:
        lines += ["", "## Attention (bench_attention.py)", ""]
        lines += [f"- {name}: `{json.dumps(data)[:2000]}`" for name, data in attention.items()]
    moe = _load(out / "moe" / "moe.json")
    if moe and (out / "moe" / "moe.md").is_file():
        lines += ["", "## MoE layer (bench_moe.py)", "", *(out / "moe" / "moe.md").read_text().splitlines()[2:]]
    if optim:
        lines += ["", "## Optimizer step (bench_optim.py)", "", "| model | params | optimizer | step ms | state B/param | "
                  "peak MiB |", "|---|---:|---|---:|---:|---:|"]
        lines += [f"| {r['preset']} | {r['params'] / 1e6:.1f}M | {r['optimizer']} | {r['step_ms']:.2f} | "
                  f"{r['state_bytes_per_param']:.2f} | {'' if r['peak_mib'] is None else format(r['peak_mib'], '.0f')} |"
                  for r in optim.get("cost", [])]
    plotted = _plot(out / "results.png", stages, trains)
    lines += ["", "results.png: stage times" + (" and training throughput" if trains else "") if plotted
              else "(matplotlib missing: no results.png)", ""]
    (out / "RESULTS.md").write_text("\n".join(lines))
    summary = {"dry_run": args.dry_run, "budget_s": args.budget, "elapsed_s": args.elapsed, "stages": stages,
               "kernel_tests": tests, "aot": aot, "train": trains, "bench_kernels": kernels, "attention": attention,
               "moe": moe, "optim": optim}
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    bad = [s["stage"] for s in stages if s["status"] in ("failed", "timeout")]
    print(f"wrote {out}/RESULTS.md, results.json" + (", results.png" if plotted else ""))
    print("gpu_check: " + (f"FAILED stages: {', '.join(bad)}" if bad else "all stages ok or skipped"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
