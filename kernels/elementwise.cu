// Elementwise kernels: binary ops, affine, activations (fwd + bwd), gated activations,
// dropout, bias add, casts, in-place axpy/scale/fill and the non-finite check.
//
// Why it is built this way: these ops are memory-bound, so each is one grid-stride pass
// that reads each input once and writes once, with fp32 math on f32 or f16 storage. The
// op is a runtime switch rather than one kernel per op: the branch is warp-uniform and
// costs nothing next to the memory traffic, and it keeps the entry-point count (and
// the fatbin) small. Activations follow HF exactly: `gelu` is the erf form (BERT,
// DistilBERT), `gelu_new` the tanh approximation (flan-t5). Dropout re-derives its mask
// from (seed, index), so backward is the same kernel on dy.
#include "common.cuh"

// Op codes mirror crate::backend::{BinaryOp, UnaryOp} (see src/backend/cuda/elementwise.rs).
__device__ __forceinline__ float fb_binary_op(float a, float b, int op) {
    switch (op) {
        case 0: return a + b;
        case 1: return a - b;
        case 2: return a * b;
        default: return a / b;
    }
}

#define FB_SQRT_2_OVER_PI 0.7978845608028654f
#define FB_INV_SQRT_2 0.7071067811865476f
#define FB_INV_SQRT_2PI 0.3989422804014327f

__device__ __forceinline__ float fb_unary_fwd(float x, int op) {
    switch (op) {
        case 0: return x > 0.0f ? x : 0.0f;
        case 1: return 0.5f * x * (1.0f + erff(x * FB_INV_SQRT_2));
        case 2: {
            float u = FB_SQRT_2_OVER_PI * (x + 0.044715f * x * x * x);
            return 0.5f * x * (1.0f + tanhf(u));
        }
        case 3: return tanhf(x);
        case 4: return -x;
        case 5: return expf(x);
        default: return x * x;
    }
}

// d f(x) / dx
__device__ __forceinline__ float fb_unary_grad(float x, int op) {
    switch (op) {
        case 0: return x > 0.0f ? 1.0f : 0.0f;
        case 1:
            return 0.5f * (1.0f + erff(x * FB_INV_SQRT_2)) +
                   x * FB_INV_SQRT_2PI * expf(-0.5f * x * x);
        case 2: {
            float u = FB_SQRT_2_OVER_PI * (x + 0.044715f * x * x * x);
            float t = tanhf(u);
            return 0.5f * (1.0f + t) +
                   0.5f * x * (1.0f - t * t) * FB_SQRT_2_OVER_PI * (1.0f + 3.0f * 0.044715f * x * x);
        }
        case 3: {
            float t = tanhf(x);
            return 1.0f - t * t;
        }
        case 4: return -1.0f;
        case 5: return expf(x);
        default: return 2.0f * x;
    }
}

