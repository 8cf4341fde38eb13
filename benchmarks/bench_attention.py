"""Time attention over packed documents: block-sparse FlexAttention against unmasked flash SDPA and the dense mask.

    python benchmarks/bench_attention.py [--quick] [--dry-run] [--out DIR]

Providers, each on the same q [batch, heads, seq, head_dim] and grouped k, v [batch, kv_heads, seq, head_dim]:
  flex-document   pytrain.ops.attention with the block mask (mask built inside the timed call)
  sdpa-causal     unmasked causal SDPA, flash backend on CUDA (the speed of light: no document masking)
  dense-document  the reference: a [batch, 1, seq, seq] boolean mask, K/V repeated per query head
Rows are packed with documents of random lengths (mean --doc-len tokens). For each provider and shape:
median ms of the forward and of forward+backward, and on CUDA the peak memory allocated beyond the inputs
during forward+backward. Outputs are first checked against the dense reference. Writes attention.json to
--out and prints a table. Needs CUDA, except with --dry-run (tiny shapes on CPU, to keep the script
working; FlexAttention has no CPU backward, so flex is timed forward only there).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from pytrain.ops.attention import attention, document_block_mask, document_causal_mask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import peak_extra_mib  # noqa: E402  (benchmarks/ is not a package)

PROVIDERS = ("flex-document", "sdpa-causal", "dense-document")


def packed_segments(batch: int, seq: int, mean_doc: int, generator: torch.Generator) -> torch.Tensor:
    """Segment ids of rows packed with documents of exponentially distributed lengths (at least 1 token)."""
    lengths = torch.empty(batch, seq).exponential_(1 / mean_doc, generator=generator).long().clamp(min=1)
    return torch.stack([torch.repeat_interleave(torch.arange(seq), row)[:seq] for row in lengths])


def forward_fn(provider: str, q, k, v, segments):
    if provider == "flex-document":
        return lambda: attention(q, k, v, document_block_mask(segments))
    if provider == "dense-document":
        return lambda: attention(q, k, v, document_causal_mask(segments))

    def flash():
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            return attention(q, k, v)
    return flash if q.is_cuda else (lambda: attention(q, k, v))


def median_ms(fn, device: torch.device, reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def useful_tflop(segments: torch.Tensor, heads: int, head_dim: int) -> float:
    """FLOPs of the forward restricted to document-causal pairs (2 matmuls x 2 FLOPs x pairs x dim), in TFLOP."""
    pairs = 0
    for row in segments:
        lengths = torch.unique_consecutive(row, return_counts=True)[1].double()
        pairs += float((lengths * (lengths + 1) / 2).sum())
    return 4 * pairs * heads * head_dim / 1e12


def bench_shape(shape: dict, device: torch.device, dtype: torch.dtype, reps: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    b, h, kvh, s, d = shape["batch"], shape["heads"], shape["kv_heads"], shape["seq"], shape["head_dim"]
    segments = packed_segments(b, s, shape["doc_len"], generator).to(device)
    q = torch.randn(b, h, s, d, generator=generator).to(device, dtype).requires_grad_()
    k = torch.randn(b, kvh, s, d, generator=generator).to(device, dtype).requires_grad_()
    v = torch.randn(b, kvh, s, d, generator=generator).to(device, dtype).requires_grad_()
    grad_out = torch.randn(b, h, s, d, generator=generator).to(device, dtype)
    block_mask = document_block_mask(segments)
    tiles = block_mask.kv_num_blocks.sum() + block_mask.full_kv_num_blocks.sum()
    n_tiles = block_mask.kv_num_blocks.shape[-1]
    label = f"b{b} s{s} h{h}/{kvh} d{d} docs~{shape['doc_len']}"
    constants = [t.detach() for t in (q, k, v)]  # for forward-only timing (FlexAttention refuses CPU tensors
    with torch.no_grad():                       # that require grad, even under no_grad)
        reference = attention(*constants, document_causal_mask(segments)).float()
        max_error = (attention(*constants, block_mask).float() - reference).abs().max().item()
    tflop = useful_tflop(segments.cpu(), h, d)
    records = []
    for provider in PROVIDERS:
        forward = forward_fn(provider, q, k, v, segments)
        backward_ok = device.type == "cuda" or provider != "flex-document"
        try:
            (forward if backward_ok else forward_fn(provider, *constants, segments))()
        except RuntimeError as failure:  # e.g. no flash kernel for this GPU or dtype: say so, time the others
            records.append({"shape": label, **shape, "provider": provider, "error": str(failure).splitlines()[0]})
            continue

        def full():
            torch.autograd.grad(forward(), (q, k, v), grad_out)

        with torch.no_grad():
            fwd_ms = median_ms(forward_fn(provider, *constants, segments), device, reps)
        full_ms = median_ms(full, device, reps) if backward_ok else None
        record = {"shape": label, **shape, "provider": provider, "fwd_ms": fwd_ms, "fwd_bwd_ms": full_ms,
                  "peak_mib": peak_extra_mib(full) if backward_ok and device.type == "cuda" else None}
        if provider == "flex-document":
            record.update(max_abs_error_vs_dense=max_error,
                          tiles_computed_fraction=float(tiles) / (b * n_tiles * (n_tiles + 1) / 2),
                          useful_tflops_fwd=tflop / (fwd_ms / 1e3))
        records.append(record)
    return records


def shapes(args) -> list[dict]:
    if args.dry_run:
        return [dict(batch=1, seq=256, heads=4, kv_heads=2, head_dim=16, doc_len=40)]
    seqs = (4096, 8192) if args.quick else (2048, 4096, 8192)
    return [dict(batch=4, seq=s, heads=32, kv_heads=8, head_dim=128, doc_len=args.doc_len) for s in seqs]


def _fmt(value, spec: str) -> str:
    return "-".rjust(int(spec.split(".")[0])) if value is None else format(value, spec)


HEADER = f"{'shape':<36} {'provider':<15} {'fwd ms':>9} {'fwd+bwd ms':>11} {'peak MiB':>9}  notes"


def row(r: dict) -> str:
    if "error" in r:
        return f"{r['shape']:<36} {r['provider']:<15} failed: {r['error'][:100]}"
    notes = ""
    if r["provider"] == "flex-document":
        notes = (f"tiles {r['tiles_computed_fraction']:.1%} of causal, err {r['max_abs_error_vs_dense']:.1e}, "
                 f"{r['useful_tflops_fwd']:.1f} useful TFLOP/s fwd")
    return (f"{r['shape']:<36} {r['provider']:<15} {_fmt(r['fwd_ms'], '9.3f')} {_fmt(r['fwd_bwd_ms'], '11.3f')} "
            f"{_fmt(r['peak_mib'], '9.0f')}  {notes}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="seq 4096 and 8192 only, fewer repetitions")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU (checks the plumbing)")
    parser.add_argument("--doc-len", type=int, default=512, help="mean document length in tokens (default 512)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.dry_run:
        device, dtype, reps = torch.device("cpu"), torch.float32, 3
    elif torch.cuda.is_available():
        device, dtype, reps = torch.device("cuda"), torch.bfloat16, 10 if args.quick else 30
    else:
        print("bench_attention: needs a CUDA GPU (or --dry-run for tiny CPU shapes)", file=sys.stderr)
        return 2
    records = []
    print(HEADER, flush=True)
    for shape in shapes(args):
        for record in bench_shape(shape, device, dtype, reps):
            print(row(record), flush=True)
            records.append(record)
    meta = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "dtype": str(dtype),
            "torch": torch.__version__, "dry_run": args.dry_run, "reps": reps}
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "attention.json.tmp"
    tmp.write_text(json.dumps({"meta": meta, "records": records}, indent=2) + "\n")
    tmp.replace(args.out / "attention.json")
    print(f"wrote {args.out / 'attention.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
