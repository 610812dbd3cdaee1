#!/usr/bin/env bash
# tools/gpu_session.sh — the one command a lent GPU runs, in priority order, within a
# fixed time budget, ending with one summary table.
#
#   here:   tools/gpu_check.sh prepare        (builds .gpu/: test binaries + bench/train/...)
#   there:  bash tools/gpu_session.sh          (device tool: carry [".gpu"], timeout ~560 s)
#
# Why it is built this way: a session gets ~15 minutes of device time in all, start-up
# included, so there is one run and it must not stop at the first failure. Steps run in
# issue 20's priority (kernel tests, both training steps beside PyTorch eager AMP, memcheck,
# the attention tile A/B, the planner on CUDA, stability, parity, FLAN-T5-large under
# --gpu t4, resume, nsys, NVRTC; then torch.compile, the attention harness, ncu and the
# older A/Bs) and each has its own timeout; whatever the budget leaves out is reported as
# skipped. The device tool brings back at most 8 files from $OUT, so every log goes into
# one archive and the summary into summary.txt.
#
# Env: SESSION_BUDGET (seconds, default 520), SESSION_SKIP_TORCH=1, SESSION_SKIP_ATTN=1,
# SESSION_COMPILE=1 (also torch.compile baselines; compiling takes minutes),
# SESSION_ONLY="step ..." / SESSION_SKIP_STEPS="step ..." (a rerun of what a run missed).

set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
START=$(date +%s)
BUDGET="${SESSION_BUDGET:-520}"
W="$(mktemp -d "${TMPDIR:-/tmp}/gpu_session.XXXXXX")"
FINAL="${OUT:-$W/out}"
mkdir -p "$FINAL"
RESULTS="$W/steps.txt"
: >"$RESULTS"

log() { printf '[gpu_session %s +%ss] %s\n' "$(date -u +%H:%M:%S)" "$(( $(date +%s) - START ))" "$*"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }

# step NAME CAP cmd...: run with min(CAP, budget left), output to $W/NAME.out, never abort.
step() {
    local name=$1 cap=$2 rc t0 l
    shift 2
    # A rerun takes only what the first run missed: SESSION_ONLY="a b" runs just those
    # steps, SESSION_SKIP_STEPS="a b" all but those.
    if { [ -n "${SESSION_ONLY:-}" ] && ! grep -qw -- "$name" <<<"$SESSION_ONLY"; } ||
        grep -qw -- "$name" <<<"${SESSION_SKIP_STEPS:-}"; then
        echo "STEP $name rc=not-selected" >>"$RESULTS"
        return 0
    fi
    l=$(left)
    if [ "$l" -lt 15 ]; then
        log "SKIPPED $name (budget used up)"
        echo "STEP $name rc=skipped" >>"$RESULTS"
        return 0
    fi
    [ "$cap" -gt "$l" ] && cap=$l
    log "=== $name (timeout ${cap}s)"
    t0=$(date +%s)
    timeout -k 5 "$cap" "$@" >"$W/$name.out" 2>&1
    rc=$?
    tail -n 25 "$W/$name.out"
    log "--- $name rc=$rc in $(( $(date +%s) - t0 ))s"
    echo "STEP $name rc=$rc s=$(( $(date +%s) - t0 ))" >>"$RESULTS"
}

log "budget ${BUDGET}s, work dir $W"
cat .gpu/MANIFEST.txt 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$W/nvidia-smi.out"
# The prepared binaries (one solid archive) into $W/tests and $W/bin.
bash tools/gpu_check.sh unpack "$W" || log "ERROR: no binaries to run (tools/gpu_check.sh prepare, carry .gpu)"
export RUST_BACKTRACE=1 FUSEBOX_KERNEL_CACHE="$W/kernel-cache"
for a in "$ROOT/shared/assets" "$ROOT/../shared/assets"; do [ -d "$a" ] && export FUSEBOX_ASSETS="$a" && break; done

KT="$W/tests/gpu_kernels"
BENCH="$W/bin/bench"
PY=python3

