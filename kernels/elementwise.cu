// Elementwise kernels: binary ops, affine, activations (fwd + bwd), gated activations,
// dropout, bias add, casts, in-place axpy/scale/fill and the non-finite check.
//
// Why it is built this way: these ops are memory-bound, so each is one grid-stride pass
// that reads each input once and writes once, with fp32 math on f32 or f16 storage, and
// each thread moves 8 elements per step (16-byte vectors when aligned) so enough bytes
// are in flight to approach DRAM bandwidth (see the 8-wide helpers in common.cuh). The
// op is a runtime switch rather than one kernel per op: the branch is warp-uniform and
// costs nothing next to the memory traffic, and it keeps the entry-point count (and
// the fatbin) small. Activations follow HF exactly: `gelu` is the erf form (BERT,
// DistilBERT), `gelu_new` the tanh approximation (flan-t5), `silu` x·sigmoid(x) (Marian). Dropout re-derives its mask
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
        case 7: return x / (1.0f + expf(-x));
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
        case 7: {
            float s = 1.0f / (1.0f + expf(-x));
            return s * (1.0f + x * (1.0f - s));
        }
        default: return 2.0f * x;
    }
}

// Every lane of a chunk, unrolled so the 8 values stay in registers. Lanes past the
// chunk's end hold 0 and are computed but never stored.
#define FB_LANES(k) _Pragma("unroll") for (int k = 0; k < FB_VEC; ++k)

// out = F(x) and out = F(a, b) over every chunk: the streaming kernels' one loop (see
// below). F is an expression of lane k's values, `va[k]` (x or a) and `vb[k]` (b).
#define FB_MAP1(out, x, n, F)                                                                \
    {                                                                                        \
        bool vec = fb_al16(out) && fb_al16(x);                                               \
        FB_CHUNK_STRIDE(c, n) {                                                              \
            int m = fb_chunk_len(c, n);                                                      \
            float va[FB_VEC];                                                                \
            fb_ldv(x, c, m, vec, va);                                                        \
            FB_LANES(k) va[k] = F;                                                           \
            fb_stv(out, c, m, vec, va);                                                      \
        }                                                                                    \
    }
#define FB_MAP2(out, a, b, n, F)                                                             \
    {                                                                                        \
        bool vec = fb_al16(out) && fb_al16(a) && fb_al16(b);                                 \
        FB_CHUNK_STRIDE(c, n) {                                                              \
            int m = fb_chunk_len(c, n);                                                      \
            float va[FB_VEC], vb[FB_VEC];                                                    \
            fb_ldv(a, c, m, vec, va);                                                        \
            fb_ldv(b, c, m, vec, vb);                                                        \
            FB_LANES(k) va[k] = F;                                                           \
            fb_stv(out, c, m, vec, va);                                                      \
        }                                                                                    \
    }

