// LayerNorm (BERT, DistilBERT) and RMSNorm (T5), forward and backward, and the fused
// "dropout + residual add + LayerNorm" of a post-norm encoder layer.
//
// Why it is built this way: one block per row; rows are at most a few thousand wide, so
// the row is read from global memory (it stays in L1/L2) in a few passes rather than
// staged in shared memory; that keeps one kernel correct for any width. Each thread walks
// 8-element chunks (common.cuh: one 16-byte load per chunk when the row width is a
// multiple of 8 and every pointer is 16-byte aligned, scalar loads otherwise; the host
// launches about cols / 8 threads per row). The mean and variance use two passes (mean
// first, then squared deviations) in fp32: no catastrophic cancellation on f16
// activations. mean/rstd are saved in fp32 for backward. dgamma/dbeta are column
// reductions over all rows: per-chunk partials then a fixed-order finish (no atomics),
// like sum_rows.
//
// The fused op (DistilBERT/BERT: LN(dropout(sublayer) + residual)) reads the sublayer
// output and the residual once and writes the sum s (LayerNorm's saved input) and y: the
// unfused dropout, add and LayerNorm launches moved those tensors through DRAM three
// times. Backward writes ds (the residual's gradient) and, with dropout, the sublayer's
// gradient keep * ds / (1 - p) in the same pass. Every intermediate is rounded to the
// storage type exactly where the unfused ops stored it, so the fused results equal
// dropout -> add -> layer_norm (and their backward) bit for bit, and the dropout mask is
// the same function of (dropout key, element index).
#include "common.cuh"

#define FB_NORM_COLS_X 32
#define FB_NORM_COLS_Y 8


// The value a store of `v` into T would hold.
__device__ __forceinline__ float fb_round(const float*, float v) { return v; }
__device__ __forceinline__ float fb_round(const fb_half*, float v) { return fb_h2f(fb_f2h(v)); }

// Row r of y = LN(s) with s = x (a == nullptr) or s = dropout(a) + x, stored to s_out.
// RMSNorm is the same row without the mean (mean_out == nullptr) and without beta.
template <class T>
__device__ __forceinline__ void fb_ln_fwd_row(T* y, T* s_out, float* mean_out, float* rstd_out,
                                              const T* x, const T* a, const T* gamma,
                                              const T* beta, i64 r, i64 cols, float eps,
                                              float p, float scale, unsigned long long key) {
    __shared__ float scratch[32];
    const i64 o = r * cols;
    const bool centered = mean_out != nullptr;  // LayerNorm; RMSNorm has no mean
    bool vec = cols % FB_VEC == 0 && fb_al16(x) && fb_al16(y) && fb_al16(gamma);
    if (beta) vec = vec && fb_al16(beta);
    if (a) vec = vec && fb_al16(a) && fb_al16(s_out);
    const T* src = a ? s_out : x;  // what passes 2 and 3 read
    float sum = 0.0f;
    for (i64 c = threadIdx.x * FB_VEC; (centered || a) && c < cols; c += (i64)blockDim.x * FB_VEC) {
        int m = fb_chunk_len(c, cols);
        float v[FB_VEC];
        fb_ldv(x, o + c, m, vec, v);
        if (a) {
            float d[FB_VEC];
            fb_ldv(a, o + c, m, vec, d);
#pragma unroll
            for (int k = 0; k < FB_VEC; ++k) {
                float dk = d[k];
                if (p > 0.0f)
                    dk = fb_dropout_keep_k(key, (unsigned long long)(o + c + k), p) ? fb_round(y, dk * scale) : 0.0f;
                v[k] = fb_round(y, dk + v[k]);
            }
            fb_stv(s_out, o + c, m, vec, v);
        }
#pragma unroll
        for (int k = 0; k < FB_VEC; ++k) sum += k < m ? v[k] : 0.0f;
    }
    const float mean = centered ? fb_block_sum(sum, scratch) / (float)cols : 0.0f;
    float q = 0.0f;
    for (i64 c = threadIdx.x * FB_VEC; c < cols; c += (i64)blockDim.x * FB_VEC) {
        int m = fb_chunk_len(c, cols);
        float v[FB_VEC];
        fb_ldv(src, o + c, m, vec, v);
#pragma unroll
        for (int k = 0; k < FB_VEC; ++k) {
            float d = v[k] - mean;
            q += k < m ? d * d : 0.0f;
        }
    }
    float rstd = rsqrtf(fb_block_sum(q, scratch) / (float)cols + eps);
    for (i64 c = threadIdx.x * FB_VEC; c < cols; c += (i64)blockDim.x * FB_VEC) {
        int m = fb_chunk_len(c, cols);
        float v[FB_VEC], g[FB_VEC], b[FB_VEC] = {};
        fb_ldv(src, o + c, m, vec, v);
        fb_ldv(gamma, c, m, vec, g);
        if (beta) fb_ldv(beta, c, m, vec, b);
#pragma unroll
        for (int k = 0; k < FB_VEC; ++k) v[k] = (v[k] - mean) * rstd * g[k] + b[k];
        fb_stv(y, o + c, m, vec, v);
    }
    if (threadIdx.x == 0) {
        if (centered) mean_out[r] = mean;
        rstd_out[r] = rstd;
    }
}

