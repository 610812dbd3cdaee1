// LayerNorm (BERT, DistilBERT) and RMSNorm (T5), forward and backward.
//
// Why it is built this way: one block per row (up to 1024 threads, hence
// __launch_bounds__(1024): at most 64 registers, whatever compiler builds it); rows are
// at most a few thousand wide, so the row is read from global memory (it stays in
// L1/L2) in a few passes rather than staged in shared memory; that keeps one kernel correct for any width. The mean and
// variance use two passes (mean first, then squared deviations) in fp32: the same
// arithmetic as the CPU reference, no catastrophic cancellation on f16 activations.
// mean/rstd are saved in fp32 for backward. dgamma/dbeta are column reductions over all
// rows: per-chunk partials then a fixed-order finish (no atomics), like sum_rows.
#include "common.cuh"

#define FB_NORM_COLS_X 32
#define FB_NORM_COLS_Y 8

#define FB_NORM(S, T)                                                                         \
    extern "C" __global__ void __launch_bounds__(1024) fb_layer_norm_fwd_##S(T* y, float* mean_out, float* rstd_out,  \
                                                     const T* x, const T* gamma, const T* beta, \
                                                     i64 rows, i64 cols, float eps) {         \
        __shared__ float scratch[32];                                                         \
        i64 r = blockIdx.x;                                                                   \
        const T* xr = x + r * cols;                                                           \
        float s = 0.0f;                                                                       \
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) s += fb_ld(xr, c);               \
        float mean = fb_block_sum(s, scratch) / (float)cols;                                  \
        float q = 0.0f;                                                                       \
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {                                \
            float d = fb_ld(xr, c) - mean;                                                    \
            q += d * d;                                                                       \
        }                                                                                     \
        float rstd = rsqrtf(fb_block_sum(q, scratch) / (float)cols + eps);                    \
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x)                                  \
            fb_st(y + r * cols, c,                                                            \
                  (fb_ld(xr, c) - mean) * rstd * fb_ld(gamma, c) + fb_ld(beta, c));           \
        if (threadIdx.x == 0) {                                                               \
            mean_out[r] = mean;                                                               \
            rstd_out[r] = rstd;                                                               \
        }                                                                                     \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(1024) fb_layer_norm_bwd_##S(T* dx, const T* x, const T* gamma,       \
                                                     const float* mean, const float* rstd,    \
                                                     const T* dy, i64 rows, i64 cols) {       \
        __shared__ float scratch[32];                                                         \
        i64 r = blockIdx.x;                                                                   \
        const T* xr = x + r * cols;                                                           \
        const T* dyr = dy + r * cols;                                                         \
        float mu = mean[r], rs = rstd[r];                                                     \
        float a = 0.0f, b = 0.0f;                                                             \
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {                                \
            float g = fb_ld(dyr, c) * fb_ld(gamma, c);                                        \
            float xh = (fb_ld(xr, c) - mu) * rs;                                              \
            a += g;                                                                           \
            b += g * xh;                                                                      \
        }                                                                                     \
        float c1 = fb_block_sum(a, scratch) / (float)cols;                                    \
        float c2 = fb_block_sum(b, scratch) / (float)cols;                                    \
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {                                \
            float g = fb_ld(dyr, c) * fb_ld(gamma, c);                                        \
            float xh = (fb_ld(xr, c) - mu) * rs;                                              \
            fb_st(dx + r * cols, c, rs * (g - c1 - xh * c2));                                 \
        }                                                                                     \
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
    extern "C" __global__ void __launch_bounds__(1024) fb_rms_norm_fwd_##S(T* y, float* rstd_out, const T* x,         \
                                                   const T* gamma, i64 rows, i64 cols,        \
                                                   float eps) {                               \
        __shared__ float scratch[32];                                                         \
        i64 r = blockIdx.x;                                                                   \
        const T* xr = x + r * cols;                                                           \
        float q = 0.0f;                                                                       \
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {                                \
            float v = fb_ld(xr, c);                                                           \
            q += v * v;                                                                       \
        }                                                                                     \
        float rstd = rsqrtf(fb_block_sum(q, scratch) / (float)cols + eps);                    \
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x)                                  \
            fb_st(y + r * cols, c, fb_ld(xr, c) * rstd * fb_ld(gamma, c));                    \
        if (threadIdx.x == 0) rstd_out[r] = rstd;                                             \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(1024) fb_rms_norm_bwd_##S(T* dx, const T* x, const T* gamma,         \
                                                   const float* rstd, const T* dy, i64 rows,  \
                                                   i64 cols) {                                \
        __shared__ float scratch[32];                                                         \
        i64 r = blockIdx.x;                                                                   \
        const T* xr = x + r * cols;                                                           \
        const T* dyr = dy + r * cols;                                                         \
        float rs = rstd[r];                                                                   \
        float b = 0.0f;                                                                       \
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x)                                  \
            b += fb_ld(dyr, c) * fb_ld(gamma, c) * fb_ld(xr, c) * rs;                         \
        float c2 = fb_block_sum(b, scratch) / (float)cols;                                    \
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {                                \
            float g = fb_ld(dyr, c) * fb_ld(gamma, c);                                        \
            float xh = fb_ld(xr, c) * rs;                                                     \
            fb_st(dx + r * cols, c, rs * (g - xh * c2));                                      \
        }                                                                                     \
    }
FB_BOTH(FB_NORM)
