#!/usr/bin/env bash
# tools/gpu_check.sh — everything a lent GPU should run, in one go.
#
#   tools/gpu_check.sh prepare   # here (Rust toolchain): build the test binaries with the
#                                # nvcc fatbin, pack them stripped into one xz archive in .gpu/
#                                # (ignored by git; `unpack DEST` extracts it)
#   tools/gpu_check.sh run       # on the GPU machine (no Rust, no network), repo root:
#                                # nvidia-smi, every test binary, NVRTC path, compute-sanitizer,
#                                # then one table of the GPUCHECK lines
#
# Why it is built this way: the GPU machine is lent once, for minutes, with no Rust toolchain,
# so everything is compiled beforehand and the run must never stop at the first failure. Every
# step has its own `timeout`, the whole run keeps to a budget (GPU_CHECK_BUDGET seconds,
# default 450), a failing step prints a diagnostic and the script moves on, and the summary
# table comes last so it is the first thing read. Everything is also written to
# $OUT/gpu_check.log when $OUT is set (the device tool brings $OUT back).
#
# Device tool: carry [".gpu"], command "bash tools/gpu_check.sh run".

set -u
set -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
GPU_DIR="$ROOT/.gpu"

log() { printf '[gpu_check %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# ------------------------------------------------------------------------------ prepare
find_nvcc() {
    local c
    for c in "${NVCC:-}" "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "${CUDA_PATH:+$CUDA_PATH/bin/nvcc}" \
        /usr/local/cuda/bin/nvcc "$(command -v nvcc 2>/dev/null)" \
        "$ROOT/../cuda13/nvidia/cu13/bin/nvcc" /work/cuda13/nvidia/cu13/bin/nvcc \
        "${HOME:-/root}/.cache/fusebox-ci/cuda13-13.0.88-nvrtc/nvidia/cu13/bin/nvcc" \
        "${HOME:-/root}/.cache/fusebox-ci/cuda13-13.0.88/nvidia/cu13/bin/nvcc"; do
        if [ -n "$c" ] && [ -x "$c" ]; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

prepare() {
    command -v cargo >/dev/null || { log "ERROR: cargo not found: prepare runs where Rust is installed"; return 2; }
    command -v python3 >/dev/null || { log "ERROR: python3 is needed to read cargo's JSON"; return 2; }
    local nvcc
    if nvcc="$(find_nvcc)"; then
        export NVCC="$nvcc"
        export FUSEBOX_REQUIRE_KERNELS="${FUSEBOX_REQUIRE_KERNELS:-1}"
        log "nvcc: $NVCC (FUSEBOX_REQUIRE_KERNELS=$FUSEBOX_REQUIRE_KERNELS)"
    else
        log "WARNING: no nvcc found; the binaries will compile kernels with NVRTC on the GPU machine"
    fi
    local json
    json="$(mktemp "${TMPDIR:-/tmp}/fusebox-gpu-build.XXXXXX")"
    log "building test binaries (cargo test --release --no-run)"
    if ! cargo test --release --no-run --message-format=json >"$json" 2>"$json.err"; then
        log "ERROR: cargo test --no-run failed:"
        tail -n 40 "$json.err"
        grep -h '"rendered"' "$json" | python3 -c 'import sys,json
for l in sys.stdin:
    try:
        m=json.loads(l).get("message",{}).get("rendered")
        if m: print(m)
    except Exception: pass' | head -n 60
        return 1
    fi
    rm -rf "$GPU_DIR"
    mkdir -p "$GPU_DIR"
    # name<TAB>path for every test executable (profile.test) and binary target.
    python3 - "$json" >"$GPU_DIR/.list" <<'PY'
import json, os, re, sys
seen = set()
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except Exception:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t = m["target"]
    kind = "tests" if m["profile"]["test"] else ("bin" if "bin" in t["kind"] else None)
    if kind is None:
        continue
    name = t["name"] + ("_lib" if kind == "tests" and "lib" in t["kind"] else "")
    if kind == "tests" and "bin" in t["kind"]:
        name = t["name"] + "_bin"
    if (kind, name) in seen:
        continue
    seen.add((kind, name))
    # An integration test whose sources never mention CUDA runs on the CPU only (CI runs
    # it): leave it out so the binaries stay under the device tool's 64 MiB carry.
    # GPU_TESTS_ALL=1 carries every test.
    if "test" in t["kind"] and os.environ.get("GPU_TESTS_ALL") != "1":
        src = t.get("src_path", "")
        d = os.path.dirname(src)
        files = [os.path.join(d, f) for f in os.listdir(d) if f.endswith(".rs")] \
            if os.path.basename(src) == "main.rs" else [src]
        text = "".join(open(f, errors="ignore").read() for f in files if os.path.isfile(f))
        if not re.search(r"cuda", text, re.I):
            print(f"left out (CPU-only test): {name}", file=sys.stderr)
            continue
    print(f"{kind}\t{name}\t{m['executable']}")
PY
    local kind name path n=0 stage="$GPU_DIR/stage"
    mkdir -p "$stage/tests" "$stage/bin"
    while IFS=$'\t' read -r kind name path; do
        [ -f "$path" ] || continue
        if command -v strip >/dev/null; then
            strip -o "$stage/$kind/$name" "$path" 2>/dev/null || cp "$path" "$stage/$kind/$name"
        else
            cp "$path" "$stage/$kind/$name"
        fi
        chmod +x "$stage/$kind/$name"
        # CLI tests find binaries through CARGO_BIN_EXE_* (absolute paths of this machine).
        [ "$kind" = bin ] && printf '%s\t%s\n' "$name" "$path" >>"$GPU_DIR/bin_paths.txt"
        n=$((n + 1))
    done <"$GPU_DIR/.list"
    # Every binary embeds the same ~5 MB fatbin and most of the library. Compressed one by
    # one (gzip: a 32 KB window) they came to 66 MiB, over the device tool's 64 MiB carry;
    # one solid xz archive (64 MiB dictionary) stores each shared part once: ~12 MiB.
    # `unpack` reads it with xz, or with Python's tarfile where the card's machine lacks xz.
    # Written under a .part name and renamed once whole: an interrupted prepare leaves no
    # archive that `unpack` would take for a complete one.
    local archive="$GPU_DIR/binaries.tar.xz" ok=0
    if command -v xz >/dev/null; then
        log "compressing $n binaries into one solid archive (xz -9, about a minute)"
        tar -C "$stage" -cf - tests bin | xz -9 -T1 -c >"$archive.part" && ok=1
    else
        log "WARNING: no xz here; gzip instead (may exceed the 64 MiB carry)"
        archive="$GPU_DIR/binaries.tar.gz"
        tar -C "$stage" -czf "$archive.part" tests bin && ok=1
    fi
    rm -rf "$stage"
    if [ "$ok" != 1 ]; then
        rm -f "$archive.part"
        log "ERROR: packing the binaries failed"
        return 1
    fi
    mv "$archive.part" "$archive"
    # The ptxas report of the fatbin that went into these binaries.
    local out_dir
    out_dir="$(python3 - "$json" <<'PY'
import json, sys
d = ""
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except Exception:
        continue
    if m.get("reason") == "build-script-executed" and m.get("package_id", "").find("fusebox") >= 0:
        d = m.get("out_dir", d)
print(d)
PY
)"
    [ -n "$out_dir" ] && [ -f "$out_dir/ptxas.txt" ] && cp "$out_dir/ptxas.txt" "$GPU_DIR/ptxas.txt"
    # The attention kernels as of ATTN_PREV_REV (default: the last commit before the
    # session-3 changes), for an A/B timing on the card (dev/cuda/attn_check/run.sh).
    local prev_rev="${ATTN_PREV_REV:-90f5fcd}"
    git -C "$ROOT" show "$prev_rev:kernels/attention.cu" >"$GPU_DIR/attention_prev.cu" 2>/dev/null ||
        { log "note: no attention.cu at $prev_rev (no A/B timing)"; rm -f "$GPU_DIR/attention_prev.cu"; }
    {
        echo "prepared: $(date -u +%FT%TZ)"
        echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) $(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l) uncommitted"
        echo "nvcc: ${NVCC:-none (NVRTC at run time)}"
        echo "fatbin: $([ -n "$out_dir" ] && ls -l "$out_dir/kernels.fatbin" 2>/dev/null | awk '{print $5" bytes"}')"
        [ -f "$GPU_DIR/attention_prev.cu" ] && echo "attention A/B baseline: kernels/attention.cu at ${ATTN_PREV_REV:-90f5fcd}"
    } >"$GPU_DIR/MANIFEST.txt"
    rm -f "$json" "$json.err" "$GPU_DIR/.list"
    local bytes
    bytes=$(du -sb "$GPU_DIR" | cut -f1)
    log "packed $n binaries into .gpu/ ($((bytes / 1048576)) MiB)"
    ls -l "$GPU_DIR"
    if [ "$bytes" -gt $((60 * 1048576)) ]; then
        log "WARNING: .gpu/ is over 60 MiB; the device tool carries at most 64 MiB in all"
        return 1
    fi
    log "next: device run with carry [\".gpu\"] and command: bash tools/gpu_check.sh run"
}

