#!/usr/bin/env bash
# Builds dev/cuda/attn_check/attn_check.cu with the machine's nvcc and runs it: correctness
# cases (ATTNCHECK lines), then timings (ATTNBENCH lines); then the correctness cases again
# from a compute_75 PTX build (JIT: the Turing m16n8k8 code path); then compute-sanitizer memcheck
# and racecheck on the two tiny cases, then the PyTorch baselines (TORCHATTN lines).
# Each step has its own timeout; the whole script stays under ~3 minutes on an H100.
# Env: ATTN_ARCH=sm_XX (default: from nvidia-smi, else sm_90), ATTN_SKIP_TORCH=1,
# ATTN_SKIP_SANITIZER=1, ATTN_SKIP_K128=1 (no --bwd-k128 checks/timings), ATTN_PREV_SRC=FILE (an earlier attention.cu: built beside the
# current one and timed in the same call, ATTNBENCH_PREV lines; an A/B on the same card). Logs go to $OUT (if set) or $TMPDIR. Extra arguments go to attn_check (e.g. --quick, --only NAME).
set -u
cd "$(dirname "$0")"
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
ARCH=${ATTN_ARCH:-}
if [ -z "$ARCH" ]; then
  CC=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
  ARCH=sm_${CC:-90}
fi
BIN=${TMPDIR:-/tmp}/attn_check_bin
LOG=${OUT:-${TMPDIR:-/tmp}}
mkdir -p "$LOG"
echo "== nvcc: $NVCC ($($NVCC --version 2>&1 | tail -1)), arch $ARCH"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null

# The same harness as compute_75 PTX only, built in the background next to the native one:
# the driver JIT-compiles it for this card, so the kernels run their Turing (sm_75)
# instruction path (m16n8k8) on this GPU too.
BIN75=${BIN}_sm75ptx
( timeout 180 "$NVCC" -O3 -std=c++17 -gencode arch=compute_75,code=compute_75 -lineinfo \
    attn_check.cu -o "$BIN75" > "$LOG/attn_build_sm75ptx.log" 2>&1; echo $? > "$LOG/.b75rc" ) &
B75PID=$!
BINPREV=""
if [ -n "${ATTN_PREV_SRC:-}" ] && [ -f "$ATTN_PREV_SRC" ]; then
  BINPREV=${BIN}_prev
  PREV_ABS=$(cd "$(dirname "$ATTN_PREV_SRC")" && pwd)/$(basename "$ATTN_PREV_SRC")
  ( timeout 180 "$NVCC" -O3 -std=c++17 -arch="$ARCH" -DFB_ATTN_SRC="\"$PREV_ABS\"" \
      attn_check.cu -o "$BINPREV" > "$LOG/attn_build_prev.log" 2>&1; echo $? > "$LOG/.bprc" ) &
  BPREVPID=$!
fi

echo "== build"
timeout 180 "$NVCC" -O3 -std=c++17 -arch="$ARCH" -lineinfo -Xptxas -v attn_check.cu -o "$BIN" \
  > "$LOG/attn_build.log" 2>&1
BRC=$?
# one line per kernel: name, arch, registers, smem, spills
awk -F"'" '/Compiling entry function/ {name=$2; arch=$4}
  /spill stores/ {sp=$0; sub(/^ */, "", sp)}
  /Used [0-9]+ registers/ {u=$0; sub(/.*Used /, "", u); sub(/, [0-9]+ bytes cmem.*/, "", u);
    if (name ~ /fb_attn/) print "  " name, arch, u, "|", sp}' "$LOG/attn_build.log"
grep -E "error|warning" "$LOG/attn_build.log" | head -20
if [ $BRC -ne 0 ]; then
  echo "BUILD FAILED rc=$BRC"; tail -40 "$LOG/attn_build.log"; exit 1
fi

wait $B75PID
if [ "$(cat "$LOG/.b75rc" 2>/dev/null)" != 0 ]; then
  echo "compute_75 PTX build failed:"; tail -20 "$LOG/attn_build_sm75ptx.log"; BIN75=""
fi
rm -f "$LOG/.b75rc"

echo "== run"
timeout 150 "$BIN" "$@" 2>&1 | tee "$LOG/attn_check.log"
RRC=${PIPESTATUS[0]}
echo "attn_check exit code: $RRC"
R75=skipped
if [ -n "$BIN75" ]; then
  echo "== run (Turing code path via compute_75 PTX JIT; checks only)"
  timeout 120 "$BIN75" --no-bench 2>&1 | tee "$LOG/attn_check_sm75ptx.log"
  R75=${PIPESTATUS[0]}
  echo "attn_check (sm75 path) exit code: $R75"
fi

