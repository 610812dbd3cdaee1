#!/usr/bin/env bash
# tools/baselines/cpu_vs_torch.sh — the fp32 CPU training step of DistilBERT-QA (4 × 384)
# and T5-small (4 × 512 → 128), fusebox against PyTorch, back to back, ROUNDS times
# (default 3). With AVX2_BENCH (a `bench` built with `cargo build --release
# --no-default-features`, which leaves gemm's AVX-512 kernels out) it also runs the AVX2
# path against PyTorch with ATEN_CPU_CAPABILITY=avx2. One line per run: workload, CPU
# path, tokens/s, median ms/step. Take the median round; run on an otherwise idle machine,
# with no process stopping and resuming others around it (PyTorch's OpenMP threads stall
# when one is descheduled, so such a watcher slows PyTorch more than fusebox).
#
#   bash tools/baselines/cpu_vs_torch.sh [ROUNDS]
#   WORKLOADS=distilbert bash tools/baselines/cpu_vs_torch.sh 5      (one model only)
#   AVX2_BENCH=/tmp/t-avx2/release/bench PYTHON=python3 bash tools/baselines/cpu_vs_torch.sh 3
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
ROUNDS="${1:-3}"
BENCH="${BENCH:-target/release/bench}"
PY="${PYTHON:-python3}"
[ -x "$BENCH" ] || { echo "cpu_vs_torch: $BENCH not found (cargo build --release)" >&2; exit 2; }
D="--model distilbert-qa --device cpu --batch 4 --seq 384 --steps 5 --warmup 1"
T="--model t5-small --device cpu --batch 4 --seq 512 --tgt-seq 128 --steps 5 --warmup 1"
field='import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1])'
fb() { # BENCH ARGS LABEL
    "$1" $2 --profile-steps 0 --json 2>/dev/null |
        python3 -c "$field; print('$3', 'fusebox', d['cpu_path'], round(d['tokens_per_s'], 1), round(d['ms_per_step_median']))"
}
pt() { # ARGS LABEL [ENV]
    env ${3:-} "$PY" tools/torch_baseline.py $1 --precision fp32 2>/dev/null |
        python3 -c "$field; print('$2', 'torch', '${3:-default}', d['tokens_per_s'], round(d['ms_per_step_median']))"
}
for _ in $(seq "$ROUNDS"); do
    for w in ${WORKLOADS:-distilbert t5}; do
        args="$D"; [ "$w" = t5 ] && args="$T"
        fb "$BENCH" "$args" "$w"
        pt "$args" "$w"
        if [ -n "${AVX2_BENCH:-}" ]; then
            fb "$AVX2_BENCH" "$args" "$w"
            pt "$args" "$w" ATEN_CPU_CAPABILITY=avx2
        fi
    done
done
