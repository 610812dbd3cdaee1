// Shared device helpers for every fusebox kernel file.
//
// Why it is built this way:
// - No system or CUDA headers at all (not even cuda_fp16.h): the same text must compile
//   under nvcc at build time and under NVRTC at run time on a machine that has only the
//   driver and libnvrtc, where no include directory can be assumed. f16 is therefore
//   stored as a raw 16-bit pattern (`fb_half`) and converted with the PTX `cvt`
//   instructions, which exist on every architecture we target (sm_75 and up).
// - All arithmetic is fp32; f16 is storage only. Reductions accumulate in fp32.
// - The dropout hash is bit-for-bit crate::backend::dropout_keep, so the CPU
//   and CUDA backends draw the same mask and backward can re-derive it from the seed.
// - Nothing here needs sm_80+: warp shuffles and float atomicAdd exist on sm_75.
#pragma once

typedef unsigned short fb_half;
typedef long long i64;

#define FB_FULL_MASK 0xffffffffu

#ifndef FB_HOST_EMU  // dev/cuda/emu/ compiles these files for the CPU with its own cvt
__device__ __forceinline__ float fb_h2f(fb_half h) {
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ fb_half fb_f2h(float f) {
    fb_half h;
    asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(f));
    return h;
}
#endif

// Typed load/store so one template body serves f32 and f16 storage.
__device__ __forceinline__ float fb_ld(const float* p, i64 i) { return p[i]; }
__device__ __forceinline__ float fb_ld(const fb_half* p, i64 i) { return fb_h2f(p[i]); }
__device__ __forceinline__ void fb_st(float* p, i64 i, float v) { p[i] = v; }
__device__ __forceinline__ void fb_st(fb_half* p, i64 i, float v) { p[i] = fb_f2h(v); }

__device__ __forceinline__ float fb_inf() { return __int_as_float(0x7f800000); }
__device__ __forceinline__ float fb_nan() { return __int_as_float(0x7fffffff); }
__device__ __forceinline__ bool fb_finite(float x) {
    return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u;
}

__device__ __forceinline__ float fb_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FB_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float fb_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FB_FULL_MASK, v, o));
    return v;
}

// Block-wide sum (kMax false) or max; every thread gets the result. blockDim.x must be a
// multiple of 32 and at most 1024. `scratch` is 32 floats of shared memory; the trailing
// barrier lets callers reuse it immediately.
template <bool kMax>
__device__ __forceinline__ float fb_block_reduce(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int nw = (blockDim.x + 31) >> 5;
    v = kMax ? fb_warp_max(v) : fb_warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = (lane < nw) ? scratch[lane] : (kMax ? -fb_inf() : 0.0f);
    r = kMax ? fb_warp_max(r) : fb_warp_sum(r);
    __syncthreads();
    return r;
}
__device__ __forceinline__ float fb_block_sum(float v, float* scratch) {
    return fb_block_reduce<false>(v, scratch);
}
__device__ __forceinline__ float fb_block_max(float v, float* scratch) {
    return fb_block_reduce<true>(v, scratch);
}

// The dropout hash (crate::backend::dropout_keep): fb_dropout_keep_k(key, i, p),
// fb_dropout_key(seed), fb_dropout_keep(seed, i, p).
#include "dropout.cuh"

// Deferred error record for bad ids/targets, an int[4] that lives on the device for the
// whole process (src/backend/cuda/context.rs, `Dev::err`): {op code, bad value, bound,
// extra}. The first failing thread wins the record; the host reads it at its next
// device-to-host copy instead of syncing after every embedding or loss launch. Codes must
// match `ErrCode` in src/backend/cuda/context.rs.
#define FB_ERR_INDEX_SELECT 1
#define FB_ERR_INDEX_ADD 2
#define FB_ERR_CROSS_ENTROPY 3
__device__ __forceinline__ void fb_report(int* err, int code, int value, i64 bound, int extra) {
    if (atomicCAS(err, 0, code) == 0) {
        err[1] = value;
        err[2] = bound > 0x7fffffff ? 0x7fffffff : (int)bound;
        err[3] = extra;
    }
}

#define FB_GRID_STRIDE(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// ---------------------------------------------------------------- 8-wide vector access
// Memory-bound kernels move 8 elements per thread per step: one 16-byte transaction for
// f16 (two for f32) instead of eight 2-byte ones. A scalar grid-stride loop keeps too
// few bytes in flight to reach DRAM bandwidth on a large card (Little's law: ~2 MB must be
// outstanding on an H100, 2 bytes x 270k resident threads is 0.5 MB). The vector path is
// taken only when every pointer of the call is 16-byte aligned (checked in the kernel:
// views at an odd offset stay correct, just scalar) and the chunk is whole; the tail
// chunk and unaligned calls use the same body through scalar loads, so there is one
// arithmetic path and results are identical either way.
struct alignas(16) fb_u4 {
    unsigned int x, y, z, w;
};

