#!/usr/bin/env bash
# tools/profile.sh — an Nsight Systems timeline and Nsight Compute kernel metrics of one
# `bench` workload, grouped by fusebox's NVTX ranges (src/profile/nvtx.rs):
# step > forward / backward / optimizer > encoder.3 / decoder.2 > linear, linear.bwd, ...
#
#   bash tools/profile.sh [OUT_DIR] [-- BENCH_ARGS...]
#
# OUT_DIR (default profile-out/) gets:
#   timeline.nsys-rep   open in nsys-ui; nvtx_sum.txt and kern_sum.txt are its tables
#   kernels.ncu-rep     open in ncu-ui; ncu.txt is its per-kernel summary
# BENCH_ARGS default to a DistilBERT-QA fp16 training step on the card.
# Env: BENCH (the binary; default target/release/bench), NCU_KERNELS (kernels ncu
# measures, default 20), NCU_SET (ncu's section set, default basic; full is slow),
# PROFILE_SKIP_NSYS=1 / PROFILE_SKIP_NCU=1 (run only the other tool).
# Ranges are forced on (FUSEBOX_NVTX=1); without a tool attached they cost nothing.

set -euo pipefail
OUT_DIR="profile-out"
if [ $# -gt 0 ] && [ "$1" != "--" ]; then OUT_DIR=$1; shift; fi
[ "${1:-}" = "--" ] && shift
if [ $# -gt 0 ]; then
    ARGS=("$@")
else
    ARGS=(--model distilbert-qa --device cuda --precision fp16 --batch 32 --seq 384
        --steps 3 --warmup 2 --profile-steps 0)
fi
BENCH="${BENCH:-target/release/bench}"

die() { echo "profile.sh: $*" >&2; exit 2; }
# find TOOL: on PATH, else CUDA's default bin folder; empty when neither has it.
find_tool() { command -v "$1" 2>/dev/null || { [ -x "/usr/local/cuda/bin/$1" ] && echo "/usr/local/cuda/bin/$1"; } || true; }

[ -x "$BENCH" ] || die "bench binary $BENCH not found (cargo build --release, or set BENCH=...)"
NSYS=""; NCU=""
if [ "${PROFILE_SKIP_NSYS:-0}" != 1 ]; then
    NSYS=$(find_tool nsys)
    [ -n "$NSYS" ] || die "nsys (Nsight Systems) not found on PATH or in /usr/local/cuda/bin; install it or set PROFILE_SKIP_NSYS=1"
fi
if [ "${PROFILE_SKIP_NCU:-0}" != 1 ]; then
    NCU=$(find_tool ncu)
    [ -n "$NCU" ] || die "ncu (Nsight Compute) not found on PATH or in /usr/local/cuda/bin; install it or set PROFILE_SKIP_NCU=1"
fi
[ -n "$NSYS$NCU" ] || die "both tools skipped: nothing to do"
mkdir -p "$OUT_DIR"
export FUSEBOX_NVTX=1

if [ -n "$NSYS" ]; then
    # The whole run, CUDA API + kernels + cuBLAS + NVTX; no CPU sampling or context
    # switches (they add overhead and size, and the ranges already say where time goes).
    "$NSYS" profile --trace=cuda,nvtx,cublas --sample=none --cpuctxsw=none \
        --force-overwrite=true --output="$OUT_DIR/timeline" "$BENCH" "${ARGS[@]}"
    # nvtx_sum is the report's name since nsys 2023; older releases call it nvtx_pushpop_sum.
    "$NSYS" stats --report nvtx_sum "$OUT_DIR/timeline.nsys-rep" >"$OUT_DIR/nvtx_sum.txt" 2>&1 ||
        "$NSYS" stats --report nvtx_pushpop_sum "$OUT_DIR/timeline.nsys-rep" >"$OUT_DIR/nvtx_sum.txt" 2>&1
    "$NSYS" stats --report cuda_gpu_kern_sum "$OUT_DIR/timeline.nsys-rep" >"$OUT_DIR/kern_sum.txt" 2>&1 || true
    echo "nsys: $OUT_DIR/timeline.nsys-rep ($OUT_DIR/nvtx_sum.txt, $OUT_DIR/kern_sum.txt)"
fi

if [ -n "$NCU" ]; then
    # Only kernels inside a training step's range ("step/": the push/pop range "step"),
    # the first NCU_KERNELS of them; each is replayed per section, so keep the count small.
    "$NCU" --nvtx --nvtx-include "step/" --launch-count "${NCU_KERNELS:-20}" \
        --set "${NCU_SET:-basic}" --force-overwrite --export "$OUT_DIR/kernels" \
        "$BENCH" "${ARGS[@]}"
    "$NCU" --import "$OUT_DIR/kernels.ncu-rep" --print-summary per-kernel >"$OUT_DIR/ncu.txt" 2>&1
    echo "ncu: $OUT_DIR/kernels.ncu-rep ($OUT_DIR/ncu.txt)"
fi
