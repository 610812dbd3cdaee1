#!/usr/bin/env bash
# Build and run the CPU emulation checks of the kernels: needs g++ >= 12, no GPU.
#  1. dev/cuda/emu/check.cpp (host_emu.h): every kernel file but attention.cu.
#  2. dev/cuda/attn_check/emu_check.cpp: the fused attention kernels, on the Turing MMA path
#     (m16n8k8) and the sm_80+ one (m16n8k16 + the cp.async K/V pipeline), each also with
#     the 128-key D=64 backward (FB_EMU_BWD_K128=1: fb_attn_bwd_f16_k128).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
out="${TMPDIR:-/tmp}/fusebox-kernel-emu"
g++ -std=c++20 -O1 -pthread -w -o "$out" check.cpp
"$out"
g++ -std=c++20 -O1 -pthread -w -o "$out-attn75" ../attn_check/emu_check.cpp
"$out-attn75" | grep -E "summary|pass=false|golden"
g++ -std=c++20 -O1 -pthread -w -DFB_ATTN_EMU_K16 -o "$out-attn80" ../attn_check/emu_check.cpp
"$out-attn80" | grep -E "summary|pass=false|golden"
FB_EMU_BWD_K128=1 "$out-attn75" | grep -E "summary|pass=false|golden"
FB_EMU_BWD_K128=1 "$out-attn80" | grep -E "summary|pass=false|golden"