# The workloads (bench and tools/torch_baseline.py take the same flags; bench refuses a
# repeated flag, so steps, precision and --json are given per call).
DB="--model distilbert-qa --device cuda --precision fp16 --batch 32 --seq 384"
T5="--model t5-small --device cuda --batch 16 --seq 512 --tgt-seq 128"
S8="--steps 8 --warmup 3"
S4="--steps 4 --warmup 2"
TORCH=$([ "${SESSION_SKIP_TORCH:-0}" != 1 ] && echo 1 || echo 0)
CS="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
# The order is issue 20's: first what its RESULTS section must have (kernel suite counts,
# the sanitizer, both training steps beside PyTorch eager AMP in this call, the planner's
# prediction beside the allocator's peak and NVML: bench's JSON), then the attention tile
# A/B that decides BwdTile's default, then the stability run and the rest, then the heavy
# attention harness, torch.compile and the older A/Bs.
# 1. Every CUDA kernel against the CPU reference (fatbin path); fp16 stability (500
# training steps per model) is its own step below.
step gpu_kernels 150 "$KT" --nocapture --test-threads=1 --skip stability
# 2. Model training steps: fusebox (one profiled step: the per-op table) vs PyTorch eager AMP.
step bench_distilbert_fp16 90 "$BENCH" $DB $S8 --json --profile-steps 1
[ "$TORCH" = 1 ] && step torch_distilbert 80 $PY tools/torch_baseline.py $DB $S8
step bench_t5_fp16 90 "$BENCH" $T5 --precision fp16 $S8 --json --profile-steps 1
[ "$TORCH" = 1 ] && step torch_t5 100 $PY tools/torch_baseline.py $T5 --precision fp16 $S8
# 3. Memory errors in the kernels (small cases).
[ -x "$CS" ] && step memcheck 100 env FUSEBOX_TEST_SMALL=1 "$CS" --tool memcheck --leak-check no --error-exitcode 99 "$KT" --test-threads=1 --skip nvrtc --skip stability
# 4. The same DistilBERT step with the 128-key attention backward (fb_attn_bwd_f16_k128):
# if it is the faster one, it becomes the default (src/backend/cuda/attention_fused.rs BwdTile).
step bench_distilbert_fp16_k128 60 env FUSEBOX_ATTN_BWD=k128 "$BENCH" $DB $S8 --json --profile-steps 1
# 5. The planner's prediction against the tracker on CUDA (fp32 naive attention, fp16
# fused, checkpointing) and the allocator's refusal past a cap (cap.rs).
[ -x "$W/tests/budget" ] && step budget_cuda 60 "$W/tests/budget" --nocapture --test-threads=1 cuda
# 6. 500 fp16 training steps of DistilBERT-QA and T5-small (loss finite, skips, scale), ~30 s.
step stability 120 "$KT" --nocapture --test-threads=1 stability
# 7. T5 fp16 overflow safety, DistilBERT and BART fp16 on the card; HF parity of the model
# families (outputs and gradients against transformers' fixtures).
for t in t5_fp16 distilbert_fp16 bart_fp16 t5_parity qa_parity bart_parity; do
    [ -x "$W/tests/$t" ] && step "$t" 60 "$W/tests/$t" --nocapture --test-threads=1 gpu