// The streaming kernels below all take the same shape: `vec` says whether every pointer
// of the call is 16-byte aligned (then whole chunks move as 16-byte vectors, see
// common.cuh), each thread handles 8 consecutive elements per step, and the arithmetic
// per element is exactly the scalar formula, so the vector, tail and unaligned paths
// give bit-identical results. Launch with cfg_chunks(n) (about n / 8 threads).
#define FB_EW(S, T)                                                                          \
    extern "C" __global__ void fb_binary_##S(T* out, const T* a, const T* b, i64 n, int op) { \
        FB_MAP2(out, a, b, n, fb_binary_op(va[k], vb[k], op));                              \
    }                                                                                        \
    extern "C" __global__ void fb_affine_##S(T* out, const T* x, i64 n, float mul, float add) { \
        FB_MAP1(out, x, n, va[k] * mul + add);                                               \
    }                                                                                        \
    extern "C" __global__ void fb_unary_##S(T* out, const T* x, i64 n, int op) {             \
        FB_MAP1(out, x, n, fb_unary_fwd(va[k], op));                                         \
    }                                                                                        \
    extern "C" __global__ void fb_unary_bwd_##S(T* dx, const T* x, const T* dy, i64 n, int op) { \
        FB_MAP2(dx, x, dy, n, vb[k] * fb_unary_grad(va[k], op));                             \
    }                                                                                        \
    extern "C" __global__ void fb_gated_##S(T* out, const T* gate, const T* lin, i64 n, int op) { \
        FB_MAP2(out, gate, lin, n, fb_unary_fwd(va[k], op) * vb[k]);                         \
    }                                                                                        \
    extern "C" __global__ void fb_gated_bwd_##S(T* dgate, T* dlin, const T* gate, const T* lin, \
                                                const T* dy, i64 n, int op) {                \
        bool vec = fb_al16(dgate) && fb_al16(dlin) && fb_al16(gate) && fb_al16(lin) &&       \
                   fb_al16(dy);                                                              \
        FB_CHUNK_STRIDE(c, n) {                                                              \
            int m = fb_chunk_len(c, n);                                                      \
            float vg[FB_VEC], vl[FB_VEC], vd[FB_VEC];                                        \
            fb_ldv(gate, c, m, vec, vg);                                                     \
            fb_ldv(lin, c, m, vec, vl);                                                      \
            fb_ldv(dy, c, m, vec, vd);                                                       \
            FB_LANES(k) {                                                                    \
                float g = vg[k], l = vl[k], d = vd[k];                                       \
                vg[k] = d * l * fb_unary_grad(g, op);                                        \
                vl[k] = d * fb_unary_fwd(g, op);                                             \
            }                                                                                \
            fb_stv(dgate, c, m, vec, vg);                                                    \
            fb_stv(dlin, c, m, vec, vl);                                                     \
        }                                                                                    \
    }                                                                                        \
    /* The mask is drawn per ELEMENT index c + k, so it is the same whatever the chunking \
       and stays bit-identical to crate::backend::dropout_keep. */                           \
    extern "C" __global__ void fb_dropout_##S(T* out, const T* x, i64 n, float p, float scale, \
                                              unsigned long long key) {                     \
        bool vec = fb_al16(out) && fb_al16(x);                                               \
        FB_CHUNK_STRIDE(c, n) {                                                              \
            int m = fb_chunk_len(c, n);                                                      \
            float v[FB_VEC];                                                                 \
            fb_ldv(x, c, m, vec, v);                                                         \
            FB_LANES(k) {                                                                    \
                bool keep = fb_dropout_keep_k(key, (unsigned long long)(c + k), p);           \
                v[k] = keep ? v[k] * scale : 0.0f;                                           \
            }                                                                                \
            fb_stv(out, c, m, vec, v);                                                       \
        }                                                                                    \
    }                                                                                        \
    /* One 64-bit modulo per chunk, then the bias column steps with wrap-around (correct \
       for any cols >= 1). The bias moves as a vector only when each chunk's 8 columns are \
       contiguous and aligned: cols % 8 == 0 and an aligned bias. */                         \
    extern "C" __global__ void fb_add_bias_##S(T* out, const T* x, const T* bias, i64 n,     \
                                               i64 cols) {                                   \
        bool vec = fb_al16(out) && fb_al16(x);                                               \
        bool vbias = vec && fb_al16(bias) && (cols % FB_VEC) == 0;                           \
        FB_CHUNK_STRIDE(c, n) {                                                              \
            int m = fb_chunk_len(c, n);                                                      \
            float v[FB_VEC], vb[FB_VEC];                                                     \
            fb_ldv(x, c, m, vec, v);                                                         \
            i64 j = c % cols;                                                                \
            if (vbias) {                                                                     \
                fb_ldv(bias, j, m, true, vb);                                                \
            } else {                                                                         \
                FB_LANES(k) {                                                                \
                    vb[k] = k < m ? fb_ld(bias, j) : 0.0f;                                   \
                    if (++j == cols) j = 0;                                                  \
                }                                                                            \
            }                                                                                \
            FB_LANES(k) v[k] = v[k] + vb[k];                                                 \
            fb_stv(out, c, m, vec, v);                                                       \
        }                                                                                    \
    }                                                                                        \
    extern "C" __global__ void fb_scale_##S(T* y, i64 n, float alpha) {                      \
        FB_MAP1(y, y, n, va[k] * alpha);                                                     \
    }                                                                                        \
    extern "C" __global__ void fb_fill_##S(T* y, i64 n, float value) {                       \
        bool vec = fb_al16(y);                                                               \
        float v[FB_VEC];                                                                     \
        FB_LANES(k) v[k] = value;                                                            \
        FB_CHUNK_STRIDE(c, n) fb_stv(y, c, fb_chunk_len(c, n), vec, v);                      \
    }                                                                                        \
    /* No early exit: every thread of the warp must reach the __any_sync. Lanes past the \
       end read 0, which is finite. */                                                       \
    extern "C" __global__ void fb_has_non_finite_##S(const T* x, i64 n, int* flag) {         \
        bool vec = fb_al16(x);                                                               \
        bool bad = false;                                                                    \
        FB_CHUNK_STRIDE(c, n) {                                                              \
            float v[FB_VEC];                                                                 \
            fb_ldv(x, c, fb_chunk_len(c, n), vec, v);                                        \
            FB_LANES(k) bad |= !fb_finite(v[k]);                                             \
        }                                                                                    \
        if (__any_sync(FB_FULL_MASK, bad) && (threadIdx.x & 31) == 0) atomicOr(flag, 1);     \
    }
FB_BOTH(FB_EW)

// y += alpha * x, for every (y, x) storage pair: f16 gradients accumulate into f32.
#define FB_AXPY(SY, TY, SX, TX)                                                              \
    extern "C" __global__ void fb_axpy_##SY##_##SX(TY* y, const TX* x, i64 n, float alpha) { \
        FB_MAP2(y, y, x, n, va[k] + alpha * vb[k]);                                          \
    }
FB_AXPY(f32, float, f32, float)
FB_AXPY(f32, float, f16, fb_half)
FB_AXPY(f16, fb_half, f16, fb_half)
FB_AXPY(f16, fb_half, f32, float)

// Casts between float storages. f32 -> f16 rounds to nearest even and saturates to inf
// like torch's .half().
#define FB_CAST(SO, TO, SI, TI)                                                              \
    extern "C" __global__ void fb_cast_##SI##_##SO(TO* out, const TI* x, i64 n) {            \
        bool vec = fb_al16(out) && fb_al16(x);                                               \
        FB_CHUNK_STRIDE(c, n) {                                                              \
            int m = fb_chunk_len(c, n);                                                      \
            float v[FB_VEC];                                                                 \
            fb_ldv(x, c, m, vec, v);                                                         \
            fb_stv(out, c, m, vec, v);                                                       \
        }                                                                                    \
    }
FB_CAST(f16, fb_half, f32, float)
FB_CAST(f32, float, f16, fb_half)
FB_CAST(f32, float, f32, float)
FB_CAST(f16, fb_half, f16, fb_half)

// The i32 casts and fill stay scalar grid-stride loops (launch with cfg_1d(n)): they run
// on ids and masks, never in the training step's hot path.
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
// QA positions clamped to [lo, hi] = [0, S] on the device (HF clamps them; S is ignored).
extern "C" __global__ void fb_clamp_i32(int* out, const int* x, i64 n, int lo, int hi) {
    FB_GRID_STRIDE(i, n) out[i] = x[i] < lo ? lo : (x[i] > hi ? hi : x[i]);
}
