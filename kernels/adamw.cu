// Mixed-precision AdamW (torch.optim.AdamW semantics): fp32 master weights and moments,
// f32 or f16 gradients, an optional f16/f32 working copy written in the same pass.
//
// Why it is built this way: GradScaler's unscale and inf/NaN check live here instead of
// in separate passes over every gradient. A step must change nothing if any scaled
// gradient is non-finite, and a single kernel cannot know that before it writes, so it
// is two launches on one stream: `check` ORs a device flag over the unscaled gradient,
// then `step` reads the flag first and returns without touching memory if it is set.
// The host reads the flag once (4 bytes) to report the skipped step. The update itself
// is torch's order of operations (and the CPU backend's, operation for operation):
// p *= 1 - lr*wd, m = b1*m + (1-b1)*g, v = b2*v + (1-b2)*g^2,
// p -= (lr / bc1) * m / (sqrt(v) * (1 / sqrt(bc2)) + eps).
#include "common.cuh"

#define FB_ADAMW(S, T)                                                                        \
    extern "C" __global__ void fb_adamw_check_##S(const T* g, i64 n, float grad_scale,        \
                                                  int* flag) {                                \
        bool bad = false;                                                                     \
        FB_GRID_STRIDE(i, n) bad |= !fb_finite(fb_ld(g, i) * grad_scale);                     \
        if (__any_sync(FB_FULL_MASK, bad) && (threadIdx.x & 31) == 0) atomicOr(flag, 1);      \
    }                                                                                         \
    /* wkind: 0 = no working copy, 1 = f16 working copy, 2 = f32 working copy. */             \
    /* Scalars come from the host already formed in double and rounded once, as torch */  \
    /* does with Python floats: decay = 1 - lr*wd, ob1 = 1 - beta1, ob2 = 1 - beta2,     */  \
    /* step_size = lr / bc1, inv_bc2 = 1 / sqrt(bc2).                                    */  \
    extern "C" __global__ void fb_adamw_step_##S(float* p, const T* g, float* m, float* v,    \
                                                 void* working, int wkind, i64 n,             \
                                                 float decay, float beta1, float ob1,         \
                                                 float beta2, float ob2, float eps,           \
                                                 float step_size, float inv_bc2,              \
                                                 float grad_scale, const int* flag) {         \
        if (flag && *flag) return; /* null: the caller checked all gradients at once */      \
        FB_GRID_STRIDE(i, n) {                                                                \
            float gi = fb_ld(g, i) * grad_scale;                                              \
            float pi = p[i] * decay;                                                          \
            float mi = beta1 * m[i] + ob1 * gi;                                               \
            float vi = beta2 * v[i] + ob2 * gi * gi;                                          \
            pi -= step_size * mi / (sqrtf(vi) * inv_bc2 + eps);                               \
            p[i] = pi;                                                                        \
            m[i] = mi;                                                                        \
            v[i] = vi;                                                                        \
            if (wkind == 1) fb_st((fb_half*)working, i, pi);                                  \
            else if (wkind == 2) ((float*)working)[i] = pi;                                   \
        }                                                                                     \
    }
FB_BOTH(FB_ADAMW)

// ---- multi-tensor AdamW (apex / torch `_foreach` style) --------------------------------
//
// Why it is built this way: the per-tensor path above costs a sum-of-squares launch, an
// add and a step launch per parameter (~300 launches for DistilBERT's ~100 tensors) plus
// per-tensor host work. Here the tensor list travels by value as a kernel parameter
// (`fb_mt_table`, under the 4 KB parameter limit of every architecture, so no upload and
// no sync), up to FB_MT_MAX tensors per launch. Each tensor is cut into FB_MT_CHUNK-element
// chunks; `chunk_start` is the prefix sum of chunk counts, and each block walks the
// launch's chunks with a grid stride (increasing, so the tensor index only moves forward).
// A step is: `fb_mt_sumsq` per table (one fp32 partial per block, fixed grid, no atomics),
// `fb_mt_finalize` (one block adds all partials in a fixed order, and decides on the
// device: skip on inf/NaN, clip coefficient, effective gradient multiplier), then
// `fb_mt_adamw` per table, which reads that decision first and leaves everything
// untouched on a skipped step. The host reads the 4-float decision once at the end, so
// the GPU runs the norm and the update back to back. The per-element update is the one of
// `fb_adamw_step_*`, operation for operation.
#define FB_MT_MAX 64
#define FB_MT_CHUNK 16384

struct fb_mt_table {
    unsigned long long p[FB_MT_MAX];  // f32 master weights (or the f32 parameter itself)
    unsigned long long g[FB_MT_MAX];  // gradient, f32 or f16 (kind bit 0)
    unsigned long long m[FB_MT_MAX];  // f32 first moment
    unsigned long long v[FB_MT_MAX];  // f32 second moment
    unsigned long long w[FB_MT_MAX];  // working copy (kind bits 1-2: 0 none, 1 f16, 2 f32)
    i64 n[FB_MT_MAX];
    float decay[FB_MT_MAX];         // 1 - lr * weight_decay, formed in double on the host
    int kind[FB_MT_MAX];
    int chunk_start[FB_MT_MAX + 1];  // chunk_start[count] = chunks in this launch
    int count;
    int partial_base;  // where this launch's per-block partials go in the partials buffer
};
static_assert(sizeof(fb_mt_table) == 3856, "fb_mt_table layout must match src/backend/cuda/adamw_multi.rs");

