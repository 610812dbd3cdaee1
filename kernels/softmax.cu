// Softmax, its backward, log-softmax, fused cross-entropy (forward + backward) and
// argmax over the last dimension.
//
// Why it is built this way: one block per row (up to 1024 threads: __launch_bounds__
// caps registers at 64 under nvcc and NVRTC alike), fp32 max/sum reductions. Cross-entropy
// never writes normalised probabilities: forward saves only the per-row log-sum-exp
// (fp32) and the per-row loss; backward recomputes exp(x - lse) on the fly while it
// writes d logits, so a [tokens, 32k vocab] logits tensor is read twice and written
// once in total. The mean over non-ignored rows is reduced by a single block in a
// fixed order (deterministic), and rows whose target is ignore_index contribute nothing.
#include "common.cuh"

// Max of the row `xr` of `cols` and the sum of exp(x - max) over it, reduced across the
// block (every thread gets both).
template <class T>
__device__ __forceinline__ void fb_row_max_sumexp(const T* xr, i64 cols, float* scratch, float& m,
                                                  float& s) {
    m = -fb_inf();
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, fb_ld(xr, c));
    m = fb_block_max(m, scratch);
    s = 0.0f;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) s += expf(fb_ld(xr, c) - m);
    s = fb_block_sum(s, scratch);
}