#define FB_VEC 8

__device__ __forceinline__ bool fb_al16(const void* p) {
    return ((unsigned long long)p & 15ull) == 0;
}

__device__ __forceinline__ float fb_lo_h2f(unsigned int w) { return fb_h2f((fb_half)(w & 0xffffu)); }
__device__ __forceinline__ float fb_hi_h2f(unsigned int w) { return fb_h2f((fb_half)(w >> 16)); }
__device__ __forceinline__ unsigned int fb_pack2(float lo, float hi) {
    return (unsigned int)fb_f2h(lo) | ((unsigned int)fb_f2h(hi) << 16);
}

__device__ __forceinline__ void fb_ld8(const float* p, i64 i, float v[8]) {
    const fb_u4* q = reinterpret_cast<const fb_u4*>(p + i);
    fb_u4 a = q[0], b = q[1];
    v[0] = __uint_as_float(a.x), v[1] = __uint_as_float(a.y);
    v[2] = __uint_as_float(a.z), v[3] = __uint_as_float(a.w);
    v[4] = __uint_as_float(b.x), v[5] = __uint_as_float(b.y);
    v[6] = __uint_as_float(b.z), v[7] = __uint_as_float(b.w);
}
__device__ __forceinline__ void fb_ld8(const fb_half* p, i64 i, float v[8]) {
    fb_u4 a = *reinterpret_cast<const fb_u4*>(p + i);
    v[0] = fb_lo_h2f(a.x), v[1] = fb_hi_h2f(a.x), v[2] = fb_lo_h2f(a.y), v[3] = fb_hi_h2f(a.y);
    v[4] = fb_lo_h2f(a.z), v[5] = fb_hi_h2f(a.z), v[6] = fb_lo_h2f(a.w), v[7] = fb_hi_h2f(a.w);
}
__device__ __forceinline__ void fb_st8(float* p, i64 i, const float v[8]) {
    fb_u4* q = reinterpret_cast<fb_u4*>(p + i);
    q[0] = fb_u4{__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3])};
    q[1] = fb_u4{__float_as_uint(v[4]), __float_as_uint(v[5]), __float_as_uint(v[6]), __float_as_uint(v[7])};
}
__device__ __forceinline__ void fb_st8(fb_half* p, i64 i, const float v[8]) {
    *reinterpret_cast<fb_u4*>(p + i) =
        fb_u4{fb_pack2(v[0], v[1]), fb_pack2(v[2], v[3]), fb_pack2(v[4], v[5]), fb_pack2(v[6], v[7])};
}

// Load / store the chunk of `m` (1..8) elements at i: vector when `vec` and m == 8,
// scalar otherwise; lanes >= m read as 0 and are not stored.
template <class T>
__device__ __forceinline__ void fb_ldv(const T* p, i64 i, int m, bool vec, float v[8]) {
    if (vec && m == FB_VEC) {
        fb_ld8(p, i, v);
    } else {
#pragma unroll
        for (int k = 0; k < FB_VEC; ++k) v[k] = k < m ? fb_ld(p, i + k) : 0.0f;
    }
}
template <class T>
__device__ __forceinline__ void fb_stv(T* p, i64 i, int m, bool vec, const float v[8]) {
    if (vec && m == FB_VEC) {
        fb_st8(p, i, v);
    } else {
#pragma unroll
        for (int k = 0; k < FB_VEC; ++k)
            if (k < m) fb_st(p, i + k, v[k]);
    }
}

// Grid-stride over 8-element chunks: `c` is the chunk's first element index; the chunk
// holds fb_chunk_len(c, n) elements. Launch with about n / 8 threads.
#define FB_CHUNK_STRIDE(c, n)                                                                \
    for (i64 c = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * FB_VEC; c < (n);            \
         c += (i64)gridDim.x * blockDim.x * FB_VEC)
__device__ __forceinline__ int fb_chunk_len(i64 c, i64 n) {
    return n - c < FB_VEC ? (int)(n - c) : FB_VEC;
}

// Instantiate an extern "C" entry point for each storage type: NAME_f32 and NAME_f16.
#define FB_BOTH(MACRO) MACRO(f32, float) MACRO(f16, fb_half)
