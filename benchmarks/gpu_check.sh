#!/usr/bin/env bash
# One-shot GPU proof for one H100/H200 with no network, in under 9 minutes:
#
#   bash benchmarks/gpu_check.sh OUT_DIR [--dry-run] [--budget SECONDS]
#
# Stages, each timed and logged to OUT_DIR/logs/STAGE.log, most important first: build (pip install
# --no-build-isolation --no-deps .); the kernel tests on CUDA, without the interpreter (fp32 and bf16
# cases); the AOT compile table beside the JIT's registers (aot_check.py --jit); bench_kernels.py --quick
# (Liger when importable); bench_train.py for the 1b preset at seq 2048 in bf16, kernels on/off x compile
# on/off; a short NCCL FSDP2 run through torchrun; the document-masked attention benchmark
# (bench_attention.py, when that script exists); the MoE layer's grouped-matmul backends (bench_moe.py);
# bench_train.py for the 125m preset; a short run with optim.name=muon and bench_optim.py's optimizer step
# cost (125m, 1b). A stage gets at
# most its own cap and what is left of the budget (default 540 s); once the budget is spent the
# remaining stages are recorded as skipped. OUT_DIR ends with RESULTS.md, results.json and results.png
# (gpu_report.py), next to each stage's own JSON; the exit status is 1 if a stage failed.
#
# --dry-run runs the same plumbing on the CPU at tiny sizes, as CI does: an import check instead of the
# build, a few kernel tests through the Triton interpreter, one op's AOT table, bench_kernels --help
# (it times CUDA only), bench_train's tiny preset on the torch ops, FSDP2 over gloo, bench_moe's tiny layer
# (reference and Triton interpreter, correctness only) and bench_optim's step cost of the tiny preset.
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: bash benchmarks/gpu_check.sh OUT_DIR [--dry-run] [--budget SECONDS]" >&2; exit 2; }
OUT="" DRY=0 BUDGET=540
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --budget) [ $# -ge 2 ] || usage; BUDGET="$2"; shift ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) usage ;;
    *) [ -z "$OUT" ] || usage; OUT="$1" ;;
  esac
  shift
done
[ -n "$OUT" ] || usage
[[ "$BUDGET" =~ ^[0-9]+$ ]] || { echo "gpu_check.sh: --budget must be a whole number of seconds, got '$BUDGET'" >&2; exit 2; }
mkdir -p "$OUT/logs" || exit 2
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
STAGES="$OUT/stages.tsv"
printf 'stage\tstatus\tseconds\texit_code\tnote\n' > "$STAGES"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, also for the scripts
unset TRITON_INTERPRET

# run_stage NAME CAP_SECONDS COMMAND...: run COMMAND with its output in logs/NAME.log, for at most
# CAP_SECONDS and the budget left; record status, seconds and exit code in stages.tsv.
run_stage() {
  local name="$1" cap="$2"; shift 2
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt 15 ]; then
    printf '%s\tskipped\t0\t\ttime budget (%ss) spent\n' "$name" "$BUDGET" >> "$STAGES"
    echo "== $name: skipped (time budget spent)"
    return
  fi
  local limit=$((cap < left ? cap : left)) started=$SECONDS rc status
  echo "== $name (at most ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status=failed ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - started))" "$rc" "log: logs/$name.log" >> "$STAGES"
  echo "   $status in $((SECONDS - started))s"
  tail -n 5 "$OUT/logs/$name.log" | sed 's/^/   | /'
}

note_stage() {  # note_stage NAME STATUS NOTE: a stage decided without running anything
  printf '%s\t%s\t0\t\t%s\n' "$1" "$2" "$3" >> "$STAGES"
  echo "== $1: $2 ($3)"
}

KERNEL_TESTS=(tests/ops/test_kernels_rmsnorm.py tests/ops/test_kernels_rmsnorm_streamed.py tests/ops/test_kernels_rope.py
              tests/ops/test_kernels_linear_ce.py tests/ops/test_kernels_ce_padding.py tests/ops/test_input_checks.py
              tests/ops/test_attention.py tests/ops/test_grouped_mm.py tests/model/test_moe.py
              tests/train/test_optim_muon.py)
# attention: its CUDA-only tests check the block-sparse backward; test_moe: the MoE layer on the kernel path;
# test_optim_muon: its CUDA-only test checks the compiled bf16 Newton-Schulz

# bench_train.py: train_stage NAME CAP PRESET; the GPU run times all four variants at seq 2048 in bf16.
train_stage() {
  if [ "$DRY" = 1 ]; then
    run_stage "$1" "$2" env OMP_NUM_THREADS=1 "$PY" benchmarks/bench_train.py --preset "$3" --seq-len 64 \
      --micro-batch 2 --steps 2 --warmup 1 --variants torch --json "$OUT/$1.json"
  else
    run_stage "$1" "$2" "$PY" benchmarks/bench_train.py --preset "$3" --seq-len 2048 --dtype bf16 --steps 5 \
      --warmup 2 --json "$OUT/$1.json"
  fi
}