// Tensor holding chunk `c`, searching forward from `t` (chunks are visited in order).
__device__ __forceinline__ int fb_mt_find(const fb_mt_table& tab, int c, int t) {
    while (t + 1 < tab.count && c >= tab.chunk_start[t + 1]) ++t;
    return t;
}

// The tensor of chunk `c` (searching on from tensor `t`) and the chunk's elements [lo, hi).
__device__ __forceinline__ int fb_mt_chunk(const fb_mt_table& tab, int c, int t, i64& lo, i64& hi) {
    t = fb_mt_find(tab, c, t);
    lo = (i64)(c - tab.chunk_start[t]) * FB_MT_CHUNK;
    hi = lo + FB_MT_CHUNK < tab.n[t] ? lo + FB_MT_CHUNK : tab.n[t];
    return t;
}

template <class G>
__device__ __forceinline__ float fb_mt_sq(const G* g, i64 lo, i64 hi) {
    float s = 0.0f;
    for (i64 i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        float x = fb_ld(g, i);
        s += x * x;
    }
    return s;
}

extern "C" __global__ void fb_mt_sumsq(fb_mt_table tab, float* partials) {
    __shared__ float scratch[32];
    float s = 0.0f;
    int total = tab.chunk_start[tab.count];
    int t = 0;
    for (int c = blockIdx.x; c < total; c += gridDim.x) {
        i64 lo, hi;
        t = fb_mt_chunk(tab, c, t, lo, hi);
        if (tab.kind[t] & 1) s += fb_mt_sq((const fb_half*)tab.g[t], lo, hi);
        else s += fb_mt_sq((const float*)tab.g[t], lo, hi);
    }
    s = fb_block_sum(s, scratch);
    if (threadIdx.x == 0) partials[tab.partial_base + blockIdx.x] = s;
}

// out[0] = sum of squares (f32, as the per-tensor path reads it), out[1] = 1 when the
// step is skipped, out[2] = clip coefficient, out[3] = grad_scale * clip rounded to f32.
// The norm and the clip are formed in double from the f32 sum, exactly as the host does
// on the per-tensor path (torch: clip_coef = max_norm / (total_norm + 1e-6), capped at 1).
// err: the device error record (common.cuh fb_report) or NULL; a bad id or target
// recorded earlier in the step skips it too, so the host, which learns of the error only
// at its one read after the update kernels, finds the weights as they were.
extern "C" __global__ void fb_mt_finalize(float* out, const float* partials, int nparts,
                                          double grad_scale, double max_norm, int has_clip,
                                          const int* err) {
    __shared__ float scratch[32];
    float s = 0.0f;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += partials[i];
    s = fb_block_sum(s, scratch);
    if (threadIdx.x == 0) {
        double norm = sqrt((double)s) * grad_scale;
        // NaN fails both comparisons.
        bool skip = !fb_finite(s) || !(norm >= 0.0 && norm <= 1.7976931348623157e308) ||
                    (err != nullptr && err[0] != 0);
        double clip = 1.0;
        if (has_clip && !skip) {
            clip = max_norm / (norm + 1e-6);
            if (clip > 1.0) clip = 1.0;
        }
        out[0] = s;
        out[1] = skip ? 1.0f : 0.0f;
        out[2] = (float)clip;
        out[3] = (float)(grad_scale * clip);
    }
}

template <class G, int W>
__device__ __forceinline__ void fb_mt_update(float* p, const G* g, float* m, float* v, void* w,
                                             i64 lo, i64 hi, float decay, float beta1, float ob1,
                                             float beta2, float ob2, float eps, float step_size,
                                             float inv_bc2, float grad_scale) {
    for (i64 i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        float gi = fb_ld(g, i) * grad_scale;
        float pi = p[i] * decay;
        float mi = beta1 * m[i] + ob1 * gi;
        float vi = beta2 * v[i] + ob2 * gi * gi;
        pi -= step_size * mi / (sqrtf(vi) * inv_bc2 + eps);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
        if (W == 1) fb_st((fb_half*)w, i, pi);
        else if (W == 2) ((float*)w)[i] = pi;
    }
}

extern "C" __global__ void fb_mt_adamw(fb_mt_table tab, const float* decision, float beta1,
                                       float ob1, float beta2, float ob2, float eps,
                                       float step_size, float inv_bc2) {
    if (decision[1] != 0.0f) return;  // inf/NaN somewhere: the step changes nothing
    float gs = decision[3];
    int total = tab.chunk_start[tab.count];
    int t = 0;
    for (int c = blockIdx.x; c < total; c += gridDim.x) {
        i64 lo, hi;
        t = fb_mt_chunk(tab, c, t, lo, hi);
        float* p = (float*)tab.p[t];
        float* m = (float*)tab.m[t];
        float* v = (float*)tab.v[t];
        void* w = (void*)tab.w[t];
        float d = tab.decay[t];
        int k = tab.kind[t];
        bool g16 = k & 1;
        int wk = k >> 1;
#define FB_MT_CALL(G, W)                                                                     \
    fb_mt_update<G, W>(p, (const G*)tab.g[t], m, v, w, lo, hi, d, beta1, ob1, beta2, ob2, eps, \
                       step_size, inv_bc2, gs)
        if (g16) {
            if (wk == 1) FB_MT_CALL(fb_half, 1);
            else if (wk == 2) FB_MT_CALL(fb_half, 2);
            else FB_MT_CALL(fb_half, 0);
        } else {
            if (wk == 1) FB_MT_CALL(float, 1);
            else if (wk == 2) FB_MT_CALL(float, 2);
            else FB_MT_CALL(float, 0);
        }
#undef FB_MT_CALL
    }
}
