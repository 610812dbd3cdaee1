// Multi-tensor Adafactor (transformers.optimization.Adafactor): fp32 master weights and
// state, f32 or f16 gradients, an optional f16/f32 working copy written in the same pass.
//
// Why it is built this way: Adafactor's update for one tensor needs three reductions
// that depend on each other: the running row and column means of g² (factored tensors:
// the last two dims; leading dims are a batch of matrices), the mean of the rows, and
// the RMS of the update itself, plus the RMS of the parameter for `scale_parameter`.
// Per tensor that would be ~6 launches, ~800 for T5-small; here up to FB_AF_MAX tensors
// travel by value in one kernel parameter (as AdamW's `fb_mt_table`), cut into chunks of
// whole rows (factored) or FB_AF_CHUNK elements, and a step is four launches per table:
//   fb_af_reduce  per chunk: row sums of g²+eps1 (one warp per row) folded into the row
//                 EMA, per-chunk column partials, the parameter's sum of squares; for a
//                 1-D tensor the full second moment and the update's sum of squares;
//   fb_af_finish  per tensor: the column EMA from the partials (a fixed order), the row
//                 means, the step size max(eps2, RMS(p))·rel_step;
//   fb_af_usq     per chunk of a factored tensor: the update's sum of squares;
//   fb_af_update  per chunk: update / max(1, RMS(update)/clip) · lr, the first moment,
//                 weight decay, the parameter and its working copy.
// The global-norm clip and the inf/NaN skip come first from AdamW's `fb_mt_sumsq` and
// `fb_mt_finalize` (kernels/adamw.cu) into the same decision words, so a skipped step
// changes nothing and the host reads once at the end. No atomics: every sum is a fixed
// tree, so a step is deterministic. The update is formed twice (for its RMS, then to
// apply it) rather than stored. Each operation is the CPU backend's
// (src/backend/cpu/adafactor.rs) in the same order.
#include "common.cuh"

#define FB_AF_MAX 32
#define FB_AF_CHUNK 16384

struct fb_af_table {
    unsigned long long p[FB_AF_MAX];  // f32 master weights (or the f32 parameter itself)
    unsigned long long g[FB_AF_MAX];  // gradient, f32 or f16 (kind bit 0)
    unsigned long long w[FB_AF_MAX];  // working copy (kind bits 1-2: 0 none, 1 f16, 2 f32)
    unsigned long long m[FB_AF_MAX];  // exp_avg, or 0 without beta1
    unsigned long long r[FB_AF_MAX];  // exp_avg_sq_row (factored) or exp_avg_sq
    unsigned long long c[FB_AF_MAX];  // exp_avg_sq_col (factored) or 0
    i64 n[FB_AF_MAX];
    i64 col_base[FB_AF_MAX];  // where this tensor's column partials start in the scratch
    int rows[FB_AF_MAX];      // R, the second-to-last dim (factored); 0 for a 1-D tensor
    int cols[FB_AF_MAX];      // C, the last dim (factored)
    int rpc[FB_AF_MAX];       // rows per chunk (factored)
    int rm_base[FB_AF_MAX];   // where this tensor's row means start in the scratch
    int kind[FB_AF_MAX];
    float wd[FB_AF_MAX];
    int chunk_start[FB_AF_MAX + 1];  // chunk_start[count] = chunks in this launch
    int count;
    int report;  // the tensor whose step size goes to decision[4], or -1
    int off_u;   // scratch: [0, off_u) parameter partials, [off_u, off_stat) update partials
    int off_stat;  // scratch: (lr, -wd*lr) per tensor
};
static_assert(sizeof(fb_af_table) == 2968, "fb_af_table layout must match src/backend/cuda/adafactor.rs");

__device__ __forceinline__ int fb_af_find(const fb_af_table& tab, int c, int t) {
    while (t + 1 < tab.count && c >= tab.chunk_start[t + 1]) ++t;
    return t;
}

