// Reductions: column sums (the bias gradient), sum of all elements, sum of squares.
//
// Why it is built this way: results must not depend on launch timing, so there are no
// float atomics here. Column sums give each block 32 adjacent columns (coalesced reads
// across a warp) and 8 row lanes, then fold the 8 lanes in shared memory. Whole-buffer
// sums run in two launches: a fixed grid writes one fp32 partial per block, then a
// single block adds the partials in a fixed order. Everything accumulates in fp32.
#include "common.cuh"

#define FB_COLS_X 32
#define FB_COLS_Y 8

#define FB_RED(S, T)                                                                          \
    /* Column sums of rows [blockIdx.y*chunk, +chunk) into float part[blockIdx.y, cols];  */  \
    /* fb_col_finish adds the chunks in order. Two stages so a [12288, 768] bias grad     */  \
    /* spreads over ~1000 blocks instead of 24 (fixed order: deterministic).              */  \
    extern "C" __global__ void fb_sum_rows_##S(float* part, const T* x, i64 rows, i64 cols,  \
                                               i64 chunk) {                                   \
        __shared__ float acc[FB_COLS_Y][FB_COLS_X + 1];                                       \
        i64 c = (i64)blockIdx.x * FB_COLS_X + threadIdx.x;                                    \
        i64 r0 = (i64)blockIdx.y * chunk;                                                     \
        i64 r1 = r0 + chunk < rows ? r0 + chunk : rows;                                       \
        float s = 0.0f;                                                                       \
        if (c < cols)                                                                         \
            for (i64 r = r0 + threadIdx.y; r < r1; r += FB_COLS_Y) s += fb_ld(x, r * cols + c); \
        acc[threadIdx.y][threadIdx.x] = s;                                                    \
        __syncthreads();                                                                      \
        if (threadIdx.y == 0 && c < cols) {                                                   \
            float t = 0.0f;                                                                   \
            for (int k = 0; k < FB_COLS_Y; ++k) t += acc[k][threadIdx.x];                     \
            part[(i64)blockIdx.y * cols + c] = t;                                             \
        }                                                                                     \
    }                                                                                         \
    extern "C" __global__ void fb_col_finish_##S(T* out, const float* part, i64 chunks,      \
                                                 i64 cols) {                                  \
        FB_GRID_STRIDE(c, cols) {                                                             \
            float t = 0.0f;                                                                   \
            for (i64 k = 0; k < chunks; ++k) t += part[k * cols + c];                         \
            fb_st(out, c, t);                                                                 \
        }                                                                                     \
    }                                                                                         \
    extern "C" __global__ void fb_partial_sum_##S(float* partials, const T* x, i64 n, int square) { \
        __shared__ float scratch[32];                                                         \
        float s = 0.0f;                                                                       \
        FB_GRID_STRIDE(i, n) {                                                                \
            float v = fb_ld(x, i);                                                            \
            s += square ? v * v : v;                                                          \
        }                                                                                     \
        s = fb_block_sum(s, scratch);                                                         \
        if (threadIdx.x == 0) partials[blockIdx.x] = s;                                       \
    }                                                                                         \
    extern "C" __global__ void fb_final_sum_##S(T* out, const float* partials, int nparts) {  \
        __shared__ float scratch[32];                                                         \
        float s = 0.0f;                                                                       \
        for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += partials[i];              \
        s = fb_block_sum(s, scratch);                                                         \
        if (threadIdx.x == 0) fb_st(out, 0, s);                                               \
    }
FB_BOTH(FB_RED)
