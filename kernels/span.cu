// QA span search (inference only): per window, softmax over start and end logits, then
// the top-k spans start <= end < start + max_len by p_start * p_end.
//
// Why it is built this way: HF's run_qa post-processing copies [windows, seq] logits to
// the host and loops over n_best x n_best pairs in Python. Here one block per window
// scores every legal pair on the device (seq x max_len, ~12k pairs at 384 x 30), each
// thread keeps its own sorted top-k in registers/local memory, and k rounds of a block
// argmax merge them; only rows x k candidates (16 bytes each) go back to the host.
// Positions with allowed = 0 are excluded from the softmax, except position 0 (CLS),
// which stays in the denominator as in the contract of BackendStorage::span_search.
#include "common.cuh"

#define FB_SPAN_MAX_K 32
#define FB_SPAN_THREADS 128

__device__ __forceinline__ bool fb_in_softmax(const int* allowed, i64 c) {
    return c == 0 || allowed[c] != 0;
}

#define FB_SPAN(S, T)                                                                         \
    extern "C" __global__ void __launch_bounds__(FB_SPAN_THREADS)                             \
    fb_span_search_##S(int* out_start, int* out_end, float* out_score, float* out_logit_sum,  \
                       const T* start_logits, const T* end_logits, const int* allowed,        \
                       i64 rows, i64 cols, int max_len, int top_k) {                          \
        __shared__ float scratch[32];                                                         \
        __shared__ float wbest[32];                                                           \
        __shared__ int wtid[32];                                                              \
        i64 r = blockIdx.x;                                                                   \
        const T* sl = start_logits + r * cols;                                                \
        const T* el = end_logits + r * cols;                                                  \
        const int* al = allowed + r * cols;                                                   \
        float ms = -fb_inf(), me = -fb_inf();                                                 \
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x)                                  \
            if (fb_in_softmax(al, c)) {                                                       \
                ms = fmaxf(ms, fb_ld(sl, c));                                                 \
                me = fmaxf(me, fb_ld(el, c));                                                 \
            }                                                                                 \
        ms = fb_block_max(ms, scratch);                                                       \
        me = fb_block_max(me, scratch);                                                       \
        float zs = 0.0f, ze = 0.0f;                                                           \
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x)                                  \
            if (fb_in_softmax(al, c)) {                                                       \
                zs += expf(fb_ld(sl, c) - ms);                                                \
                ze += expf(fb_ld(el, c) - me);                                                \
            }                                                                                 \
        zs = fb_block_sum(zs, scratch);                                                       \
        ze = fb_block_sum(ze, scratch);                                                       \
        float bs[FB_SPAN_MAX_K];                                                              \
        int bp[FB_SPAN_MAX_K];                                                                \
        int cnt = 0;                                                                          \
        for (i64 s = threadIdx.x; s < cols; s += blockDim.x) {                                \
            if (al[s] == 0) continue;                                                         \
            float ps = expf(fb_ld(sl, s) - ms) / zs;                                          \
            i64 e_end = s + max_len < cols ? s + max_len : cols;                              \
            for (i64 e = s; e < e_end; ++e) {                                                 \
                if (al[e] == 0) continue;                                                     \
                float sc = ps * (expf(fb_ld(el, e) - me) / ze);                               \
                if (cnt == top_k && !(sc > bs[cnt - 1])) continue;                            \
                int pos = cnt < top_k ? cnt++ : cnt - 1;                                      \
                while (pos > 0 && bs[pos - 1] < sc) {                                         \
                    bs[pos] = bs[pos - 1];                                                    \
                    bp[pos] = bp[pos - 1];                                                    \
                    --pos;                                                                    \
                }                                                                             \
                bs[pos] = sc;                                                                 \
                bp[pos] = (int)(s * cols + e);                                                \
            }                                                                                 \
        }                                                                                     \
        int head = 0;                                                                         \
        for (int k = 0; k < top_k; ++k) {                                                     \
            float mine = head < cnt ? bs[head] : -1.0f;                                       \
            int who = threadIdx.x;                                                            \
            for (int o = 16; o > 0; o >>= 1) {                                                \
                float ov = __shfl_xor_sync(FB_FULL_MASK, mine, o);                            \
                int ow = __shfl_xor_sync(FB_FULL_MASK, who, o);                               \
                if (ov > mine || (ov == mine && ow < who)) { mine = ov; who = ow; }           \
            }                                                                                 \
            int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;                             \
            if (lane == 0) { wbest[warp] = mine; wtid[warp] = who; }                          \
            __syncthreads();                                                                  \
            if (threadIdx.x == 0) {                                                           \
                float b = wbest[0];                                                           \
                int w0 = wtid[0];                                                             \
                for (int w = 1; w < (int)(blockDim.x >> 5); ++w)                              \
                    if (wbest[w] > b || (wbest[w] == b && wtid[w] < w0)) {                    \
                        b = wbest[w];                                                         \
                        w0 = wtid[w];                                                         \
                    }                                                                         \
                wtid[0] = w0;                                                                 \
                wbest[0] = b;                                                                 \
            }                                                                                 \
            __syncthreads();                                                                  \
            int winner = wtid[0];                                                             \
            float wb = wbest[0];                                                              \
            __syncthreads();                                                                  \
            i64 o = r * top_k + k;                                                            \
            if (wb < 0.0f) {                                                                  \
                if (threadIdx.x == 0) {                                                       \
                    out_start[o] = -1;                                                        \
                    out_end[o] = -1;                                                          \
                    out_score[o] = -1.0f;                                                     \
                    out_logit_sum[o] = 0.0f;                                                  \
                }                                                                             \
            } else if ((int)threadIdx.x == winner) {                                          \
                int packed = bp[head];                                                        \
                int s = packed / (int)cols, e = packed % (int)cols;                           \
                out_start[o] = s;                                                             \
                out_end[o] = e;                                                               \
                out_score[o] = bs[head];                                                      \
                out_logit_sum[o] = fb_ld(sl, s) + fb_ld(el, e);                               \
                ++head;                                                                       \
            }                                                                                 \
        }                                                                                     \
    }
FB_BOTH(FB_SPAN)
