// Data movement: permute (rank <= 4), narrow (slice along one dim) and the copy-in that
// cat is built from.
//
// Why it is built this way: these are pure copies, so they are typed by element width
// (32-bit for f32/i32, 16-bit for f16), not by dtype. Every shape is first collapsed on
// the host: permute to exactly 4 dims (leading 1s), narrow and cat to [outer, mid,
// inner], so one kernel per width covers every rank and dim. Indices are 64-bit: a
// [tokens, vocab] tensor passes 2^31 elements.
#include "common.cuh"

// Narrow and cat copy between a compact [outer, mid, inner] tensor and the slice
// [:, offset : offset + mid, :] of a wider [outer, wide_mid, inner] one: the wide
// tensor's index of the compact one's flat index i.
__device__ __forceinline__ i64 fb_wide_index(i64 i, i64 mid, i64 inner, i64 wide_mid, i64 offset) {
    i64 k = i % inner;
    i64 t = i / inner;
    i64 m = t % mid;
    i64 o = t / mid;
    return (o * wide_mid + m + offset) * inner + k;
}

#define FB_LAYOUT(S, W)                                                                       \
    /* out dims o0..o3 (row-major); s0..s3 = input strides of the input dim that feeds   */   \
    /* each output dim.                                                                  */   \
    extern "C" __global__ void fb_permute_##S(W* out, const W* in, i64 o0, i64 o1, i64 o2,    \
                                              i64 o3, i64 s0, i64 s1, i64 s2, i64 s3) {       \
        i64 n = o0 * o1 * o2 * o3;                                                            \
        FB_GRID_STRIDE(i, n) {                                                                \
            i64 t = i;                                                                        \
            i64 i3 = t % o3; t /= o3;                                                         \
            i64 i2 = t % o2; t /= o2;                                                         \
            i64 i1 = t % o1; t /= o1;                                                         \
            out[i] = in[t * s0 + i1 * s1 + i2 * s2 + i3 * s3];                                \
        }                                                                                     \
    }                                                                                         \
    /* out[o, m, k] = in[o, m + start, k], out mid = out_mid, in mid = in_mid. */             \
    extern "C" __global__ void fb_narrow_##S(W* out, const W* in, i64 outer, i64 in_mid,      \
                                             i64 out_mid, i64 inner, i64 start) {             \
        i64 n = outer * out_mid * inner;                                                      \
        FB_GRID_STRIDE(i, n) out[i] = in[fb_wide_index(i, out_mid, inner, in_mid, start)];    \
    }                                                                                         \
    /* out[o, m + offset, k] = in[o, m, k]: one part of a cat. */                             \
    extern "C" __global__ void fb_place_##S(W* out, const W* in, i64 outer, i64 out_mid,      \
                                            i64 in_mid, i64 inner, i64 offset) {              \
        i64 n = outer * in_mid * inner;                                                       \
        FB_GRID_STRIDE(i, n) {                                                                \
            i64 j = fb_wide_index(i, in_mid, inner, out_mid, offset);                         \
            out[j] = in[i];                                                                   \
        }                                                                                     \
    }
FB_LAYOUT(b32, unsigned int)
FB_LAYOUT(b16, unsigned short)