// A factored chunk: matrix `b`, rows [r0, r1).
struct fb_af_rows {
    i64 b, r0, r1, R, C;
};
__device__ __forceinline__ fb_af_rows fb_af_rows_of(const fb_af_table& tab, int t, int c) {
    fb_af_rows x;
    x.R = tab.rows[t];
    x.C = tab.cols[t];
    i64 cpm = (x.R + tab.rpc[t] - 1) / tab.rpc[t];
    i64 local = c - tab.chunk_start[t];
    x.b = local / cpm;
    x.r0 = (local % cpm) * tab.rpc[t];
    x.r1 = x.r0 + tab.rpc[t] < x.R ? x.r0 + tab.rpc[t] : x.R;
    return x;
}

template <class G>
__device__ __forceinline__ void fb_af_reduce_rows(const fb_af_table& tab, int t, int c, const G* g,
                                                  float gs, float* scratch, float eps1, float beta2t,
                                                  float ob2t) {
    fb_af_rows x = fb_af_rows_of(tab, t, c);
    i64 base = x.b * x.R * x.C;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float* row = (float*)tab.r[t];
    for (i64 rr = x.r0 + warp; rr < x.r1; rr += nw) {
        float s = 0.0f;
        for (i64 j = lane; j < x.C; j += 32) {
            float v = fb_ld(g, base + rr * x.C + j) * gs;
            s += v * v + eps1;
        }
        s = fb_warp_sum(s);
        if (lane == 0) {
            i64 k = x.b * x.R + rr;
            row[k] = beta2t * row[k] + ob2t * (s / (float)x.C);
        }
    }
    float* part = scratch + tab.col_base[t] + (i64)(c - tab.chunk_start[t]) * x.C;
    for (i64 j = threadIdx.x; j < x.C; j += blockDim.x) {
        float s = 0.0f;
        for (i64 rr = x.r0; rr < x.r1; ++rr) {
            float v = fb_ld(g, base + rr * x.C + j) * gs;
            s += v * v + eps1;
        }
        part[j] = s;
    }
}

template <class G>
__device__ __forceinline__ float fb_af_reduce_full(const fb_af_table& tab, int t, int c, const G* g,
                                                   float gs, float eps1, float beta2t, float ob2t) {
    float* v = (float*)tab.r[t];
    i64 lo = (i64)(c - tab.chunk_start[t]) * FB_AF_CHUNK;
    i64 hi = lo + FB_AF_CHUNK < tab.n[t] ? lo + FB_AF_CHUNK : tab.n[t];
    float us = 0.0f;
    for (i64 i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        float x = fb_ld(g, i) * gs;
        float vi = beta2t * v[i] + ob2t * (x * x + eps1);
        v[i] = vi;
        float u = rsqrtf(vi) * x;
        us += u * u;
    }
    return us;
}

// The chunk's element range (factored: its rows of matrix b, whole).
__device__ __forceinline__ void fb_af_range(const fb_af_table& tab, int t, int c, i64& lo, i64& hi) {
    if (tab.rows[t] > 0) {
        fb_af_rows x = fb_af_rows_of(tab, t, c);
        lo = x.b * x.R * x.C + x.r0 * x.C;
        hi = x.b * x.R * x.C + x.r1 * x.C;
    } else {
        lo = (i64)(c - tab.chunk_start[t]) * FB_AF_CHUNK;
        hi = lo + FB_AF_CHUNK < tab.n[t] ? lo + FB_AF_CHUNK : tab.n[t];
    }
}

// Every kernel over chunks starts the same way: nothing on a skipped step, then each
// block walks the table's chunks (grid stride), `t` the tensor of chunk `c`.
#define FB_AF_CHUNKS(c, t)                                 \
    if (decision[1] != 0.0f) return;                       \
    float gs = decision[3];                                \
    int total = tab.chunk_start[tab.count];                \
    int t = 0;                                             \
    for (int c = blockIdx.x; c < total; c += gridDim.x)    \
        if ((t = fb_af_find(tab, c, t)), true)

