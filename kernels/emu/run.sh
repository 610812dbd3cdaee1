#!/usr/bin/env bash
# Build and run the CPU emulation check of the kernels (see host_emu.h): needs g++ >= 12.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
out="${TMPDIR:-/tmp}/fusebox-kernel-emu"
g++ -std=c++20 -O1 -pthread -w -o "$out" check.cpp
"$out"
