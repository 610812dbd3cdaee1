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