done
# 8. Issue 18: FLAN-T5-large (public configuration, random weights) fine-tunes in a T4's
# 16 GB: --gpu t4 plans micro-batch x accumulation for batch 8 x 512 -> 128 and caps the
# allocator at the budget less the context and cuBLAS workspace, so this card shows what
# fits a T4. fp16, as many steps as fit in 60 s; the summary prints loss, skipped steps and
# the peaks. Then a budget too small for it: the planner's clean refusal, no driver OOM.
step t4_flan_t5_large 160 "$BENCH" --model flan-t5-large --device cuda --precision fp16 --gpu t4 --batch 8 --seq 512 --tgt-seq 128 --steps 1000 --max-time 60 --warmup 1 --profile-steps 0
step t4_too_small 40 bash -c 'out=$("$1" --model flan-t5-large --device cuda --precision fp16 --vram-budget 10GiB --batch 8 --seq 512 --tgt-seq 128 --steps 1 --profile-steps 0 2>&1); rc=$?; echo "$out"; [ "$rc" -ne 0 ] && grep -q "is too small" <<<"$out" && ! grep -qi "panicked\|CUDA_ERROR_OUT_OF_MEMORY" <<<"$out"' _ "$BENCH"
# 9. Training that survives a disconnect, on the card: a train child killed with SIGKILL (and
# one sent SIGINT) resumes with --resume auto to within 1e-3 of the uninterrupted run
# (CUDA's scatter-add atomics keep it from bit equality; the CPU test in CI is exact).
[ -x "$W/tests/resume" ] && [ -x "$W/bin/train" ] && step resume_cuda 120 \
    env FUSEBOX_RESUME_DEVICE=cuda FUSEBOX_TRAIN_BIN="$W/bin/train" \
    "$W/tests/resume" --nocapture --test-threads=1 killed sigint
# 10. NVTX ranges in an Nsight Systems timeline (tools/profile.sh without ncu, a short
# DistilBERT step); the check needs the step, a layer and an op range in nvtx_sum.
NSYS="$(command -v nsys || echo /usr/local/cuda/bin/nsys)"
if [ -x "$NSYS" ]; then
    step nsys_nvtx 90 env BENCH="$BENCH" PROFILE_SKIP_NCU=1 bash tools/profile.sh "$W/nsys" -- \
        --model distilbert-qa --device cuda --precision fp16 --batch 8 --seq 128 --steps 2 --warmup 1 --profile-steps 0
    step nsys_nvtx_ranges 10 bash -c 'f=$1; cat "$f" && grep -qw step "$f" && grep -qF encoder.0 "$f" && grep -qw linear "$f"' _ "$W/nsys/nvtx_sum.txt"
else
    log "SKIPPED nsys_nvtx (no nsys)"
    echo "STEP nsys_nvtx rc=skipped (no nsys)" >>"$RESULTS"
fi
# 11. The NVRTC run-time path (small cases).
step nvrtc 60 env FUSEBOX_FORCE_NVRTC=1 FUSEBOX_TEST_SMALL=1 "$KT" --nocapture --test-threads=1 elementwise norms softmax attention
# 12. torch.compile (compiling takes minutes), only with SESSION_COMPILE=1.
if [ "$TORCH" = 1 ] && [ "${SESSION_COMPILE:-0}" = 1 ]; then
    step torch_compile_distilbert 150 $PY tools/torch_baseline.py $DB $S8 --compile
    step torch_compile_t5 150 $PY tools/torch_baseline.py $T5 --precision fp16 $S8 --compile
fi
# 13. Fused attention: correctness (native and Turing PTX path) and timings. A/B against
# the kernels before session 3 (.gpu/attention_prev.cu, same card, same call), memcheck +
# racecheck on tiny cases (cp.async); PyTorch attention baselines only with
# SESSION_ATTN_TORCH=1 (run 1 has them for these shapes).
[ "${SESSION_SKIP_ATTN:-0}" != 1 ] && step attn_check 260 env OUT="$W/attn" ATTN_PREV_SRC="$ROOT/.gpu/attention_prev.cu" \
    ATTN_SKIP_TORCH=$([ "${SESSION_ATTN_TORCH:-0}" = 1 ] && echo 0 || echo 1) bash dev/cuda/attn_check/run.sh
# Why the attention backward is slow: Nsight Compute on one backward launch at the
# DistilBERT shape, both key tiles, from the harness that attn_check built.
NCU="$(command -v ncu || echo /usr/local/cuda/bin/ncu)"
AB="${TMPDIR:-/tmp}/attn_check_bin"
if [ -x "$NCU" ] && [ -x "$AB" ]; then
    for v in k64 k128; do
        extra=""; [ "$v" = k128 ] && extra="--bwd-k128"
        step "ncu_attn_bwd_$v" 60 "$NCU" -k regex:fb_attn_bwd_f16 -c 1 --section SpeedOfLight \
            --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
            --section MemoryWorkloadAnalysis "$AB" --bench-only --only distilbert_b32_384 --reps 1 $extra
    done