// Chunk c of row offset o: x and dy of the row, gamma of the columns; returns its length.
template <class T>
__device__ __forceinline__ int fb_ld_bwd_chunk(const T* x, const T* dy, const T* gamma, i64 o,
                                               i64 c, i64 cols, bool vec, float xv[FB_VEC],
                                               float d[FB_VEC], float g[FB_VEC]) {
    const int m = fb_chunk_len(c, cols);
    fb_ldv(x, o + c, m, vec, xv);
    fb_ldv(dy, o + c, m, vec, d);
    fb_ldv(gamma, c, m, vec, g);
    return m;
}

// Row r of LayerNorm's dx (stored to dx) and, if da != nullptr, dropout's backward of it.
// RMSNorm's dx is the same row with mean == nullptr: no mean, and no mean(dy * gamma) term.
template <class T>
__device__ __forceinline__ void fb_ln_bwd_row(T* dx, T* da, const T* x, const T* gamma,
                                              const float* mean, const float* rstd, const T* dy,
                                              i64 r, i64 cols, float p, float scale,
                                              unsigned long long key) {
    __shared__ float scratch[32];
    const i64 o = r * cols;
    bool vec = cols % FB_VEC == 0 && fb_al16(dx) && fb_al16(x) && fb_al16(gamma) && fb_al16(dy);
    if (da) vec = vec && fb_al16(da);
    const float mu = mean ? mean[r] : 0.0f, rs = rstd[r];
    float a = 0.0f, b = 0.0f;
    for (i64 c = threadIdx.x * FB_VEC; c < cols; c += (i64)blockDim.x * FB_VEC) {
        float xv[FB_VEC], d[FB_VEC], g[FB_VEC];
        fb_ld_bwd_chunk(x, dy, gamma, o, c, cols, vec, xv, d, g);
#pragma unroll
        for (int k = 0; k < FB_VEC; ++k) {
            float gk = d[k] * g[k];  // lanes >= m are 0
            a += gk;
            b += gk * (xv[k] - mu) * rs;
        }
    }
    const float c1 = mean ? fb_block_sum(a, scratch) / (float)cols : 0.0f;
    const float c2 = fb_block_sum(b, scratch) / (float)cols;
    for (i64 c = threadIdx.x * FB_VEC; c < cols; c += (i64)blockDim.x * FB_VEC) {
        float xv[FB_VEC], d[FB_VEC], g[FB_VEC];
        const int m = fb_ld_bwd_chunk(x, dy, gamma, o, c, cols, vec, xv, d, g);
#pragma unroll
        for (int k = 0; k < FB_VEC; ++k) xv[k] = rs * (d[k] * g[k] - c1 - (xv[k] - mu) * rs * c2);
        fb_stv(dx, o + c, m, vec, xv);
        if (da) {
#pragma unroll
            for (int k = 0; k < FB_VEC; ++k)
                xv[k] = fb_dropout_keep_k(key, (unsigned long long)(o + c + k), p) ? fb_round(dx, xv[k]) * scale : 0.0f;
            fb_stv(da, o + c, m, vec, xv);
        }
    }
}