#define FB_EW(S, T)                                                                          \
    extern "C" __global__ void fb_binary_##S(T* out, const T* a, const T* b, i64 n, int op) { \
        FB_GRID_STRIDE(i, n) fb_st(out, i, fb_binary_op(fb_ld(a, i), fb_ld(b, i), op));     \
    }                                                                                        \
    extern "C" __global__ void fb_affine_##S(T* out, const T* x, i64 n, float mul, float add) { \
        FB_GRID_STRIDE(i, n) fb_st(out, i, fb_ld(x, i) * mul + add);                         \
    }                                                                                        \
    extern "C" __global__ void fb_unary_##S(T* out, const T* x, i64 n, int op) {             \
        FB_GRID_STRIDE(i, n) fb_st(out, i, fb_unary_fwd(fb_ld(x, i), op));                   \
    }                                                                                        \
    extern "C" __global__ void fb_unary_bwd_##S(T* dx, const T* x, const T* dy, i64 n, int op) { \
        FB_GRID_STRIDE(i, n) fb_st(dx, i, fb_ld(dy, i) * fb_unary_grad(fb_ld(x, i), op));    \
    }                                                                                        \
    extern "C" __global__ void fb_gated_##S(T* out, const T* gate, const T* lin, i64 n, int op) { \
        FB_GRID_STRIDE(i, n) fb_st(out, i, fb_unary_fwd(fb_ld(gate, i), op) * fb_ld(lin, i)); \
    }                                                                                        \
    extern "C" __global__ void fb_gated_bwd_##S(T* dgate, T* dlin, const T* gate, const T* lin, \
                                                const T* dy, i64 n, int op) {                \
        FB_GRID_STRIDE(i, n) {                                                               \
            float g = fb_ld(gate, i), l = fb_ld(lin, i), d = fb_ld(dy, i);                   \
            fb_st(dgate, i, d * l * fb_unary_grad(g, op));                                   \
            fb_st(dlin, i, d * fb_unary_fwd(g, op));                                         \
        }                                                                                    \
    }                                                                                        \
    extern "C" __global__ void fb_dropout_##S(T* out, const T* x, i64 n, float p, float scale, \
                                              unsigned long long seed) {                     \
        FB_GRID_STRIDE(i, n) {                                                               \
            bool keep = fb_dropout_keep(seed, (unsigned long long)i, p);                     \
            fb_st(out, i, keep ? fb_ld(x, i) * scale : 0.0f);                                \
        }                                                                                    \
    }                                                                                        \
    extern "C" __global__ void fb_add_bias_##S(T* out, const T* x, const T* bias, i64 n,     \
                                               i64 cols) {                                   \
        FB_GRID_STRIDE(i, n) fb_st(out, i, fb_ld(x, i) + fb_ld(bias, i % cols));             \
    }                                                                                        \
    extern "C" __global__ void fb_scale_##S(T* y, i64 n, float alpha) {                      \
        FB_GRID_STRIDE(i, n) fb_st(y, i, fb_ld(y, i) * alpha);                               \
    }                                                                                        \
    extern "C" __global__ void fb_fill_##S(T* y, i64 n, float value) {                       \
        FB_GRID_STRIDE(i, n) fb_st(y, i, value);                                             \
    }                                                                                        \
    extern "C" __global__ void fb_has_non_finite_##S(const T* x, i64 n, int* flag) {         \
        bool bad = false;                                                                    \
        FB_GRID_STRIDE(i, n) bad |= !fb_finite(fb_ld(x, i));                                 \
        if (__any_sync(FB_FULL_MASK, bad) && (threadIdx.x & 31) == 0) atomicOr(flag, 1);     \
    }
FB_BOTH(FB_EW)

// y += alpha * x, for every (y, x) storage pair: f16 gradients accumulate into f32.
#define FB_AXPY(SY, TY, SX, TX)                                                              \
    extern "C" __global__ void fb_axpy_##SY##_##SX(TY* y, const TX* x, i64 n, float alpha) { \
        FB_GRID_STRIDE(i, n) fb_st(y, i, fb_ld(y, i) + alpha * fb_ld(x, i));                 \
    }
FB_AXPY(f32, float, f32, float)
FB_AXPY(f32, float, f16, fb_half)
FB_AXPY(f16, fb_half, f16, fb_half)
FB_AXPY(f16, fb_half, f32, float)

// Casts. f32 -> f16 rounds to nearest even and saturates to inf like torch's .half().
#define FB_CAST(SO, TO, SI, TI)                                                              \
    extern "C" __global__ void fb_cast_##SI##_##SO(TO* out, const TI* x, i64 n) {            \
        FB_GRID_STRIDE(i, n) fb_st(out, i, fb_ld(x, i));                                     \
    }
FB_CAST(f16, fb_half, f32, float)
FB_CAST(f32, float, f16, fb_half)
FB_CAST(f32, float, f32, float)
FB_CAST(f16, fb_half, f16, fb_half)

extern "C" __global__ void fb_cast_i32_f32(float* out, const int* x, i64 n) {
    FB_GRID_STRIDE(i, n) out[i] = (float)x[i];
}
extern "C" __global__ void fb_cast_i32_f16(fb_half* out, const int* x, i64 n) {
    FB_GRID_STRIDE(i, n) out[i] = fb_f2h((float)x[i]);
}
// Truncation toward zero, saturating, NaN -> 0 (PTX cvt.rzi.s32.f32), which is what
// Rust's `as i32` does on the CPU backend.
extern "C" __global__ void fb_cast_f32_i32(int* out, const float* x, i64 n) {
    FB_GRID_STRIDE(i, n) out[i] = (int)x[i];
}
extern "C" __global__ void fb_cast_f16_i32(int* out, const fb_half* x, i64 n) {
    FB_GRID_STRIDE(i, n) out[i] = (int)fb_h2f(x[i]);
}
extern "C" __global__ void fb_fill_i32(int* y, i64 n, int value) {
    FB_GRID_STRIDE(i, n) y[i] = value;
}