#define FB_SM(S, T)                                                                           \
    extern "C" __global__ void __launch_bounds__(1024) fb_softmax_fwd_##S(T* y, const T* x, i64 rows, i64 cols,       \
                                                  int log_out) {                              \
        __shared__ float scratch[32];                                                         \
        i64 r = blockIdx.x;                                                                   \
        const T* xr = x + r * cols;                                                           \
        float m, s;                                                                           \
        fb_row_max_sumexp(xr, cols, scratch, m, s);                                           \
        float ls = logf(s);                                                                   \
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {                                \
            float v = fb_ld(xr, c) - m;                                                       \
            fb_st(y + r * cols, c, log_out ? v - ls : expf(v) / s);                           \
        }                                                                                     \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(1024) fb_softmax_bwd_##S(T* dx, const T* y, const T* dy, i64 rows,   \
                                                  i64 cols) {                                 \
        __shared__ float scratch[32];                                                         \
        i64 r = blockIdx.x;                                                                   \
        const T* yr = y + r * cols;                                                           \
        const T* dyr = dy + r * cols;                                                         \
        float d = 0.0f;                                                                       \
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) d += fb_ld(yr, c) * fb_ld(dyr, c); \
        d = fb_block_sum(d, scratch);                                                         \
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x)                                  \
            fb_st(dx + r * cols, c, fb_ld(yr, c) * (fb_ld(dyr, c) - d));                      \
    }                                                                                         \
    /* Per row: lse and loss = lse - x[target] (0 for ignored rows). */                       \
    extern "C" __global__ void __launch_bounds__(1024) fb_ce_fwd_##S(float* row_loss, float* lse_out, const T* x,     \
                                             const int* targets, i64 rows, i64 cols,          \
                                             int ignore_index, int* bad_target) {             \
        __shared__ float scratch[32];                                                         \
        i64 r = blockIdx.x;                                                                   \
        const T* xr = x + r * cols;                                                           \
        float m, s;                                                                           \
        fb_row_max_sumexp(xr, cols, scratch, m, s);                                           \
        if (threadIdx.x == 0) {                                                               \
            float lse = m + logf(s);                                                          \
            lse_out[r] = lse;                                                                 \
            int t = targets[r];                                                               \
            float l = 0.0f;                                                                   \
            if (t != ignore_index) {                                                          \
                if (t < 0 || (i64)t >= cols) {                                                \
                    fb_report(bad_target, FB_ERR_CROSS_ENTROPY, t, cols, ignore_index);       \
                } else {                                                                      \
                    l = lse - fb_ld(xr, t);                                                   \
                }                                                                             \
            }                                                                                 \
            row_loss[r] = l;                                                                  \
        }                                                                                     \
    }                                                                                         \
    /* Mean over non-ignored rows, one block, fixed order. count_out gets the count. */       \
    extern "C" __global__ void __launch_bounds__(1024) fb_ce_mean_##S(float* loss, float* count_out, const float* row_loss, \
                                              const int* targets, i64 rows, int ignore_index) { \
        __shared__ float scratch[32];                                                         \
        float s = 0.0f, n = 0.0f;                                                             \
        for (i64 r = threadIdx.x; r < rows; r += blockDim.x) {                                \
            if (targets[r] != ignore_index) {                                                 \
                s += row_loss[r];                                                             \
                n += 1.0f;                                                                    \
            }                                                                                 \
        }                                                                                     \
        s = fb_block_sum(s, scratch);                                                         \
        n = fb_block_sum(n, scratch);                                                         \
        if (threadIdx.x == 0) {                                                               \
            loss[0] = n > 0.0f ? s / n : 0.0f;                                                \
            count_out[0] = n;                                                                 \
        }                                                                                     \
    }                                                                                         \
    /* d logits = dloss / count * (softmax(x) - onehot(target)); ignored rows get 0. */       \
    extern "C" __global__ void __launch_bounds__(1024) fb_ce_bwd_##S(T* dx, const T* x, const int* targets,           \
                                             const float* lse, const float* dloss,            \
                                             const float* count, i64 rows, i64 cols,          \
                                             int ignore_index) {                              \
        i64 r = blockIdx.x;                                                                   \
        int t = targets[r];                                                                   \
        float n = count[0];                                                                   \
        bool skip = (t == ignore_index) || n <= 0.0f;                                         \
        float g = skip ? 0.0f : dloss[0] / n;                                                 \
        float l = lse[r];                                                                     \
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {                                \
            float p = skip ? 0.0f : expf(fb_ld(x, r * cols + c) - l);                         \
            fb_st(dx + r * cols, c, g * (p - (c == (i64)t ? 1.0f : 0.0f)));                   \
        }                                                                                     \
    }                                                                                         \
    /* First index of the maximum (NaN counts as the maximum, like torch.argmax). */          \
    extern "C" __global__ void __launch_bounds__(1024) fb_argmax_##S(int* out, const T* x, i64 rows, i64 cols) {      \
        __shared__ float sv[32];                                                              \
        __shared__ long long si[32];                                                          \
        i64 r = blockIdx.x;                                                                   \
        float best = -fb_inf();                                                               \
        long long bi = -1;                                                                    \
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {                                \
            float v = fb_ld(x, r * cols + c);                                                 \
            bool better = (bi < 0) || (v > best) || (v != v && best == best);                 \
            if (better) { best = v; bi = c; }                                                 \
        }                                                                                     \
        for (int o = 16; o > 0; o >>= 1) {                                                    \
            float ov = __shfl_xor_sync(FB_FULL_MASK, best, o);                                \
            long long oi = __shfl_xor_sync(FB_FULL_MASK, bi, o);                              \
            bool take = (oi >= 0) && (bi < 0 || (ov != ov && best == best) ||                 \
                                      (!(best != best) && ov > best) ||                       \
                                      ((ov == best || (ov != ov && best != best)) && oi < bi)); \
            if (take) { best = ov; bi = oi; }                                                 \
        }                                                                                     \
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;                                 \
        if (lane == 0) { sv[warp] = best; si[warp] = bi; }                                    \
        __syncthreads();                                                                      \
        if (threadIdx.x == 0) {                                                               \
            float b = sv[0];                                                                  \
            long long i0 = si[0];                                                             \
            for (int w = 1; w < (int)(blockDim.x >> 5); ++w) {                                \
                float ov = sv[w];                                                             \
                long long oi = si[w];                                                         \
                bool take = (oi >= 0) && (i0 < 0 || (ov != ov && b == b) ||                   \
                                          (!(b != b) && ov > b) ||                            \
                                          ((ov == b || (ov != ov && b != b)) && oi < i0));    \
                if (take) { b = ov; i0 = oi; }                                                \
            }                                                                                 \
            out[r] = (int)(i0 < 0 ? 0 : i0);                                                  \
        }                                                                                     \
    }
FB_BOTH(FB_SM)
