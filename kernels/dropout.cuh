// The dropout hash: crate::backend::dropout_keep (src/backend/mod.rs), bit for bit (see
// its comment), written once for every kernel file (through common.cuh, and by
// attention.cu) and for the host code that checks them (dev/cuda/: the emulations and
// the attention reference in attn_check/attn_ref.h). Plain 32/64-bit integer arithmetic,
// so one text serves the device and a host compiler.
//
// Kernels take the dropout *key*, not the seed: backend::dropout_key_packed(seed) =
// m | a << 32 (splitmix64 of the seed, odd multiplier m, offset a), computed once on the
// host, so the per-element work is lowbias32(fold32(i) * m + a) in 32-bit arithmetic with
// m and a read from the kernel parameters (no registers, no 64-bit multiply), top 24 bits
// as a uniform in [0, 1), kept when >= p.
#pragma once

#if defined(__CUDACC__)
#define FB_HOST_DEVICE __host__ __device__ __forceinline__
#else  // a host compiler (dev/cuda/): no CUDA qualifiers
#define FB_HOST_DEVICE inline
#endif

FB_HOST_DEVICE bool fb_dropout_keep_k(unsigned long long key, unsigned long long i, float p) {
    unsigned int h = ((unsigned int)i ^ ((unsigned int)(i >> 32) * 0x85EBCA6Bu)) *
                         (unsigned int)key +
                     (unsigned int)(key >> 32);
    h ^= h >> 16;
    h *= 0x7FEB352Du;
    h ^= h >> 15;
    h *= 0x846CA68Bu;
    h ^= h >> 16;
    return (float)(h >> 8) * (1.0f / 16777216.0f) >= p;
}

// backend::dropout_key_packed (for references and checks; kernels get the key).
FB_HOST_DEVICE unsigned long long fb_dropout_key(unsigned long long seed) {
    unsigned long long z = seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return z | 1ull;
}

FB_HOST_DEVICE bool fb_dropout_keep(unsigned long long seed, unsigned long long i, float p) {
    return fb_dropout_keep_k(fb_dropout_key(seed), i, p);
}
