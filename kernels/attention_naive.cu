// The simple, always-correct attention path: cuBLAS computes S = q.k^T and the products
// with P, these kernels do the masked/biased/causal softmax in between and its backward.
//
// Why it is built this way: it is the reference the fused flash kernel (attention.cu) is
// checked against on the device and the fallback for shapes that kernel does not take.
// Scores are kept in fp32 ([B, H, Lq, Lk]), one block per query row (up to 1024
// threads, hence __launch_bounds__(1024)), so it is exact to
// fp32 rounding at the price of O(L^2) memory. Masking follows the backend contract: key
// padding mask [B, Lk] (nonzero = keep), causal aligned at the end (j <= i + Lk - Lq),
// additive bias [H, Lq, Lk] broadcast over the batch, scale applied to q.k^T before the
// bias (1/sqrt(d) for BERT, 1 for T5). A row with every key masked gets P = 0 and
// lse = -inf. dbias sums over the batch with fp32 atomics into an fp32 buffer.
#include "common.cuh"

__device__ __forceinline__ bool fb_attn_keep(const int* key_mask, i64 b, i64 i, i64 j, i64 lq,
                                             i64 lk, int causal) {
    if (key_mask && key_mask[b * lk + j] == 0) return false;
    if (causal && j > i + (lk - lq)) return false;
    return true;
}

// Query row `row` of the [B, H, Lq] rows (one block each): its (b, h, i), and its
// scores, row `row` of s [B, H, Lq, Lk].
__device__ __forceinline__ const float* fb_attn_row(const float* s, i64 row, i64 nh, i64 lq,
                                                    i64 lk, i64& b, i64& h, i64& i) {
    i = row % lq;
    h = (row / lq) % nh;
    b = row / (lq * nh);
    return s + row * lk;
}

// The biased score of key j: scale * S + bias (the bias row may be null).
template <class T>
__device__ __forceinline__ float fb_attn_score(const float* sr, const T* br, float scale, i64 j) {
    return scale * sr[j] + (br ? fb_ld(br, j) : 0.0f);
}

// Probability dropout multiplier Z of flat [B, H, Lq, Lk] index `idx` (the same index the
// fused kernel and the CPU reference use): 0 or 1/(1-p); 1 when p = 0. With dropout,
// O = (P*Z).V, so backward uses delta = sum_j P*Z*dP, dS = P*(Z*dP - delta), dV = (P*Z)^T.dO.
__device__ __forceinline__ float fb_attn_drop(float p, unsigned long long key, i64 idx) {
    if (p <= 0.0f) return 1.0f;
    return fb_dropout_keep_k(key, (unsigned long long)idx, p) ? 1.0f / (1.0f - p) : 0.0f;
}

#define FB_ATTN(S, T)                                                                         \
    extern "C" __global__ void __launch_bounds__(1024) fb_attn_softmax_##S(T* p, float* lse, const float* s,          \
                                                   const T* bias, const int* key_mask, i64 nb, \
                                                   i64 nh, i64 lq, i64 lk, float scale,       \
                                                   int causal, float drop_p,                  \
                                                   unsigned long long key) {                 \
        __shared__ float scratch[32];                                                         \
        i64 row = blockIdx.x, b, h, i;                                                        \
        const float* sr = fb_attn_row(s, row, nh, lq, lk, b, h, i);                           \
        const T* br = bias ? bias + (h * lq + i) * lk : (const T*)0;                          \
        float m = -fb_inf();                                                                  \
        for (i64 j = threadIdx.x; j < lk; j += blockDim.x)                                    \
            if (fb_attn_keep(key_mask, b, i, j, lq, lk, causal))                              \
                m = fmaxf(m, fb_attn_score(sr, br, scale, j));                                \
        m = fb_block_max(m, scratch);                                                         \
        float z = 0.0f;                                                                       \
        if (m > -fb_inf())                                                                    \
            for (i64 j = threadIdx.x; j < lk; j += blockDim.x)                                \
                if (fb_attn_keep(key_mask, b, i, j, lq, lk, causal))                          \
                    z += expf(fb_attn_score(sr, br, scale, j) - m);                           \
        z = fb_block_sum(z, scratch);                                                         \
        bool empty = !(m > -fb_inf());                                                        \
        for (i64 j = threadIdx.x; j < lk; j += blockDim.x) {                                  \
            float v = 0.0f;                                                                   \
            if (!empty && fb_attn_keep(key_mask, b, i, j, lq, lk, causal))                    \
                v = expf(fb_attn_score(sr, br, scale, j) - m) / z;                            \
            v *= fb_attn_drop(drop_p, key, row * lk + j);                                    \
            fb_st(p + row * lk, j, v);                                                        \
        }                                                                                     \
        if (threadIdx.x == 0) lse[row] = empty ? -fb_inf() : m + logf(z);                     \
    }                                                                                         \
    /* Given S (fp32), dP = dO.V^T (fp32) and lse: P = exp(scale*S + bias - lse),        */  \
    /* dS = P * (dP - sum_j P*dP). Writes dS and P in T for the GEMMs, and adds dS into   */  \
    /* dbias (fp32 [H, Lq, Lk]) when it is given.                                         */  \
    extern "C" __global__ void __launch_bounds__(1024) fb_attn_softmax_bwd_##S(T* ds, T* p_out, float* dbias,         \
                                                       const float* s, const float* dp,       \
                                                       const float* lse, const T* bias,       \
                                                       const int* key_mask, i64 nb, i64 nh,   \
                                                       i64 lq, i64 lk, float scale,           \
                                                       int causal, float drop_p,              \
                                                       unsigned long long key) {             \
        __shared__ float scratch[32];                                                         \
        i64 row = blockIdx.x, b, h, i;                                                        \
        const float* sr = fb_attn_row(s, row, nh, lq, lk, b, h, i);                           \
        const float* dpr = dp + row * lk;                                                     \
        const T* br = bias ? bias + (h * lq + i) * lk : (const T*)0;                          \
        float l = lse[row];                                                                   \
        bool empty = !(l > -fb_inf());                                                        \
        float d = 0.0f;                                                                       \
        if (!empty)                                                                           \
            for (i64 j = threadIdx.x; j < lk; j += blockDim.x)                                \
                if (fb_attn_keep(key_mask, b, i, j, lq, lk, causal))                          \
                    d += expf(fb_attn_score(sr, br, scale, j) - l) * dpr[j] *                 \
                         fb_attn_drop(drop_p, key, row * lk + j);                            \
        d = fb_block_sum(d, scratch);                                                         \
        for (i64 j = threadIdx.x; j < lk; j += blockDim.x) {                                  \
            float pj = 0.0f;                                                                  \
            if (!empty && fb_attn_keep(key_mask, b, i, j, lq, lk, causal))                    \
                pj = expf(fb_attn_score(sr, br, scale, j) - l);                               \
            float zj = fb_attn_drop(drop_p, key, row * lk + j);                              \
            float g = pj * (zj * dpr[j] - d);                                                 \
            fb_st(ds + row * lk, j, g);                                                       \
            fb_st(p_out + row * lk, j, pj * zj);                                              \
            if (dbias && g != 0.0f) atomicAdd(dbias + (h * lq + i) * lk + j, g);              \
        }                                                                                     \
    }
FB_BOTH(FB_ATTN)