// decision: fb_mt_finalize's words (decision[1] != 0: skip; decision[3]: the gradient
// multiplier) and decision[4], the reported step size.
extern "C" __global__ void fb_af_reduce(fb_af_table tab, const float* decision, float* scratch,
                                        float eps1, float beta2t, float ob2t) {
    __shared__ float sh[32];
    FB_AF_CHUNKS(c, t) {
        bool g16 = tab.kind[t] & 1;
        float us = 0.0f;
        if (tab.rows[t] > 0) {
            if (g16) fb_af_reduce_rows(tab, t, c, (const fb_half*)tab.g[t], gs, scratch, eps1, beta2t, ob2t);
            else fb_af_reduce_rows(tab, t, c, (const float*)tab.g[t], gs, scratch, eps1, beta2t, ob2t);
        } else {
            if (g16) us = fb_af_reduce_full(tab, t, c, (const fb_half*)tab.g[t], gs, eps1, beta2t, ob2t);
            else us = fb_af_reduce_full(tab, t, c, (const float*)tab.g[t], gs, eps1, beta2t, ob2t);
        }
        i64 lo, hi;
        fb_af_range(tab, t, c, lo, hi);
        const float* p = (const float*)tab.p[t];
        float ps = 0.0f;
        for (i64 i = lo + threadIdx.x; i < hi; i += blockDim.x) ps += p[i] * p[i];
        ps = fb_block_sum(ps, sh);
        us = fb_block_sum(us, sh);
        if (threadIdx.x == 0) {
            scratch[c] = ps;
            if (tab.rows[t] == 0) scratch[tab.off_u + c] = us;
        }
    }
}

// One block per tensor (grid stride): the step size, the column EMA, the row means.
extern "C" __global__ void fb_af_finish(fb_af_table tab, float* decision, float* scratch,
                                        float beta2t, float ob2t, double rel_step, double eps2,
                                        int scale_parameter) {
    __shared__ float sh[32];
    if (decision[1] != 0.0f) return;
    for (int t = blockIdx.x; t < tab.count; t += gridDim.x) {
        float ps = 0.0f;
        for (int k = tab.chunk_start[t] + threadIdx.x; k < tab.chunk_start[t + 1]; k += blockDim.x)
            ps += scratch[k];
        ps = fb_block_sum(ps, sh);
        if (threadIdx.x == 0) {
            // transformers' _get_lr: max(eps2, RMS(p)) * rel_step, in double.
            double scale = 1.0;
            if (scale_parameter) {
                double rms = (double)(float)sqrt((double)ps / (double)tab.n[t]);
                scale = rms > eps2 ? rms : eps2;
            }
            double lr = scale * rel_step;
            scratch[tab.off_stat + 2 * t] = (float)lr;
            scratch[tab.off_stat + 2 * t + 1] = (float)(-(double)tab.wd[t] * lr);
            if (t == tab.report) decision[4] = (float)lr;
        }
        if (tab.rows[t] == 0) continue;
        i64 R = tab.rows[t], C = tab.cols[t];
        i64 cpm = (R + tab.rpc[t] - 1) / tab.rpc[t];
        i64 mats = tab.n[t] / (R * C);
        float* row = (float*)tab.r[t];
        float* col = (float*)tab.c[t];
        for (i64 b = 0; b < mats; ++b) {
            for (i64 j = threadIdx.x; j < C; j += blockDim.x) {
                float s = 0.0f;
                for (i64 q = 0; q < cpm; ++q) s += scratch[tab.col_base[t] + (b * cpm + q) * C + j];
                i64 k = b * C + j;
                col[k] = beta2t * col[k] + ob2t * (s / (float)R);
            }
            float rs = 0.0f;
            for (i64 rr = threadIdx.x; rr < R; rr += blockDim.x) rs += row[b * R + rr];
            rs = fb_block_sum(rs, sh);
            if (threadIdx.x == 0) scratch[tab.rm_base[t] + b] = rs / (float)R;
        }
    }
}

