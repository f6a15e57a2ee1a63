#!/usr/bin/env bash
# What needs a CUDA GPU, in one go: the CUDA-only tests, bench_scoring on CUDA, and one-GPU torchrun
# smoke runs (the NCCL collectives the pipeline uses, then train and score under torchrun on the GPU).
#
# Usage: benchmarks/gpu_check.sh OUT_DIR        (from the repository root)
#   PYTHON=...             the interpreter with mimic_explorer and torch installed (default python3)
#   GPU_CHECK_DRY_RUN=1    plan only, even where CUDA is present
# Without CUDA (or with GPU_CHECK_DRY_RUN=1) it is a dry run: each step is checked to be runnable (its
# files exist, its tests collect) and recorded as skipped. Installs nothing. Every step has its own
# time limit (600 s in all) so the whole check ends in under 10 minutes on one H200.
# Results: OUT_DIR/results.md (one line per step: name, status, seconds, log) and one log per step.
set -u
OUT=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS="$OUT/results.md"

cuda=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>"$OUT/python.log") || {
    echo "cannot run $PY with torch; see $OUT/python.log" >&2; exit 2; }
if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ] || [ "$cuda" != 1 ]; then mode=dry-run; else mode=cuda; fi
gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')" 2>/dev/null)
torch_version=$("$PY" -c "import torch; print(torch.__version__)")

{
    echo "# gpu_check"
    echo
    echo "- mode: $mode"
    echo "- machine: $(hostname), $(nproc) CPU cores, GPU: $gpu"
    echo "- torch: $torch_version, python: $("$PY" -c 'import platform; print(platform.python_version())')"
    echo "- started: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "| step | status | seconds | log |"
    echo "| --- | --- | --- | --- |"
} > "$RESULTS"
failures=0

# step NAME LIMIT_S DRY_CHECK -- COMMAND...: runs COMMAND (with a time limit) on CUDA; in a dry run,
# runs DRY_CHECK instead (a cheap proof the step could run) and records the step as skipped.
step() {
    local name=$1 limit=$2 dry=$3; shift 4
    local log="$OUT/$name.log" start status
    start=$(date +%s)
    if [ "$mode" = dry-run ]; then
        if bash -c "$dry" >"$log" 2>&1; then status="skipped (no CUDA): ready"; else status="skipped (no CUDA): NOT READY"; failures=$((failures + 1)); fi
        echo "would run: $*" >>"$log"
    elif timeout "$limit" "$@" >"$log" 2>&1; then
        status=ok
    else
        rc=$?
        status="failed (exit $rc$([ $rc = 124 ] && echo ", over ${limit}s"))"
        failures=$((failures + 1))
    fi
    echo "| $name | $status | $(( $(date +%s) - start )) | $name.log |" >> "$RESULTS"
}

step cuda_tests 200 "'$PY' -m pytest -q --collect-only tests/e2e/test_cuda_cli.py" -- \
    "$PY" -m pytest -q -p no:cacheprovider tests/e2e/test_cuda_cli.py
step bench_scoring 220 "'$PY' -m py_compile benchmarks/bench_scoring.py" -- \
    "$PY" benchmarks/bench_scoring.py --device cuda --rounds 5 --budget 5 --out "$OUT/bench_scoring.md"
step torchrun_nccl 60 "'$PY' -m py_compile benchmarks/gpu_nccl_smoke.py" -- \
    "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 benchmarks/gpu_nccl_smoke.py "$OUT/nccl.json"
smoke=(--data digits --arch mlp --batch-size 64 --label-noise 0.3 --device cuda --quiet)
step torchrun_train 60 "'$PY' -m mimic_explorer train --help" -- \
    "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m mimic_explorer train "${smoke[@]}" --epochs 3 \
    --out "$OUT/torchrun-train" --save-model "$OUT/torchrun-model.pt"
step torchrun_score 60 "'$PY' -m mimic_explorer score --help" -- \
    "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m mimic_explorer score "${smoke[@]}" \
    --model "$OUT/torchrun-model.pt" --reference "$OUT/torchrun-model.pt" --chunk-size 500 --out "$OUT/torchrun-score"

{
    echo
    echo "- finished: $(date -u +%Y-%m-%dT%H:%M:%SZ), steps not ok: $failures"
} >> "$RESULTS"
echo "$RESULTS"
[ "$failures" = 0 ]