fi
# 14. The older A/Bs: three q/k/v projections (the layout before the fused QKV GEMM), the
# per-tensor AdamW, no cuBLASLt bias epilogues (and the linear tests on that fallback),
# the BART / Marian public configurations, T5 with activation checkpointing, fp32, k128.
step bench_distilbert_fp16_separate_qkv 60 env FUSEBOX_SEPARATE_QKV=1 "$BENCH" $DB $S8 --json --profile-steps 0
step bench_distilbert_fp16_per_tensor_adamw 60 env FUSEBOX_ADAMW_PER_TENSOR=1 "$BENCH" $DB $S8 --json --profile-steps 1
step bench_distilbert_fp16_no_lt 60 env FUSEBOX_NO_LT=1 "$BENCH" $DB $S8 --json --profile-steps 1
step linear_lt_off 40 env FUSEBOX_NO_LT=1 "$KT" --nocapture --test-threads=1 linear_lt
step bench_bart_base_fp16 60 "$BENCH" --model bart-base --device cuda --precision fp16 --batch 16 --seq 512 --tgt-seq 128 --steps 8 --warmup 3 --profile-steps 0 --json
step bench_opus_mt_fp16 60 "$BENCH" --model opus-mt-en-id --device cuda --precision fp16 --batch 16 --seq 256 --tgt-seq 128 --steps 8 --warmup 3 --profile-steps 0 --json
step bench_t5_fp16_ckpt 60 "$BENCH" $T5 --precision fp16 $S4 --json --profile-steps 0 --checkpointing
step bench_t5_fp32 60 "$BENCH" $T5 --precision fp32 $S4 --json --profile-steps 0
step bench_t5_fp16_k128 60 env FUSEBOX_ATTN_BWD=k128 "$BENCH" $T5 --precision fp16 $S8 --json --profile-steps 0
step bench_t5_fp16_separate_qkv 60 env FUSEBOX_SEPARATE_QKV=1 "$BENCH" $T5 --precision fp16 $S8 --json --profile-steps 0
# ------------------------------------------------------------------------------ summary
{
    echo "== card"
    cat "$W/nvidia-smi.out"
    echo
    echo "== steps"
    cat "$RESULTS"
    echo
    echo "== kernel checks (GPUCHECK; failures listed, counts per run)"
    for f in "$W"/gpu_kernels.out "$W"/nvrtc.out "$W"/memcheck.out; do
        [ -f "$f" ] || continue
        tag=$(basename "$f" .out)
        n=$(grep -c '^GPUCHECK ' "$f")
        bad=$(grep '^GPUCHECK ' "$f" | grep -vc 'pass=true')
        echo "$tag: $n checks, $bad failed"
        grep '^GPUCHECK ' "$f" | grep -v 'pass=true' | head -n 30
    done
    grep -h "ERROR SUMMARY" "$W/memcheck.out" 2>/dev/null
    grep -h "^test result\|panicked\|FAILED" "$W"/gpu_kernels.out "$W"/stability.out "$W"/t5_parity.out "$W"/qa_parity.out "$W"/bart_parity.out "$W"/t5_fp16.out "$W"/bart_fp16.out "$W"/distilbert_fp16.out "$W"/budget_cuda.out "$W"/linear_lt_off.out "$W"/t4_flan_t5_large.out 2>/dev/null | head -n 30
    echo
    echo "== fp16 training stability (500 steps, random init, random tokens)"
    grep -h "^STABILITY\|^SKIP\|panicked" "$W/stability.out" 2>/dev/null | head -n 10
    echo
    echo "== fused attention"
    grep -h "^ATTNCHECK" "$W/attn_check.out" | awk '{print}' | head -n 60
    grep -h "^ATTNBENCH\|^TORCHATTN" "$W/attn_check.out" | head -n 60
    grep -h "ERROR SUMMARY\|RACECHECK SUMMARY" "$W/attn_check.out" | head -n 4
    grep -h "exit code" "$W/attn_check.out"
    echo
    echo "== FLAN-T5-large under --gpu t4 (fp16, batch 8 x 512 -> 128, 60 s)"
    grep -hE "^memory plan|predicted peak|budget$|^steps |^tokens/s|^peak memory|device predicted" "$W/t4_flan_t5_large.out" 2>/dev/null | head -n 12
    grep -h '^{' "$W/t4_flan_t5_large.out" 2>/dev/null | tail -n 1 | $PY -c 'import json,sys; r=json.loads(sys.stdin.read()); fixed=r.get("cuda_fixed_bytes",0); t4=15360*2**20; res=r.get("allocator_peak_reserved_bytes",0); print("steps %s, loss %s -> %s, skipped %s, tensor peak %.2f GiB (plan %.2f), allocator reserved peak %.2f GiB + fixed %.2f GiB = %.2f GiB of the T4 budget %.2f GiB: %s" % (r["steps"], r["first_loss"], r["final_loss"], r.get("skipped_steps"), r["peak_mem_bytes"]/2**30, (r.get("predicted_peak_bytes") or 0)/2**30, res/2**30, fixed/2**30, (res+fixed)/2**30, t4/2**30, "fits" if res+fixed<=t4 else "OVER"))' 2>&1
    grep -h "Error\|panicked" "$W/t4_flan_t5_large.out" 2>/dev/null | head -n 5
    echo "-- too small a budget (expect the planner's refusal):"
    grep -h "too small" "$W/t4_too_small.out" 2>/dev/null | head -n 2
    echo
    echo "== model training steps (same card, same batch)"
    for f in bench_t5_fp16 torch_t5 torch_compile_t5 bench_distilbert_fp16 bench_distilbert_fp16_k128 bench_distilbert_fp16_separate_qkv bench_distilbert_fp16_per_tensor_adamw bench_distilbert_fp16_no_lt torch_distilbert torch_compile_distilbert bench_t5_fp16_ckpt bench_t5_fp32 bench_t5_fp16_k128 bench_t5_fp16_separate_qkv; do
        [ -f "$W/$f.out" ] || continue
        line=$(grep -h '^{' "$W/$f.out" | tail -n 1)
        # everything but the per-op list (printed below for the profiled runs)
        short=$(printf '%s' "$line" | $PY -c 'import json,sys; r=json.loads(sys.stdin.read()); r.pop("ops",None); print(json.dumps(r,separators=(",",":")))' 2>/dev/null || printf '%s' "${line:0:600}")
        echo "$f: ${short:0:1200}"
        grep -h "Error\|error" "$W/$f.out" | head -n 3
    done
    echo
    echo "== per-op time, fusebox t5-small fp16 (profiled step)"
    for f in bench_t5_fp16 bench_distilbert_fp16 bench_distilbert_fp16_k128; do
        echo "-- $f"
        grep -h '^{' "$W/$f.out" 2>/dev/null | tail -n 1 | $PY tools/ops_table.py
    done
    echo
    echo "== NVTX ranges in nsys (nvtx_sum; step, encoder.N, ops)"
    grep -E "step|encoder\.|forward|backward|optimizer" "$W/nsys/nvtx_sum.txt" 2>/dev/null | head -n 20
    echo
    echo "== Nsight Compute, attention backward at 32 x 12 x 384 x 384 (one launch each)"
    for v in k64 k128; do
        [ -f "$W/ncu_attn_bwd_$v.out" ] || continue
        echo "-- $v"
        grep -E "fb_attn_bwd|Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Compute \(SM\) Throughput|Memory Throughput|L2 Cache Throughput|Warp Cycles Per Issued|Issue Slots Busy|No Eligible|Stall|stalled|ERR_|==ERROR==" "$W/ncu_attn_bwd_$v.out" | head -n 30
    done
    echo
    log "done"
} >"$W/summary.txt" 2>&1
cp "$W/summary.txt" "$FINAL/summary.txt"
tar -C "$W" -czf "$FINAL/logs.tgz" --exclude=tests --exclude=bin --exclude=kernel-cache --exclude='*.nsys-rep' . 2>/dev/null
cat "$W/summary.txt"