# The 128-key D=64 backward (fb_attn_bwd_f16_k128): checks (--quick sizes) on both code
# paths, then the same timings as ATTNBENCH_K128 lines: the A/B that picks its default.
RK=skipped
if [ "${ATTN_SKIP_K128:-0}" != 1 ]; then
  echo "== 128-key backward (--bwd-k128)"
  timeout 120 "$BIN" --bwd-k128 --quick 2>&1 | sed 's/^ATTNCHECK/ATTNCHECK_K128/' | tee "$LOG/attn_check_k128.log"
  RK=${PIPESTATUS[0]}
  if [ -n "$BIN75" ]; then
    timeout 90 "$BIN75" --bwd-k128 --quick --no-bench 2>&1 | sed 's/^ATTNCHECK/ATTNCHECK_K128_SM75/' | tee -a "$LOG/attn_check_k128.log"
    r=${PIPESTATUS[0]}; [ "$r" -ne 0 ] && RK=$r
  fi
  timeout 90 "$BIN" --bwd-k128 --bench-only 2>&1 | sed 's/^ATTNBENCH/ATTNBENCH_K128/' | tee -a "$LOG/attn_check_k128.log"
  echo "attn_check --bwd-k128 exit code: $RK"
fi

if [ -n "$BINPREV" ]; then
  wait $BPREVPID
  if [ "$(cat "$LOG/.bprc" 2>/dev/null)" = 0 ]; then
    echo "== earlier kernels ($ATTN_PREV_SRC): timings only, same card, same call"
    timeout 90 "$BINPREV" --bench-only 2>&1 | sed 's/^ATTNBENCH/ATTNBENCH_PREV/' | tee "$LOG/attn_check_prev.log"
  else
    echo "earlier-kernel build failed:"; tail -20 "$LOG/attn_build_prev.log"
  fi
  rm -f "$LOG/.bprc"
fi

if [ "${ATTN_SKIP_SANITIZER:-0}" != 1 ] && command -v compute-sanitizer >/dev/null 2>&1; then
  if [ $RRC -eq 0 ]; then
    echo "== compute-sanitizer memcheck (tiny cases)"
    timeout 90 compute-sanitizer --tool memcheck --print-limit 20 "$BIN" --quick --only tiny 2>&1 | tail -25
  else  # something failed: memcheck every small case to locate it (-lineinfo gives lines)
    echo "== compute-sanitizer memcheck (all --quick cases, after a failure)"
    timeout 180 compute-sanitizer --tool memcheck --print-limit 20 "$BIN" --quick 2>&1 | tail -40
  fi
  echo "== compute-sanitizer racecheck (tiny cases)"
  timeout 120 compute-sanitizer --tool racecheck --print-limit 20 "$BIN" --quick --only tiny_causal 2>&1 | tail -25
  if [ "$RK" != skipped ]; then  # a new block shape (8 warps, K/V in registers): its barriers too
    echo "== compute-sanitizer racecheck + memcheck (tiny cases, --bwd-k128)"
    timeout 120 compute-sanitizer --tool racecheck --print-limit 20 "$BIN" --bwd-k128 --quick --only tiny 2>&1 | tail -12
    timeout 90 compute-sanitizer --tool memcheck --print-limit 20 "$BIN" --bwd-k128 --quick --only odd 2>&1 | tail -12
  fi
fi

if [ "${ATTN_SKIP_TORCH:-0}" != 1 ]; then
  echo "== torch baselines"
  timeout 150 python3 torch_attn.py 2>&1 | tee "$LOG/torch_attn.log"
  echo "torch_attn exit code: ${PIPESTATUS[0]}"
fi
echo "== summary (full logs in $LOG)"
grep -E "^device:" "$LOG/attn_check.log"
echo "-- native build:"
grep -E "^ATTNCHECK" "$LOG/attn_check.log" | sed -E 's/ B=[0-9]+ H=[0-9]+ Lq=[0-9]+ Lk=[0-9]+ D=[0-9]+ causal=[01] bias=[01] mask=[01] dropout=[0-9.]+//'
echo "-- Turing code path (compute_75 PTX): exit $R75"
[ -f "$LOG/attn_check_sm75ptx.log" ] && grep -E "^device:|ATTNCHECK summary|pass=false" "$LOG/attn_check_sm75ptx.log"
grep -E "^ATTNBENCH" "$LOG/attn_check.log" | sed -E 's/ B=[0-9]+ H=[0-9]+ Lq=[0-9]+ Lk=[0-9]+ D=[0-9]+//'
[ -f "$LOG/attn_check_k128.log" ] && grep -E "^ATTNCHECK_K128.*(summary|pass=false)|^ATTNBENCH_K128" "$LOG/attn_check_k128.log" | sed -E 's/ B=[0-9]+ H=[0-9]+ Lq=[0-9]+ Lk=[0-9]+ D=[0-9]+//'
[ -f "$LOG/attn_check_prev.log" ] && grep -E "^ATTNBENCH_PREV" "$LOG/attn_check_prev.log" | sed -E 's/ B=[0-9]+ H=[0-9]+ Lq=[0-9]+ Lk=[0-9]+ D=[0-9]+//'
[ -f "$LOG/torch_attn.log" ] && grep -E "^TORCHATTN" "$LOG/torch_attn.log" | grep -v "not applicable"
[ "$RRC" -eq 0 ] && { [ "$R75" = 0 ] || [ "$R75" = skipped ]; } && { [ "$RK" = 0 ] || [ "$RK" = skipped ]; } && exit 0
exit 1