#define FB_NORM(S, T)                                                                         \
    extern "C" __global__ void __launch_bounds__(1024) fb_layer_norm_fwd_##S(                  \
        T* y, float* mean_out, float* rstd_out, const T* x, const T* gamma, const T* beta,   \
        i64 rows, i64 cols, float eps) {                                                      \
        fb_ln_fwd_row<T>(y, nullptr, mean_out, rstd_out, x, nullptr, gamma, beta, blockIdx.x, \
                         cols, eps, 0.0f, 1.0f, 0ull);                                        \
    }                                                                                         \
    /* y = LN(s), s = dropout(a, p, key) + res (p = 0: a + res); s is stored too. */         \
    extern "C" __global__ void __launch_bounds__(1024) fb_add_layer_norm_fwd_##S(              \
        T* y, T* s, float* mean_out, float* rstd_out, const T* a, const T* res,              \
        const T* gamma, const T* beta, i64 rows, i64 cols, float eps, float p, float scale,   \
        unsigned long long key) {                                                             \
        fb_ln_fwd_row<T>(y, s, mean_out, rstd_out, res, a, gamma, beta, blockIdx.x, cols,     \
                         eps, p, scale, key);                                                \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(1024) fb_layer_norm_bwd_##S(                  \
        T* dx, const T* x, const T* gamma, const float* mean, const float* rstd, const T* dy, \
        i64 rows, i64 cols) {                                                                 \
        fb_ln_bwd_row<T>(dx, nullptr, x, gamma, mean, rstd, dy, blockIdx.x, cols, 0.0f, 1.0f, \
                         0ull);                                                               \
    }                                                                                         \
    /* ds = LayerNorm's dx; da = dropout backward of ds (keep * ds * scale). p > 0. */        \
    extern "C" __global__ void __launch_bounds__(1024) fb_add_layer_norm_bwd_##S(              \
        T* ds, T* da, const T* s, const T* gamma, const float* mean, const float* rstd,       \
        const T* dy, i64 rows, i64 cols, float p, float scale, unsigned long long key) {      \
        fb_ln_bwd_row<T>(ds, da, s, gamma, mean, rstd, dy, blockIdx.x, cols, p, scale, key);  \
    }                                                                                         \
    /* dgamma[c] = sum_r dy * xhat ; dbeta[c] = sum_r dy, over rows [blockIdx.y*chunk,    */  \
    /* +chunk) into float partials [chunks, cols] (pb may be null: RMSNorm); reduce.cu's    */  \
    /* fb_col_finish adds the chunks in order. For RMSNorm pass mean = null.                */  \
    extern "C" __global__ void __launch_bounds__(1024) fb_norm_dgamma_##S(float* pg, float* pb, const T* x,          \
                                                  const float* mean, const float* rstd,       \
                                                  const T* dy, i64 rows, i64 cols, i64 chunk) { \
        __shared__ float accg[FB_NORM_COLS_Y][FB_NORM_COLS_X + 1];                            \
        __shared__ float accb[FB_NORM_COLS_Y][FB_NORM_COLS_X + 1];                            \
        i64 c = (i64)blockIdx.x * FB_NORM_COLS_X + threadIdx.x;                               \
        i64 r0 = (i64)blockIdx.y * chunk;                                                     \
        i64 r1 = r0 + chunk < rows ? r0 + chunk : rows;                                       \
        float sg = 0.0f, sb = 0.0f;                                                           \
        if (c < cols)                                                                         \
            for (i64 r = r0 + threadIdx.y; r < r1; r += FB_NORM_COLS_Y) {                     \
                float d = fb_ld(dy, r * cols + c);                                            \
                float mu = mean ? mean[r] : 0.0f;                                             \
                sg += d * (fb_ld(x, r * cols + c) - mu) * rstd[r];                            \
                sb += d;                                                                      \
            }                                                                                 \
        accg[threadIdx.y][threadIdx.x] = sg;                                                  \
        accb[threadIdx.y][threadIdx.x] = sb;                                                  \
        __syncthreads();                                                                      \
        if (threadIdx.y == 0 && c < cols) {                                                   \
            float tg = 0.0f, tb = 0.0f;                                                       \
            for (int k = 0; k < FB_NORM_COLS_Y; ++k) {                                        \
                tg += accg[k][threadIdx.x];                                                   \
                tb += accb[k][threadIdx.x];                                                   \
            }                                                                                 \
            pg[(i64)blockIdx.y * cols + c] = tg;                                              \
            if (pb) pb[(i64)blockIdx.y * cols + c] = tb;                                      \
        }                                                                                     \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(1024) fb_rms_norm_fwd_##S(                    \
        T* y, float* rstd_out, const T* x, const T* gamma, i64 rows, i64 cols, float eps) {   \
        fb_ln_fwd_row<T>(y, nullptr, nullptr, rstd_out, x, nullptr, gamma, nullptr,          \
                         blockIdx.x, cols, eps, 0.0f, 1.0f, 0ull);                            \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(1024) fb_rms_norm_bwd_##S(                    \
        T* dx, const T* x, const T* gamma, const float* rstd, const T* dy, i64 rows,          \
        i64 cols) {                                                                           \
        fb_ln_bwd_row<T>(dx, nullptr, x, gamma, nullptr, rstd, dy, blockIdx.x, cols, 0.0f,    \
                         1.0f, 0ull);                                                         \
    }
FB_BOTH(FB_NORM)