// The unscaled update of the factored chunk's elements, passed to `f(i, u)`:
// rsqrt(row / mean(row)) * rsqrt(col) * g, transformers' _approx_sq_grad times the grad.
template <class G, class F>
__device__ __forceinline__ void fb_af_each_factored(const fb_af_table& tab, int t, int c, const G* g,
                                                    float gs, const float* scratch, F f) {
    fb_af_rows x = fb_af_rows_of(tab, t, c);
    const float* row = (const float*)tab.r[t];
    const float* col = (const float*)tab.c[t];
    float rm = scratch[tab.rm_base[t] + x.b];
    i64 base = x.b * x.R * x.C;
    for (i64 rr = x.r0; rr < x.r1; ++rr) {
        float rf = rsqrtf(row[x.b * x.R + rr] / rm);
        for (i64 j = threadIdx.x; j < x.C; j += blockDim.x) {
            i64 i = base + rr * x.C + j;
            f(i, rf * rsqrtf(col[x.b * x.C + j]) * (fb_ld(g, i) * gs));
        }
    }
}

extern "C" __global__ void fb_af_usq(fb_af_table tab, const float* decision, float* scratch) {
    __shared__ float sh[32];
    FB_AF_CHUNKS(c, t) {
        if (tab.rows[t] == 0) continue;  // 1-D: summed by fb_af_reduce (uniform per block)
        float us = 0.0f;
        auto add = [&](i64, float u) { us += u * u; };
        if (tab.kind[t] & 1) fb_af_each_factored(tab, t, c, (const fb_half*)tab.g[t], gs, scratch, add);
        else fb_af_each_factored(tab, t, c, (const float*)tab.g[t], gs, scratch, add);
        us = fb_block_sum(us, sh);
        if (threadIdx.x == 0) scratch[tab.off_u + c] = us;
    }
}

// p, exp_avg and the working copy from the update u (unscaled) of element i.
struct fb_af_apply {
    float *p, *m;
    void* w;
    int wk;
    float denom, lr, wdm, beta1, ob1;
    bool decay;
    __device__ __forceinline__ void operator()(i64 i, float u) const {
        u = u / denom * lr;
        if (m) {
            float mi = m[i] * beta1 + ob1 * u;
            m[i] = mi;
            u = mi;
        }
        float pi = p[i];
        if (decay) pi += wdm * pi;
        pi -= u;
        p[i] = pi;
        if (wk == 1) fb_st((fb_half*)w, i, pi);
        else if (wk == 2) ((float*)w)[i] = pi;
    }
};

extern "C" __global__ void fb_af_update(fb_af_table tab, const float* decision, const float* scratch,
                                        float clip_threshold, float beta1, float ob1) {
    __shared__ float sh[32];
    FB_AF_CHUNKS(c, t) {
        float us = 0.0f;
        for (int k = tab.chunk_start[t] + threadIdx.x; k < tab.chunk_start[t + 1]; k += blockDim.x)
            us += scratch[tab.off_u + k];
        us = fb_block_sum(us, sh);
        // torch: update.norm(2) / numel**0.5, then / clip_threshold, clamped at 1.
        float rms = sqrtf(us) / (float)sqrt((double)tab.n[t]);
        fb_af_apply a;
        a.p = (float*)tab.p[t];
        a.m = (float*)tab.m[t];
        a.w = (void*)tab.w[t];
        a.wk = tab.kind[t] >> 1;
        a.denom = fmaxf(rms / clip_threshold, 1.0f);
        a.lr = scratch[tab.off_stat + 2 * t];
        a.wdm = scratch[tab.off_stat + 2 * t + 1];
        a.decay = tab.wd[t] != 0.0f;
        a.beta1 = beta1;
        a.ob1 = ob1;
        bool g16 = tab.kind[t] & 1;
        if (tab.rows[t] > 0) {
            if (g16) fb_af_each_factored(tab, t, c, (const fb_half*)tab.g[t], gs, scratch, a);
            else fb_af_each_factored(tab, t, c, (const float*)tab.g[t], gs, scratch, a);
        } else {
            const float* v = (const float*)tab.r[t];
            i64 lo, hi;
            fb_af_range(tab, t, c, lo, hi);
            for (i64 i = lo + threadIdx.x; i < hi; i += blockDim.x) {
                float x = g16 ? fb_ld((const fb_half*)tab.g[t], i) : fb_ld((const float*)tab.g[t], i);
                a(i, rsqrtf(v[i]) * (x * gs));
            }
        }
    }
}