# ---------------------------------------------------------------------------------- run
START=$(date +%s)
BUDGET="${GPU_CHECK_BUDGET:-450}"

# Seconds for the next step: its cap, or what is left of the budget (min 5).
slot() {
    local cap=$1 left
    left=$((BUDGET - ($(date +%s) - START)))
    [ "$left" -lt 5 ] && left=5
    [ "$cap" -lt "$left" ] && echo "$cap" || echo "$left"
}

budget_left() { [ $((BUDGET - ($(date +%s) - START))) -gt 10 ]; }

# run_step NAME CAP LOGFILE cmd...   (never aborts the script)
run_step() {
    local name=$1 cap=$2 out=$3 rc t0
    shift 3
    if ! budget_left; then
        log "SKIPPED $name: time budget ($BUDGET s) used up"
        echo "STEP $name rc=skipped" >>"$RESULTS"
        return 0
    fi
    cap=$(slot "$cap")
    log "=== $name (timeout ${cap}s): $*"
    t0=$(date +%s)
    timeout -k 5 "$cap" "$@" >"$out" 2>&1
    rc=$?
    cat "$out"
    case $rc in
        0) log "--- $name: ok ($(( $(date +%s) - t0 ))s)" ;;
        124 | 137) log "--- $name: TIMED OUT after ${cap}s" ;;
        *) log "--- $name: FAILED rc=$rc ($(( $(date +%s) - t0 ))s)" ;;
    esac
    echo "STEP $name rc=$rc s=$(( $(date +%s) - t0 ))" >>"$RESULTS"
    return 0
}

