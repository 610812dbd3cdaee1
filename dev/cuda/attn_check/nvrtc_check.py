#!/usr/bin/env python3
"""Compiles kernels/attention.cu with NVRTC for sm_75, sm_80 and sm_90 (cubins).

Why: fusebox compiles its kernels at run time with NVRTC when no nvcc is installed
(docs/ARCHITECTURE.md), and NVRTC has no <stdint.h>, <math.h> or other host headers, so a
kernel that builds with nvcc can still fail there. No GPU is needed.

Usage: nvrtc_check.py LIBNVRTC CUDA_INCLUDE_DIR
  e.g. LD_LIBRARY_PATH=/work/cuda13-nvrtc/nvidia/cu13/lib python3 nvrtc_check.py \\
       /work/cuda13-nvrtc/nvidia/cu13/lib/libnvrtc.so.13 /work/cuda13-attn/nvidia/cu13/include
(LD_LIBRARY_PATH must hold libnvrtc-builtins.) Prints NVRTCCHECK lines; exit 1 on failure.
"""
import ctypes
import os
import sys


def compile_one(lib, src, arch, includes):
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"attention.cu", 0, None, None)
    if rc != 0:
        return rc, f"nvrtcCreateProgram rc={rc}", 0
    opts = [f"--gpu-architecture={arch}".encode()] + [f"-I{d}".encode() for d in includes]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    size = 0
    if rc == 0:
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(n))
        size = n.value
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode(errors="replace"), size


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    lib = ctypes.CDLL(sys.argv[1])
    here = os.path.dirname(os.path.abspath(__file__))
    kernels = os.path.join(here, "..", "..", "..", "kernels")
    src = open(os.path.join(kernels, "attention.cu"), "rb").read()
    bad = 0
    for arch in ("sm_75", "sm_80", "sm_90"):
        # kernels/ for dropout.cuh, the CUDA include directory for cuda_fp16.h.
        rc, log, size = compile_one(lib, src, arch, [kernels, sys.argv[2]])
        print(f"NVRTCCHECK arch={arch} rc={rc} cubin_bytes={size} pass={'true' if rc == 0 else 'false'}")
        if rc != 0 or log.strip():
            print(log[:3000])
        bad += rc != 0
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