# Stages in order of importance, so that a spent budget skips the least important ones.
if [ "$DRY" = 1 ]; then
  run_stage build 60 "$PY" -c "import pytrain._native, pytrain.kernels; print('dry run: pytrain and its extension import (no pip install)')"
  run_stage kernel_tests 60 env TRITON_INTERPRET=1 OMP_NUM_THREADS=1 "$PY" -m pytest -q -p no:cacheprovider \
    tests/ops/test_kernels_ce_padding.py tests/ops/test_aot_check.py -k "aligned or out_of_vocabulary or ptxas" \
    --junitxml "$OUT/kernel_tests.xml"
  run_stage aot 60 "$PY" benchmarks/aot_check.py --arch 90 --ops rope --json "$OUT/aot.json"
  run_stage bench_kernels 30 "$PY" benchmarks/bench_kernels.py --help
  train_stage train_tiny 60 tiny
  DEVICE=cpu FSDP_STEPS=2 DEMO_STEPS=(--steps 1)
else
  run_stage build 150 "$PY" -m pip install --no-build-isolation --no-deps .
  run_stage kernel_tests 120 "$PY" -m pytest -q -p no:cacheprovider "${KERNEL_TESTS[@]}" --junitxml "$OUT/kernel_tests.xml"
  run_stage aot 120 "$PY" benchmarks/aot_check.py --arch 80 90 --jit --json "$OUT/aot.json"
  run_stage bench_kernels 120 "$PY" benchmarks/bench_kernels.py --quick --out "$OUT/kernels"
  train_stage train_1b 180 1b
  DEVICE=cuda FSDP_STEPS=20 DEMO_STEPS=()
fi

# FSDP2 through torchrun on one process (NCCL on CUDA, gloo on CPU), on data packed by `pytrain demo --small`.
run_stage fsdp_data 90 env OMP_NUM_THREADS=1 "$PY" -m pytrain demo --small "${DEMO_STEPS[@]}" --out "$OUT/demo" --overwrite
if [ -f "$OUT/demo/config.yaml" ]; then
  run_stage fsdp 90 env OMP_NUM_THREADS=1 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m pytrain \
    train --config "$OUT/demo/config.yaml" "train.run_dir=$OUT/fsdp_run" "train.device=$DEVICE" \
    "train.steps=$FSDP_STEPS" "train.eval_every=$FSDP_STEPS" checkpoint.every=0 logging.sample_every=0
else
  note_stage fsdp skipped "no packed data (fsdp_data did not complete)"
fi

# Document-masked against unmasked attention: another script's job, run when it is there.
if [ ! -f benchmarks/bench_attention.py ]; then
  note_stage attention skipped "not present (benchmarks/bench_attention.py)"
elif [ "$DRY" = 0 ]; then
  run_stage attention 90 "$PY" benchmarks/bench_attention.py --out "$OUT/attention"
elif "$PY" benchmarks/bench_attention.py --help 2>/dev/null | grep -q -- --dry-run; then
  run_stage attention 60 "$PY" benchmarks/bench_attention.py --dry-run --out "$OUT/attention"
else
  note_stage attention skipped "dry run: bench_attention.py has no --dry-run"
fi

# The MoE layer (1b-7b-olmoe's and 30b-a3b-qwen3_moe's) with each grouped-matmul backend, fresh process each.
if [ "$DRY" = 1 ]; then
  run_stage moe 90 env OMP_NUM_THREADS=1 "$PY" benchmarks/bench_moe.py --dry-run --out "$OUT/moe"
else
  run_stage moe 120 "$PY" benchmarks/bench_moe.py --out "$OUT/moe"
fi

[ "$DRY" = 1 ] || train_stage train_125m 150 125m

# optim.name=muon in the trainer (Newton-Schulz compiled in bf16 on CUDA), and its step's cost beside AdamW's.
if [ "$DRY" = 1 ]; then
  note_stage fsdp_muon skipped "dry run: tests/train/test_train_muon.py trains with Muon on the CPU"
elif [ -f "$OUT/demo/config.yaml" ]; then
  run_stage fsdp_muon 90 env OMP_NUM_THREADS=1 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m pytrain \
    train --config "$OUT/demo/config.yaml" "train.run_dir=$OUT/fsdp_muon_run" "train.device=$DEVICE" \
    "train.steps=$FSDP_STEPS" "train.eval_every=$FSDP_STEPS" checkpoint.every=0 logging.sample_every=0 optim.name=muon
else
  note_stage fsdp_muon skipped "no packed data (fsdp_data did not complete)"
fi
if [ "$DRY" = 1 ]; then OPTIM_COST=(--cost-presets tiny --repeat 1); else OPTIM_COST=(--cost-presets 125m 1b); fi
run_stage bench_optim 90 env OMP_NUM_THREADS=1 "$PY" benchmarks/bench_optim.py --skip-training "${OPTIM_COST[@]}" \
  --out "$OUT/optim"

"$PY" benchmarks/gpu_report.py "$OUT" $([ "$DRY" = 1 ] && echo --dry-run) --budget "$BUDGET" --elapsed "$SECONDS"