table() {
    # GPUCHECK kernel=.. shape=.. dtype=.. err=.. pass=.. ms=..  (tagged with the run name)
    local f tag
    for f in "$WORK"/*.out; do
        tag=$(basename "$f" .out)
        grep -h '^GPUCHECK ' "$f" 2>/dev/null | sed "s/^GPUCHECK /GPUCHECK run=$tag /"
    done | awk '
        {
            for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = substr($i, length(kv[1]) + 2) }
            key = v["run"] "|" v["kernel"] "|" v["shape"] "|" v["dtype"]
            if (!(key in seen)) { seen[key] = 1; order[++n] = key; err[key] = 0; ok[key] = "true"; ms[key] = 0 }
            e = v["err"] + 0; if (v["err"] ~ /inf|nan/) e = 1e300
            if (e > err[key]) err[key] = e
            if (v["pass"] != "true") ok[key] = "false"
            ms[key] += v["ms"]
        }
        END {
            # Full rows for the main run; the NVRTC and memcheck reruns repeat the same
            # checks, so only their failures and counts are listed.
            printf "%-11s %-34s %-18s %-5s %-10s %-5s %9s\n", "run", "kernel", "shape", "dtype", "max_err", "pass", "ms"
            fails = 0
            for (i = 1; i <= n; i++) {
                k = order[i]; split(k, p, "|")
                runs[p[1]]++
                if (ok[k] != "true") { fails++; rfails[p[1]]++ }
                if ((p[1] == "nvrtc" || p[1] == "memcheck") && ok[k] == "true") continue
                printf "%-11s %-34s %-18s %-5s %-10.3e %-5s %9.3f\n", p[1], p[2], p[3], p[4], err[k], (ok[k] == "true" ? "PASS" : "FAIL"), ms[k]
            }
            printf "\n"
            for (r in runs) printf "GPUCHECK run=%s: %d checks, %d failed\n", r, runs[r], rfails[r] + 0
            printf "GPUCHECK summary: %d checks, %d failed\n", n, fails
            if (n == 0) printf "(no GPUCHECK lines: the GPU tests skipped or did not run; see SKIP lines above)\n"
        }'
}

# unpack DEST: the prepared binaries into DEST/tests and DEST/bin, and the crate's binaries
# where the CLI tests were told they are (CARGO_BIN_EXE_*). gpu_session.sh calls it too.
unpack() {
    local dest=$1 a
    a="$GPU_DIR/binaries.tar.xz"
    [ -f "$a" ] || a="$GPU_DIR/binaries.tar.gz"
    if [ ! -f "$a" ]; then
        log "ERROR: no $GPU_DIR/binaries.tar.xz: run 'tools/gpu_check.sh prepare' first and carry .gpu"
        return 2
    fi
    mkdir -p "$dest"
    if [ "${a%.xz}" != "$a" ] && ! command -v xz >/dev/null; then
        python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$a" "$dest"
    else
        tar -C "$dest" -xf "$a"
    fi || { log "ERROR: cannot unpack $a"; return 2; }
    chmod +x "$dest"/tests/* "$dest"/bin/* 2>/dev/null
    if [ -f "$GPU_DIR/bin_paths.txt" ]; then
        local bname bpath
        while IFS=$'\t' read -r bname bpath; do
            [ -e "$bpath" ] && continue
            mkdir -p "$(dirname "$bpath")" 2>/dev/null && cp "$dest/bin/$bname" "$bpath" 2>/dev/null \
                && log "placed $bname at $bpath" || log "cannot place $bname at $bpath (CLI tests may fail)"
        done <"$GPU_DIR/bin_paths.txt"
    fi
    log "unpacked $(ls "$dest/tests" | wc -l) test and $(ls "$dest/bin" | wc -l) other binaries from $a"
}

run() {
    # Outside .gpu, so .gpu stays exactly what prepare made (and what gets carried).
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")" || WORK="$GPU_DIR/run-$$"
    mkdir -p "$WORK"
    RESULTS="$WORK/steps.txt"
    : >"$RESULTS"
    LOGFILE="$WORK/gpu_check.log"
    [ -n "${OUT:-}" ] && mkdir -p "$OUT" && LOGFILE="$OUT/gpu_check.log"
    # A pipeline (not exec > >(tee)) so tee has flushed everything when we return.
    run_body 2>&1 | tee -a "$LOGFILE"
    local rc=${PIPESTATUS[0]}
    [ -n "${OUT:-}" ] && table >"$OUT/gpu_check_table.txt" 2>&1
    return "$rc"
}

run_body() {
    log "repo: $ROOT; budget ${BUDGET}s; log: $LOGFILE"
    [ -f "$GPU_DIR/MANIFEST.txt" ] && cat "$GPU_DIR/MANIFEST.txt"
    TESTS="$WORK/tests"
    unpack "$WORK" || return 2
    export RUST_BACKTRACE=1
    export FUSEBOX_KERNEL_CACHE="${FUSEBOX_KERNEL_CACHE:-$WORK/kernel-cache}"
    if [ -z "${FUSEBOX_ASSETS:-}" ]; then
        local a
        for a in "$ROOT/shared/assets" "$ROOT/../shared/assets" "$GPU_DIR/assets" /work/shared/assets; do
            if [ -d "$a" ]; then export FUSEBOX_ASSETS="$a"; break; fi
        done
    fi
    log "FUSEBOX_ASSETS=${FUSEBOX_ASSETS:-<none found>}"
    run_step nvidia-smi 20 "$WORK/nvidia-smi.txt" nvidia-smi
    timeout 10 nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,clocks.max.sm --format=csv 2>&1 || true
    ls -l /usr/local/cuda/lib64/libcublas.so* /usr/local/cuda/lib64/libnvrtc.so* 2>/dev/null | head -n 6

    local kt="$TESTS/gpu_kernels"
    if [ -x "$kt" ]; then
        run_step gpu_kernels 180 "$WORK/gpu_kernels.out" "$kt" --nocapture --test-threads=1 --skip stability
        # 500 fp16 training steps each of DistilBERT-QA and T5-small (~15-20 s on an H100).
        run_step stability 150 "$WORK/stability.out" "$kt" --nocapture --test-threads=1 stability
        grep -h "^STABILITY" "$WORK/stability.out"
        # The run-time path: the same kernels compiled by NVRTC for this GPU, small cases.
        run_step nvrtc 90 "$WORK/nvrtc.out" env FUSEBOX_FORCE_NVRTC=1 FUSEBOX_TEST_SMALL=1 \
            "$kt" --nocapture --test-threads=1 elementwise norms softmax attention
    else
        log "ERROR: $kt not found: the kernel tests were not prepared"
    fi
    local cs
    cs="$(command -v compute-sanitizer 2>/dev/null || true)"
    [ -z "$cs" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && cs=/usr/local/cuda/bin/compute-sanitizer
    if [ -n "$cs" ] && [ -x "$kt" ]; then
        run_step memcheck 120 "$WORK/memcheck.out" env FUSEBOX_TEST_SMALL=1 "$cs" --tool memcheck \
            --leak-check no --error-exitcode 99 "$kt" --test-threads=1 --skip nvrtc --skip stability
        grep -E "ERROR SUMMARY|Invalid|out of bounds" "$WORK/memcheck.out" | head -n 20
    else
        log "compute-sanitizer not found; memcheck skipped"
    fi
    local t name
    for t in "$TESTS"/*; do
        name=$(basename "$t")
        [ "$name" = gpu_kernels ] && continue
        [ -x "$t" ] || continue
        run_step "$name" 60 "$WORK/$name.out" "$t" --nocapture --test-threads=1
    done
    echo
    log "steps:"
    cat "$RESULTS"
    echo
    table
    log "done in $(( $(date +%s) - START ))s"
    grep -qE 'rc=([1-9]|skipped)' "$RESULTS" && return 1
    return 0
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    unpack) unpack "${2:?usage: gpu_check.sh unpack DEST}" ;;
    table)
        WORK="${2:?usage: gpu_check.sh table RUN_DIR}"
        table
        ;;
    *)
        echo "usage: $0 prepare|run|unpack DEST|table RUN_DIR" >&2
        exit 2
        ;;
esac
