// Fused attention (FlashAttention-2 style) forward and backward for fp16 on Turing (sm_75),
// also run unchanged on sm_80 / sm_90. One kernel family serves DistilBERT/BERT self-attention
// (scaled, key padding mask) and all three T5 attentions (unscaled, additive per-head bias
// with its gradient, causal decoder, cross-attention), so neither the B·H·Lq·Lk score matrix
// nor the probabilities are ever stored: forward keeps only out and the row log-sum-exp,
// backward recomputes P from them.
//
// Why it is built this way:
// - Tensor cores via `mma.sync.m16n8k8.row.col.f32.f16.f16.f32` (the Turing MMA). Its
//   accumulator fragment equals its A-operand fragment, so P (or dS) goes from the S
//   accumulators straight into the next MMA with no shuffle. Work is written as k16 steps:
//   for sm_75 each is two m16n8k8; for sm_80+ (__CUDA_ARCH__ >= 800 only) one m16n8k16
//   on the same registers. Row-major fragments are plain 32-bit shared loads; transposed B
//   fragments (V, dO, Q, K read along the key or query axis) come from ldmatrix.x4.trans
//   (sm_75+). Global loads go through registers in 16-byte vectors, except the sm_80/90
//   forward's cp.async K/V pipeline. Nothing sm_80-only is on the sm_75 path.
// - Tiles: 4 warps; forward 64 query rows x 64-key tiles (16 rows per warp); backward one
//   64-key tile per block (16 keys per warp) walking 32-row query tiles (16 for D=128);
//   for D=64 also a 128-key, 8-warp backward (fb_attn_bwd_f16_k128, chosen by the host:
//   FUSEBOX_ATTN_BWD=k128) that halves the dQ atomics per FLOP, until a card decides.
//   Key tiles that are all padding are skipped. Blocks are ordered batch-fastest so the
//   bias of one head is reused from L2.
// - Softmax is "online" with a finite sentinel (-1e30) instead of -inf inside the kernels, so
//   fully masked rows never compute inf - inf; they produce out = 0, lse = -inf and add
//   nothing to any gradient. Bias values of -inf / -FLT_MAX are also handled.
// - Backward = rowsum(dO∘O) kernel, then one kernel per key tile that keeps dK/dV in
//   registers while walking the query tiles, and adds dQ (fp32 atomics into dq_accum) and
//   dBias (fp32 atomics into dbias). dBias = dS summed over the batch; the atomics cost one
//   RED per nonzero (b, h, i, j), i.e. B·H·Lq·Lk fp32 atomics (T5-small B=16 512²: 33.5 M),
//   spread over H·Lq·Lk addresses so contention is only B-way. dq_accum costs
//   B·Lq·H·D·ceil(Lk/64) fp32 additions (sm_90: in float2 atomics, half as many
//   instructions). A last kernel casts dq_accum to fp16.
// - Dropout on the probabilities (HF's attention dropout) is fused: keep(b,h,i,j) is
//   backend::dropout_keep(seed, ((b*H + h)*Lq + i)*Lk + j, p) — the same hash as
//   the unfused dropout over a [B, H, Lq, Lk] probability tensor — so backward regenerates
//   the mask instead of storing it. out = (P∘Z)·V with Z = keep/(1-p); lse is the softmax's
//   (before dropout); dS = P∘(Z∘dP' − delta) with dP' = dO·Vᵀ and delta = rowsum(dO∘O).
//   dropout_p = 0 skips the hash entirely.
// - Do not compile with --use_fast_math (not needed; __expf is used explicitly).
//
// ---------------------------------------------------------------------------------------
// Tensor layout (all row-major, device pointers 16-byte aligned):
//   q, dq            : fp16 [B, Lq, H, D] rows of ldq halves   (ldq >= H*D, ldq % 8 == 0)
//   k, v, dk, dv     : fp16 [B, Lk, H, D] rows of ldkv halves  (ldkv >= H*D, ldkv % 8 == 0)
//   out, dout        : fp16 [B, Lq, H, D], contiguous (rows of H*D)
//   With ldq = ldkv = H*D these are the [B*L, H*D] outputs of three linear layers; with
//   ldq = ldkv = 3*H*D and k = q + H*D, v = q + 2*H*D they are the columns of one fused
//   QKV projection [B*L, 3*H*D], and dq/dk/dv land in the same packed layout (one GEMM
//   then gives the input gradient). The gaps between rows are neither read nor written.
//   lse, delta       : fp32 [B, H, Lq]
//   key_mask         : int32 [B, Lk], nonzero = keep; may be NULL (all keys kept)
//   bias             : fp32 [H, Lq, Lk], added after scaling, broadcast over B; may be NULL
//   dbias            : fp32 [H, Lq, Lk], sum over the batch of dS; may be NULL (no bias grad)
//   dq_accum         : fp32 [B, Lq, H, D] workspace
// score(b,h,i,j) = scale * q_i·k_j + bias[h,i,j], j allowed iff key_mask[b,j] != 0 and
// (causal == 0 or j <= i + (Lk - Lq)). Rows with no allowed key: out = 0, lse = -inf.
// dropout_p in [0, 1) (float), key (unsigned long long = u64) = backend::dropout_key_packed(
// seed): see dropout.cuh; pass the same pair to forward and backward of one call.
//
// Kernels (all: int = int32, float = fp32, pointers are device addresses; D is the head dim).
// "_d32" / "_d128" variants have exactly the same arguments and launch shape as the D = 64
// kernel without suffix. All shared memory is static (under 48 KB): shared_mem_bytes = 0
// and no cudaFuncSetAttribute is needed.
//
// 1. fb_attn_fwd_f16 (D=64), fb_attn_fwd_f16_d32, fb_attn_fwd_f16_d128
//    (const half* q, const half* k, const half* v, const int* key_mask, const float* bias,
//     half* out, float* lse, int B, int H, int Lq, int Lk, float scale, int causal,
//     float dropout_p, unsigned long long key, int ldq, int ldkv)
//    grid = (ceil(Lq / 64), H, B), block = (128, 1, 1), shared_mem_bytes = 0.
//
// 2. fb_attn_bwd_preprocess_f16
//    (const half* out, const half* dout, float* delta, float* dq_accum, float* dbias,
//     int B, int H, int Lq, int Lk, int D)
//    delta = rowsum(dout ∘ out); also zero-fills dq_accum (B·Lq·H·D floats) and, if dbias
//    is not NULL, dbias (H·Lq·Lk floats), so the caller need not memset them.
//    grid = (ceil(B·H·Lq / 4), 1, 1), block = (128, 1, 1), shared_mem_bytes = 0.
//
// 3. fb_attn_bwd_f16 (D=64), fb_attn_bwd_f16_d32, fb_attn_bwd_f16_d128
//    (const half* q, const half* k, const half* v, const half* dout, const float* lse,
//     const float* delta, const int* key_mask, const float* bias, half* dk, half* dv,
//     float* dq_accum, float* dbias, int B, int H, int Lq, int Lk, float scale, int causal,
//     float dropout_p, unsigned long long key, int ldq, int ldkv)
//    Writes dk, dv (rows of ldkv); adds into dq_accum and (if not NULL) dbias, which kernel 2 zeroed.
//    grid = (ceil(Lk / 64), H, B), block = (128, 1, 1), shared_mem_bytes = 0.
//
//    fb_attn_bwd_f16_k128: D=64 only, the same arguments as fb_attn_bwd_f16, 128-key tiles
//    of 8 warps: grid = (ceil(Lk / 128), H, B), block = (256, 1, 1), shared_mem_bytes = 0.
//
// 4. fb_attn_dq_cast_f16 (const float* dq_accum, half* dq, int n, int hd, int ldq)
//    n = B·Lq·H·D, hd = H·D: dq[(i / hd)·ldq + i % hd] = dq_accum[i] (dq_accum is contiguous).
//    grid = (ceil(n / 256), 1, 1), block = (256, 1, 1), shared_mem_bytes = 0.
//
// Order on one stream: fwd; later preprocess → bwd → dq_cast. preprocess must get the `out`
// the forward wrote (with dropout, the dropped output). Needs B, H, Lq, Lk >= 1 (a zero
// grid dimension is a launch error: skip empty calls) and B·Lq·H·D < 2^31.
// Workspace: lse and delta B·H·Lq·4 bytes each, dq_accum B·Lq·H·D·4, dbias H·Lq·Lk·4.
// dq and dbias are sums of fp32 atomics: not bitwise reproducible run to run (~1e-7 rel).
//
// Resources (nvcc 13.0 -O3 -Xptxas -v; static smem; no spills on any target since the
// row-stride arguments came in, which also moved the register counts a little):
//   kernel          regs sm_75/80/86/90    smem B (sm_75, 86 | 80, 90)   blocks/SM on T4
//   fwd D=64        128 / 136 / 127 / 130  18688 | 37120 (2 K/V bufs)    4 (128-reg cap, sm_75 only)
//   fwd D=32        128 / 125 / 110 / 127  10496 | 20736                 4
//   fwd D=128       216 / 202 / 218 / 172  35072                         1
//   bwd D=64        186 / 164 / 164 / 166  32512                         2 (BR=32: sized for this)
//   bwd D=32        200 / 166 / 166 / 187  30208                         2
//   bwd D=128       234 / 240 / 240 / 248  45952                         1 (BR=16)
//   bwd D=64 k128   199 / 194 / 194 / 224  36608 (no V tile)             1 (8 warps)
//   preprocess 46/30/30, dq_cast 14 (all targets), no smem.
// Latency hiding: backward issues the next query tile's Q/dO loads (into registers) before
// the current tile's MMAs; forward on sm_80 / sm_90 double-buffers K/V with cp.async
// (sm_86/89 and Turing load each tile synchronously: see FB_ATTN_ASYNC).
// (Turing reserves no shared memory per block as far as we know; if it did, bwd D=64
// would drop to one block per SM.)
// ---------------------------------------------------------------------------------------

// FB_ATTN_EMULATE: dev/cuda/attn_check/emu_check.cpp runs these kernels on the CPU (threads +
// barriers, MMA evaluated from the PTX fragment tables) and supplies the CUDA names itself.
// Only cuda_fp16.h is included: NVRTC (the run-time compile path) ships no <stdint.h> or
// <math.h>, hence `unsigned int` for fragments and a bit pattern for -inf.
#ifndef FB_ATTN_EMULATE
#include <cuda_fp16.h>
#endif
// The dropout hash, bit for bit backend::dropout_keep (src/backend/mod.rs): per score
// fb_dropout_keep_k(key, index, p) with key = backend::dropout_key_packed(seed), made on
// the host; 32-bit multiplies only, m and a straight from the kernel parameters.
#include "dropout.cuh"

namespace fbattn {

constexpr int kThreads = 128;  // 4 warps; each warp owns 16 query rows (fwd) or 16 keys (bwd)
constexpr int kBr = 64;        // forward: query rows per block
constexpr int kBc = 64;        // key rows per tile (forward loop, backward block)
constexpr float kNeg = -1.0e30f;      // "masked" score; finite so no inf - inf ever happens
constexpr float kNegThresh = -1.0e29f;  // a running max at or below this means "no key yet"

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// D += A·B for one 16x8x8 tile. A: a0 = {A[g][2t], A[g][2t+1]}, a1 = {A[g+8][2t], ..};
// B: b0 = {B[2t][g], B[2t+1][g]}; C: c0,c1 = C[g][2t..2t+1], c2,c3 = C[g+8][2t..2t+1]
// (g = lane / 4, t = lane % 4; PTX ISA "Matrix Fragments for mma.m16n8k8").
__device__ __forceinline__ void mma_m16n8k8(float c[4], unsigned int a0, unsigned int a1, unsigned int b0) {
#ifdef FB_ATTN_EMULATE
  fb_emu_mma(c, a0, a1, b0);
#else
  float d0, d1, d2, d3;
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
      "{%7,%8,%9,%10};\n"
      : "=f"(d0), "=f"(d1), "=f"(d2), "=f"(d3)
      : "r"(a0), "r"(a1), "r"(b0), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
  c[0] = d0;
  c[1] = d1;
  c[2] = d2;
  c[3] = d3;
#endif
}

// c += A·B with A 16x16 and B 16x8 given as two k8 halves: (a0, a1, b0) are the m16n8k8
// fragments of k = 0..7 and (a2, a3, b1) those of k = 8..15. That is exactly the register
// layout of mma.m16n8k16 (A regs: rows g / g+8 at cols 2t, then rows g / g+8 at cols 2t+8;
// B regs: rows 2t and 2t+8), so sm_80+ issues one k16 MMA; sm_75 issues the two k8 halves.
__device__ __forceinline__ void mma_k16(float c[4], unsigned int a0, unsigned int a1,
                                        unsigned int a2, unsigned int a3, unsigned int b0,
                                        unsigned int b1) {
#if defined(FB_ATTN_EMULATE) && defined(FB_ATTN_EMU_K16)
  fb_emu_mma_k16(c, a0, a1, a2, a3, b0, b1);
#elif !defined(FB_ATTN_EMULATE) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float d0, d1, d2, d3;
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d0), "=f"(d1), "=f"(d2), "=f"(d3)
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
  c[0] = d0;
  c[1] = d1;
  c[2] = d2;
  c[3] = d3;
#else
  mma_m16n8k8(c, a0, a1, b0);
  mma_m16n8k8(c, a2, a3, b1);
#endif
}

// Two adjacent halves p[0] (low 16 bits) and p[1] (high).
__device__ __forceinline__ unsigned int ld_row2(const __half* p) {
  return *reinterpret_cast<const unsigned int*>(p);
}

// B fragments of four adjacent 8x8 blocks of a row-major [k][n] shared tile, i.e. for each
// block i: r[i] = {T[k0 + 2t][n0 + 8i + g], T[k0 + 2t + 1][n0 + 8i + g]}, via ldmatrix.trans
// (sm_75+). `row` must point at T[k0 + (lane & 7)][n0 + 8 * (lane >> 3)] (16-byte aligned):
// lane 8i + r supplies row r of block i, and .trans hands lane 4g + t the column g pair.
__device__ __forceinline__ void ldsm_x4_trans(unsigned int r[4], const __half* row) {
#ifdef FB_ATTN_EMULATE
  fb_emu_ldsm_x4_trans(r, row);
#else
  const unsigned int addr = (unsigned int)__cvta_generic_to_shared(row);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#endif
}

// p[0] += a and p[1] += b (p 8-byte aligned). sm_90 has a vector float atomic
// (atomicAdd on float2, red.global.add.v2.f32): half as many dQ atomics; everything else
// (and the emulation) issues two scalar ones.
__device__ __forceinline__ void atomic_add2(float* p, float a, float b) {
#if !defined(FB_ATTN_EMULATE) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(a, b));
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}

__device__ __forceinline__ unsigned int pack2(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<unsigned int*>(&h);
}

// (head, batch) of this block. Launch order runs blockIdx.y fastest after x; reading the
// linear (y, z) index with the batch fastest instead makes consecutive blocks share a head,
// so the bias slice [h] (read once per batch element) is reused while still in L2 — T5's
// 8 MB bias does not fit a T4's 4 MB L2 otherwise.
__device__ __forceinline__ void head_batch(int B, int H, int& h, int& b) {
  const int bh = blockIdx.y + blockIdx.z * H;  // gridDim = (.., H, B)
  h = bh / B;
  b = bh % B;
}

// rows [row0, row0 + ROWS) of a [L, ld] fp16 matrix (columns 0..D-1 from g) into a
// [ROWS][D + 8] shared tile; rows past L are zero so no garbage reaches an MMA.
template <int ROWS, int D, int NT = kThreads>
__device__ __forceinline__ void load_tile(__half* s, const __half* g, int row0, int L,
                                          long long ld) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  for (int c = threadIdx.x; c < ROWS * kChunks; c += NT) {
    const int r = c / kChunks;
    const int col = (c % kChunks) * 8;
    uint4 val = make_uint4(0u, 0u, 0u, 0u);
    if (row0 + r < L) val = *reinterpret_cast<const uint4*>(g + (long long)(row0 + r) * ld + col);
    *reinterpret_cast<uint4*>(s + r * (D + 8) + col) = val;
  }
}

// sm_80 and sm_90+ (and the emulation): the forward double-buffers K/V tiles with
// cp.async, so the next tile streams into shared memory while this one is computed, at no
// register cost there (ptxas, D=64: 154 / 135 registers, as before). Not sm_86/sm_89:
// ptxas takes 236 registers for the same code there (134 without), which would cost a
// third of the blocks per SM. Turing has no cp.async: it keeps the synchronous load_tile.
#if (!defined(FB_ATTN_EMULATE) && defined(__CUDA_ARCH__) &&                         \
     (__CUDA_ARCH__ == 800 || __CUDA_ARCH__ >= 900)) ||                             \
    (defined(FB_ATTN_EMULATE) && defined(FB_ATTN_EMU_K16))
#define FB_ATTN_ASYNC 1
#endif

#ifdef FB_ATTN_ASYNC
// 16 bytes global -> shared without going through registers; src_bytes = 0 zero-fills.
__device__ __forceinline__ void cp_async16(__half* s, const __half* g, bool valid) {
#ifdef FB_ATTN_EMULATE
  fb_emu_cp_async16(s, g, valid);
#else
  const unsigned int addr = (unsigned int)__cvta_generic_to_shared(s);
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(g), "r"(n));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifndef FB_ATTN_EMULATE
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifndef FB_ATTN_EMULATE
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}
// load_tile's layout (rows past L zero-filled), issued asynchronously.
template <int ROWS, int D>
__device__ __forceinline__ void async_tile(__half* s, const __half* g, int row0, int L,
                                           long long ld) {
  constexpr int kChunks = D / 8;
  for (int c = threadIdx.x; c < ROWS * kChunks; c += kThreads) {
    const int r = c / kChunks;
    const int col = (c % kChunks) * 8;
    const bool valid = row0 + r < L;
    cp_async16(s + r * (D + 8) + col, valid ? g + (long long)(row0 + r) * ld + col : g, valid);
  }
}
#endif

// load_tile split in two so the next tile's global loads are in flight while this tile
// is computed: fetch_tile reads this thread's 16-byte chunks into registers (N of them,
// ceil(ROWS * D/8 / NT) for NT threads), put_tile writes them to the shared tile. Same
// layout and zero rows past L as load_tile.
template <int ROWS, int D, int N, int NT = kThreads>
__device__ __forceinline__ void fetch_tile(uint4 (&r)[N], const __half* g, int row0, int L,
                                           long long ld) {
  constexpr int kChunks = D / 8;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const int c = threadIdx.x + i * NT;
    r[i] = make_uint4(0u, 0u, 0u, 0u);
    if (c < ROWS * kChunks && row0 + c / kChunks < L)
      r[i] = *reinterpret_cast<const uint4*>(g + (long long)(row0 + c / kChunks) * ld + (c % kChunks) * 8);
  }
}
template <int ROWS, int D, int N, int NT = kThreads>
__device__ __forceinline__ void put_tile(__half* s, const uint4 (&r)[N]) {
  constexpr int kChunks = D / 8;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const int c = threadIdx.x + i * NT;
    if (c < ROWS * kChunks) *reinterpret_cast<uint4*>(s + (c / kChunks) * (D + 8) + (c % kChunks) * 8) = r[i];
  }
}

// keep flags of keys [k0, k0 + kBc) for batch b; returns this thread's flag (0 past kBc).
__device__ __forceinline__ int load_keep(int* keep_s, const int* key_mask, int b, int k0,
                                         int Lk) {
  int keep = 0;
  if (threadIdx.x < kBc) {
    const int j = k0 + threadIdx.x;
    keep = j < Lk;
    if (keep && key_mask != nullptr) keep = key_mask[(long long)b * Lk + j] != 0;
    keep_s[threadIdx.x] = keep;
  }
  return keep;
}

template <int D>
__device__ __forceinline__ void attn_fwd(const __half* __restrict__ q,
                                         const __half* __restrict__ k,
                                         const __half* __restrict__ v,
                                         const int* __restrict__ key_mask,
                                         const float* __restrict__ bias, __half* __restrict__ out,
                                         float* __restrict__ lse, int B, int H, int Lq, int Lk,
                                         float scale, int causal, float dropout_p,
                                         unsigned long long key, int ldq, int ldkv) {
  constexpr int S = D + 8;  // smem row stride (halves); +8 spreads rows over banks
#ifdef FB_ATTN_ASYNC
  constexpr int NB = D <= 64 ? 2 : 1;  // K/V buffers: two fit the 48 KB static limit to D=64
#else
  constexpr int NB = 1;
#endif
  __shared__ __align__(16) __half k_sb[NB][kBc * S];  // k_sb[0] holds the Q tile first
  __shared__ __align__(16) __half v_sb[NB][kBc * S];
  __shared__ int keep_s[kBc];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  int h, b;
  head_batch(B, H, h, b);
  const int q0 = blockIdx.x * kBr;
  const long long ld = (long long)H * D;  // out
  const __half* qb = q + (long long)b * Lq * ldq + (long long)h * D;
  const __half* kb = k + (long long)b * Lk * ldkv + (long long)h * D;
  const __half* vb = v + (long long)b * Lk * ldkv + (long long)h * D;
  const float* biash = bias ? bias + (long long)h * Lq * Lk : nullptr;
  const int off = Lk - Lq;  // causal: row i sees keys j <= i + off
  const int wr = warp * 16;
  const int rows[2] = {q0 + wr + g, q0 + wr + g + 8};
  const bool drop = dropout_p > 0.f;
  const float rkeep = drop ? 1.f / (1.f - dropout_p) : 1.f;
  const unsigned long long drop_base = ((unsigned long long)b * H + h) * Lq;

  static_assert(kBr == kBc, "Q tile reuses the K buffer");
  load_tile<kBr, D>(k_sb[0], qb, q0, Lq, ldq);
  __syncthreads();
  unsigned int qf[D / 8][2];
#pragma unroll
  for (int ks = 0; ks < D / 8; ++ks) {
    qf[ks][0] = ld_row2(&k_sb[0][(wr + g) * S + ks * 8 + 2 * t]);
    qf[ks][1] = ld_row2(&k_sb[0][(wr + g + 8) * S + ks * 8 + 2 * t]);
  }
  __syncthreads();

  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m[2] = {kNeg, kNeg};
  float l[2] = {0.f, 0.f};

  int kend = Lk;
  if (causal) kend = min(Lk, max(0, q0 + kBr + off));  // last row of the tile sees < this
#ifdef FB_ATTN_ASYNC
  if (NB == 2 && kend > 0) {
    async_tile<kBc, D>(k_sb[0], kb, 0, Lk, ldkv);
    async_tile<kBc, D>(v_sb[0], vb, 0, Lk, ldkv);
    cp_async_commit();
  }
#endif
  int buf = 0;
  for (int k0 = 0; k0 < kend; k0 += kBc, buf ^= NB - 1) {
    __half* k_s = k_sb[buf];
    __half* v_s = v_sb[buf];
#ifdef FB_ATTN_ASYNC
    if (NB == 2) {
      // The other buffer was last read before the previous iteration's closing barrier.
      if (k0 + kBc < kend) {
        async_tile<kBc, D>(k_sb[buf ^ 1], kb, k0 + kBc, Lk, ldkv);
        async_tile<kBc, D>(v_sb[buf ^ 1], vb, k0 + kBc, Lk, ldkv);
        cp_async_commit();
        cp_async_wait<1>();  // this tile's group is done, the next one may still fly
      } else {
        cp_async_wait<0>();
      }
    } else
#endif
    {
      load_tile<kBc, D>(k_s, kb, k0, Lk, ldkv);
      load_tile<kBc, D>(v_s, vb, k0, Lk, ldkv);
    }
    const int mykeep = load_keep(keep_s, key_mask, b, k0, Lk);
    // A tile whose keys are all padding adds nothing: skip it (uniform across the block).
    // The barrier also makes every thread's copies of this tile visible.
    if (!__syncthreads_or(mykeep)) {
      __syncthreads();  // keep_s and the buffers are rewritten next iteration
      continue;
    }

    // Dropout keep bits of this thread's 32 scores, drawn before the MMAs while few
    // registers are live (the 64-bit hash interleaved with the softmax costs spills).
    unsigned int kbits = 0xffffffffu;
    if (drop) {
      kbits = 0u;
#pragma unroll
      for (int bit = 0; bit < kBc / 2; ++bit) {
        const int nt = bit >> 2, e = bit & 3;
        const unsigned long long idx =
            (drop_base + rows[e >> 1]) * Lk + (k0 + nt * 8 + 2 * t + (e & 1));
        kbits |= (unsigned int)fb_dropout_keep_k(key, idx, dropout_p) << bit;
      }
    }

    float s[kBc / 8][4];
#pragma unroll
    for (int nt = 0; nt < kBc / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < D / 8; ks += 2) {
#pragma unroll
      for (int nt = 0; nt < kBc / 8; ++nt) {
        // B[kk][n] = K[key n][d kk]: contiguous along d.
        const __half* kr = &k_s[(nt * 8 + g) * S + ks * 8 + 2 * t];
        mma_k16(s[nt], qf[ks][0], qf[ks][1], qf[ks + 1][0], qf[ks + 1][1], ld_row2(kr),
                ld_row2(kr + 8));
      }
    }

    float mx[2] = {kNeg, kNeg};
#pragma unroll
    for (int nt = 0; nt < kBc / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = rows[e >> 1];
        const int jl = nt * 8 + 2 * t + (e & 1);
        const int j = k0 + jl;
        const bool ok = keep_s[jl] && r < Lq && (!causal || j <= r + off);
        float val = kNeg;
        if (ok) {
          val = s[nt][e] * scale;
          if (biash) val += biash[(long long)r * Lk + j];
          val = fmaxf(val, kNeg);  // a -inf bias behaves like a mask
        }
        s[nt][e] = val;
        mx[e >> 1] = fmaxf(mx[e >> 1], val);
      }
    }
    float mu[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
      const float mn = fmaxf(m[i], mx[i]);
      mu[i] = mn <= kNegThresh ? 0.f : mn;  // no key yet: any finite reference works
      const float alpha = __expf(m[i] - mu[i]);
      m[i] = mn;
      l[i] *= alpha;
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn) {
        o[dn][2 * i] *= alpha;
        o[dn][2 * i + 1] *= alpha;
      }
    }
#pragma unroll
    for (int nt = 0; nt < kBc / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float p = __expf(s[nt][e] - mu[e >> 1]);
        l[e >> 1] += p;  // the softmax normaliser counts dropped probabilities too
        if (drop) p = ((kbits >> (nt * 4 + e)) & 1u) ? p * rkeep : 0.f;
        s[nt][e] = p;
      }
    }
    // O += P·V; P's accumulator fragment for keys nt*8.. is the A fragment of k-step nt.
#pragma unroll
    for (int nt = 0; nt < kBc / 8; nt += 2) {
      const unsigned int a0 = pack2(s[nt][0], s[nt][1]);
      const unsigned int a1 = pack2(s[nt][2], s[nt][3]);
      const unsigned int a2 = pack2(s[nt + 1][0], s[nt + 1][1]);
      const unsigned int a3 = pack2(s[nt + 1][2], s[nt + 1][3]);
#pragma unroll
      for (int dn = 0; dn < D / 8; dn += 4) {
        // B[kk][n] = V[key kk][d n]: transposed loads of 8x8 blocks, keys nt*8.. and +8.
        const __half* vr = &v_s[(nt * 8 + (lane & 7)) * S + (dn + (lane >> 3)) * 8];
        unsigned int blo[4], bhi[4];
        ldsm_x4_trans(blo, vr);
        ldsm_x4_trans(bhi, vr + 8 * S);
#pragma unroll
        for (int i = 0; i < 4; ++i) mma_k16(o[dn + i], a0, a1, a2, a3, blo[i], bhi[i]);
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    const int r = rows[i];
    if (r >= Lq) continue;
    const bool any = m[i] > kNegThresh && l[i] > 0.f;
    const float inv = any ? 1.f / l[i] : 0.f;
    __half* orow = out + ((long long)b * Lq + r) * ld + (long long)h * D;
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) {
      *reinterpret_cast<__half2*>(orow + dn * 8 + 2 * t) =
          __floats2half2_rn(o[dn][2 * i] * inv, o[dn][2 * i + 1] * inv);
    }
    if (t == 0) lse[((long long)b * H + h) * Lq + r] = any ? m[i] + logf(l[i]) : neg_inf();
  }
}

// Backward for one key tile of KB = 16·NW keys (NW warps; warp w owns keys w*16..w*16+15),
// walking query tiles of BR rows. BR sets the shared memory: D=64 uses BR=32 for exactly
// 32 KB, so two blocks (8 warps) fit in a Turing SM's 64 KB; D=128 uses BR=16 to stay under
// 48 KB static.
// NW = 8 (D=64 only, the "_k128" kernel): 128-key tiles as in FlashAttention-2's backward.
// Per FLOP it halves the dQ atomics and the Q/dO tile loads (each query tile is walked by
// Lk/128 blocks instead of Lk/64). Its warps keep their K and V rows in registers as MMA
// A fragments (kKvRegs: about 30 registers more, no V tile, and no K/V shared loads in the
// S/dP products), which keeps the block at 36.6 KB of static shared memory (with a V tile
// it would need 54 KB); the registers (194-224) make it one block of 8 warps per SM, the
// same warps per SM as two blocks of the 4-warp kernel.
template <int D, int BR, int NW = 4>
__device__ __forceinline__ void attn_bwd(
    const __half* __restrict__ q, const __half* __restrict__ k, const __half* __restrict__ v,
    const __half* __restrict__ dout, const float* __restrict__ lse,
    const float* __restrict__ delta, const int* __restrict__ key_mask,
    const float* __restrict__ bias, __half* __restrict__ dk, __half* __restrict__ dv,
    float* __restrict__ dq_accum, float* __restrict__ dbias, int B, int H, int Lq, int Lk,
    float scale, int causal, float dropout_p, unsigned long long key, int ldq, int ldkv) {
  constexpr int NT = NW * 32;  // threads
  constexpr int KB = NW * 16;  // keys per block
  constexpr int S = D + 8;
  constexpr int SD = KB + 8;   // dS tile row stride (halves)
  constexpr int RG = BR / 16;  // dQ phase: 16-row groups per query tile ...
  constexpr int CS = NW / RG;  // ... and column slices, RG * CS = NW warps
  constexpr int NC = D / CS;   // dQ columns per warp
  static_assert(RG * CS == NW && (NC % 32 == 0 || NC == 16) && D % 32 == 0 && BR <= 64,
                "dQ split, ldmatrix x4, 32 dropout bits");
  // NW = 8: each warp keeps its 16 K and V rows as MMA A fragments in registers for the
  // whole kernel (no V tile in shared memory; K stays there for the dQ phase).
  constexpr bool kKvRegs = NW == 8;
  static_assert(2 * ((kKvRegs ? 1 : 2) * KB * S + 2 * BR * S + BR * SD) + 8 * BR <= 48 * 1024,
                "static shared memory");
  __shared__ __align__(16) __half k_s[KB * S];
  __shared__ __align__(16) __half v_s[kKvRegs ? 8 : KB * S];
  __shared__ __align__(16) __half q_s[BR * S];
  __shared__ __align__(16) __half do_s[BR * S];
  __shared__ __align__(16) __half ds_s[BR * SD];  // dS as [query][key]
  __shared__ float lse_s[BR];
  __shared__ float di_s[BR];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  int h, b;
  head_batch(B, H, h, b);
  const int k0 = blockIdx.x * KB;
  const long long ld = (long long)H * D;  // dout, dq_accum
  const __half* qb = q + (long long)b * Lq * ldq + (long long)h * D;
  const __half* dob = dout + (long long)b * Lq * ld + (long long)h * D;
  const __half* kb = k + (long long)b * Lk * ldkv + (long long)h * D;
  const __half* vb = v + (long long)b * Lk * ldkv + (long long)h * D;
  const float* lseb = lse + ((long long)b * H + h) * Lq;
  const float* deltab = delta + ((long long)b * H + h) * Lq;
  const float* biash = bias ? bias + (long long)h * Lq * Lk : nullptr;
  float* dbiash = dbias ? dbias + (long long)h * Lq * Lk : nullptr;
  const int off = Lk - Lq;
  const int kw = warp * 16;  // this warp's keys in the tile: kw + g and kw + g + 8
  const bool drop = dropout_p > 0.f;
  const float rkeep = drop ? 1.f / (1.f - dropout_p) : 1.f;
  const unsigned long long drop_base = ((unsigned long long)b * H + h) * Lq;

  load_tile<KB, D, NT>(k_s, kb, k0, Lk, ldkv);
  if (!kKvRegs) load_tile<KB, D, NT>(v_s, vb, k0, Lk, ldkv);
  int qbeg = 0;
  if (causal) qbeg = (max(0, k0 - off) / BR) * BR;  // earlier rows see none of these keys
  // The first query tile's loads start now; each iteration starts the next one's before
  // its MMAs (software pipelining: the walk over query tiles is latency-bound otherwise).
  constexpr int PR = (BR * (D / 8) + NT - 1) / NT;
  uint4 pq[PR], pdo[PR];
  fetch_tile<BR, D, PR, NT>(pq, qb, qbeg, Lq, ldq);
  fetch_tile<BR, D, PR, NT>(pdo, dob, qbeg, Lq, ld);
  // This thread's two keys are fixed for the whole kernel: keep flags live in registers.
  bool keepk[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int j = k0 + kw + g + 8 * i;
    keepk[i] = j < Lk && (key_mask == nullptr || key_mask[(long long)b * Lk + j] != 0);
  }
  if (!__syncthreads_or(keepk[0] || keepk[1])) {  // all keys of the tile are padding
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int j = k0 + kw + g + 8 * i;
      if (j >= Lk) continue;
      const long long base = ((long long)b * Lk + j) * ldkv + (long long)h * D;
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn) {
        *reinterpret_cast<__half2*>(dk + base + dn * 8 + 2 * t) = __floats2half2_rn(0.f, 0.f);
        *reinterpret_cast<__half2*>(dv + base + dn * 8 + 2 * t) = __floats2half2_rn(0.f, 0.f);
      }
    }
    return;
  }

  // kKvRegs: A fragments of this warp's K and V rows, straight from global memory (rows
  // past Lk are zero, as load_tile makes them): [k16 step][a0..a3] as in the loop below.
  unsigned int kfr[kKvRegs ? D / 16 : 1][4], vfr[kKvRegs ? D / 16 : 1][4];
  if (kKvRegs) {
#pragma unroll
    for (int s2 = 0; s2 < (kKvRegs ? D / 16 : 1); ++s2) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = k0 + kw + g + ((e & 1) << 3);
        const int c = s2 * 16 + 2 * t + ((e >> 1) << 3);
        const bool in = j < Lk;
        kfr[s2][e] = in ? ld_row2(kb + (long long)j * ldkv + c) : 0u;
        vfr[s2][e] = in ? ld_row2(vb + (long long)j * ldkv + c) : 0u;
      }
    }
  }

  float dkacc[D / 8][4], dvacc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) {
    dkacc[i][0] = dkacc[i][1] = dkacc[i][2] = dkacc[i][3] = 0.f;
    dvacc[i][0] = dvacc[i][1] = dvacc[i][2] = dvacc[i][3] = 0.f;
  }

  for (int q0 = qbeg; q0 < Lq; q0 += BR) {
    put_tile<BR, D, PR, NT>(q_s, pq);
    put_tile<BR, D, PR, NT>(do_s, pdo);
    if (threadIdx.x < BR) {
      const int r = q0 + threadIdx.x;
      lse_s[threadIdx.x] = r < Lq ? lseb[r] : neg_inf();
      di_s[threadIdx.x] = r < Lq ? deltab[r] : 0.f;
    }
    __syncthreads();
    if (q0 + BR < Lq) {  // next tile's loads in flight during this tile's work
      fetch_tile<BR, D, PR, NT>(pq, qb, q0 + BR, Lq, ldq);
      fetch_tile<BR, D, PR, NT>(pdo, dob, q0 + BR, Lq, ld);
    }

    // Dropout keep bits of this thread's BR/2 scores (see the forward kernel).
    unsigned int kbits = 0xffffffffu;
    if (drop) {
      kbits = 0u;
#pragma unroll
      for (int bit = 0; bit < BR / 2; ++bit) {
        const int nt = bit >> 2, e = bit & 3;
        const int j = k0 + kw + g + ((e >> 1) << 3);
        const int r = q0 + nt * 8 + 2 * t + (e & 1);
        kbits |= (unsigned int)fb_dropout_keep_k(key, (drop_base + r) * Lk + j, dropout_p) << bit;
      }
    }

    // S^T = K·Q^T and dP^T = V·dO^T (16 keys x BR queries per warp).
    float st[BR / 8][4], dpt[BR / 8][4];
#pragma unroll
    for (int nt = 0; nt < BR / 8; ++nt) {
      st[nt][0] = st[nt][1] = st[nt][2] = st[nt][3] = 0.f;
      dpt[nt][0] = dpt[nt][1] = dpt[nt][2] = dpt[nt][3] = 0.f;
    }
#pragma unroll
    for (int ks = 0; ks < D / 8; ks += 2) {
      const int c0 = ks * 8 + 2 * t;
      const int f = kKvRegs ? ks / 2 : 0;
      const unsigned int ka0 = kKvRegs ? kfr[f][0] : ld_row2(&k_s[(kw + g) * S + c0]);
      const unsigned int ka1 = kKvRegs ? kfr[f][1] : ld_row2(&k_s[(kw + g + 8) * S + c0]);
      const unsigned int ka2 = kKvRegs ? kfr[f][2] : ld_row2(&k_s[(kw + g) * S + c0 + 8]);
      const unsigned int ka3 = kKvRegs ? kfr[f][3] : ld_row2(&k_s[(kw + g + 8) * S + c0 + 8]);
      const unsigned int va0 = kKvRegs ? vfr[f][0] : ld_row2(&v_s[(kw + g) * S + c0]);
      const unsigned int va1 = kKvRegs ? vfr[f][1] : ld_row2(&v_s[(kw + g + 8) * S + c0]);
      const unsigned int va2 = kKvRegs ? vfr[f][2] : ld_row2(&v_s[(kw + g) * S + c0 + 8]);
      const unsigned int va3 = kKvRegs ? vfr[f][3] : ld_row2(&v_s[(kw + g + 8) * S + c0 + 8]);
#pragma unroll
      for (int nt = 0; nt < BR / 8; ++nt) {
        // B[kk][n] = Q[query n][d kk] (resp. dO): contiguous along d.
        const __half* qr = &q_s[(nt * 8 + g) * S + c0];
        const __half* dr = &do_s[(nt * 8 + g) * S + c0];
        mma_k16(st[nt], ka0, ka1, ka2, ka3, ld_row2(qr), ld_row2(qr + 8));
        mma_k16(dpt[nt], va0, va1, va2, va3, ld_row2(dr), ld_row2(dr + 8));
      }
    }

    // P^T = exp(score - lse), dS^T = P^T ∘ (Z ∘ dP^T - delta) in place, and P^T ∘ Z for dV.
#pragma unroll
    for (int nt = 0; nt < BR / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int keyl = kw + g + ((e >> 1) << 3);
        const int ql = nt * 8 + 2 * t + (e & 1);
        const int j = k0 + keyl;
        const int r = q0 + ql;
        const float lrow = lse_s[ql];
        const bool ok = keepk[e >> 1] && r < Lq && (!causal || j <= r + off) && lrow > kNegThresh;
        float p = 0.f;
        if (ok) {
          float sc = st[nt][e] * scale;
          if (biash) sc += biash[(long long)r * Lk + j];
          p = __expf(fmaxf(sc, kNeg) - lrow);
        }
        float z = 1.f;
        if (drop) z = ((kbits >> (nt * 4 + e)) & 1u) ? rkeep : 0.f;
        // Exactly 0 where the score is not allowed (masked, causal, or past Lq / Lk):
        // with an inf/NaN in out or dout (fp16 overflow, a step the scaler skips),
        // 0 * NaN would otherwise pass `ds != 0` and send dbias atomics out of range.
        const float ds = ok ? p * (z * dpt[nt][e] - di_s[ql]) : 0.f;
        st[nt][e] = p * z;
        dpt[nt][e] = ds;
        if (dbiash && ds != 0.f) atomicAdd(&dbiash[(long long)r * Lk + j], ds);
        ds_s[ql * SD + keyl] = __float2half_rn(ds);
      }
    }

    // dV += P^T·dO and dK += dS^T·Q (scale applied at the end); accumulator fragments of
    // P^T / dS^T for queries nt*8.. are the A fragments of k-step nt.
#pragma unroll
    for (int nt = 0; nt < BR / 8; nt += 2) {
      const unsigned int pa0 = pack2(st[nt][0], st[nt][1]);
      const unsigned int pa1 = pack2(st[nt][2], st[nt][3]);
      const unsigned int pa2 = pack2(st[nt + 1][0], st[nt + 1][1]);
      const unsigned int pa3 = pack2(st[nt + 1][2], st[nt + 1][3]);
      const unsigned int sa0 = pack2(dpt[nt][0], dpt[nt][1]);
      const unsigned int sa1 = pack2(dpt[nt][2], dpt[nt][3]);
      const unsigned int sa2 = pack2(dpt[nt + 1][0], dpt[nt + 1][1]);
      const unsigned int sa3 = pack2(dpt[nt + 1][2], dpt[nt + 1][3]);
#pragma unroll
      for (int dn = 0; dn < D / 8; dn += 4) {
        // B[kk][n] = dO[query kk][d n] (resp. Q): transposed loads, queries nt*8.. and +8.
        const int off_s = (nt * 8 + (lane & 7)) * S + (dn + (lane >> 3)) * 8;
        unsigned int bo[4], bo2[4], bq[4], bq2[4];
        ldsm_x4_trans(bo, &do_s[off_s]);
        ldsm_x4_trans(bo2, &do_s[off_s + 8 * S]);
        ldsm_x4_trans(bq, &q_s[off_s]);
        ldsm_x4_trans(bq2, &q_s[off_s + 8 * S]);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          mma_k16(dvacc[dn + i], pa0, pa1, pa2, pa3, bo[i], bo2[i]);
          mma_k16(dkacc[dn + i], sa0, sa1, sa2, sa3, bq[i], bq2[i]);
        }
      }
    }
    __syncthreads();  // ds_s complete

    // dQ[BR x D] += scale · dS[BR x KB] · K[KB x D]; warp = (row group, column slice).
    {
      const int rg = warp % RG, cs = warp / RG;
      float dq[NC / 8][4];
#pragma unroll
      for (int i = 0; i < NC / 8; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;
#pragma unroll
      for (int ks = 0; ks < KB / 8; ks += 2) {
        const __half* r0 = &ds_s[(rg * 16 + g) * SD + ks * 8 + 2 * t];
        const __half* r8 = r0 + 8 * SD;
        const unsigned int a0 = ld_row2(r0), a1 = ld_row2(r8);
        const unsigned int a2 = ld_row2(r0 + 8), a3 = ld_row2(r8 + 8);
        if (NC == 16) {
          // One x4 load: blocks (keys ks*8.., cols 0-7), (.., cols 8-15), then keys +8.
          const __half* kr = &k_s[(ks * 8 + (lane & 7) + ((lane >> 4) << 3)) * S + cs * NC +
                                  ((lane >> 3) & 1) * 8];
          unsigned int bk[4];
          ldsm_x4_trans(bk, kr);
          mma_k16(dq[0], a0, a1, a2, a3, bk[0], bk[2]);
          mma_k16(dq[1], a0, a1, a2, a3, bk[1], bk[3]);
        }
        constexpr int kDn = NC % 32 == 0 ? NC / 8 : 0;  // x4 loads of four column blocks
#pragma unroll
        for (int dn = 0; dn < kDn; dn += 4) {
          // B[kk][n] = K[key kk][d n]: transposed loads, keys ks*8.. and +8.
          const __half* kr = &k_s[(ks * 8 + (lane & 7)) * S + cs * NC + (dn + (lane >> 3)) * 8];
          unsigned int bk[4], bk2[4];
          ldsm_x4_trans(bk, kr);
          ldsm_x4_trans(bk2, kr + 8 * S);
#pragma unroll
          for (int i = 0; i < 4; ++i) mma_k16(dq[dn + i], a0, a1, a2, a3, bk[i], bk2[i]);
        }
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = q0 + rg * 16 + g + 8 * i;
        if (r >= Lq) continue;
        float* dqrow = dq_accum + ((long long)b * Lq + r) * ld + (long long)h * D + cs * NC;
#pragma unroll
        for (int dn = 0; dn < NC / 8; ++dn) {
          atomic_add2(dqrow + dn * 8 + 2 * t, scale * dq[dn][2 * i], scale * dq[dn][2 * i + 1]);
        }
      }
    }
    __syncthreads();  // before the next tile overwrites q_s, do_s, ds_s
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int j = k0 + kw + g + 8 * i;
    if (j >= Lk) continue;
    const long long base = ((long long)b * Lk + j) * ldkv + (long long)h * D;
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) {
      *reinterpret_cast<__half2*>(dk + base + dn * 8 + 2 * t) =
          __floats2half2_rn(scale * dkacc[dn][2 * i], scale * dkacc[dn][2 * i + 1]);
      *reinterpret_cast<__half2*>(dv + base + dn * 8 + 2 * t) =
          __floats2half2_rn(dvacc[dn][2 * i], dvacc[dn][2 * i + 1]);
    }
  }
}

}  // namespace fbattn

// Turing only: the D <= 64 forward fits 128 registers with no spills there, which gives 4
// blocks (16 warps) per T4 SM instead of 3; sm_80+ would spill at 128, so no cap there.
// (An explicit minimum of 1 is not the same as none: ptxas then takes far more registers.)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define FB_FWD_BOUNDS_SMALL_D __launch_bounds__(fbattn::kThreads, 4)
#else
#define FB_FWD_BOUNDS_SMALL_D __launch_bounds__(fbattn::kThreads)
#endif

#define FB_ATTN_FWD(NAME, D, BOUNDS)                                                          \
  extern "C" __global__ void BOUNDS NAME(                                                     \
      const __half* q, const __half* k, const __half* v, const int* key_mask,                \
      const float* bias, __half* out, float* lse, int B, int H, int Lq, int Lk, float scale, \
      int causal, float dropout_p, unsigned long long key, int ldq, int ldkv) {              \
    fbattn::attn_fwd<D>(q, k, v, key_mask, bias, out, lse, B, H, Lq, Lk, scale, causal,      \
                        dropout_p, key, ldq, ldkv);                                          \
  }

#define FB_ATTN_BWD(NAME, D, BR, NW)                                                          \
  extern "C" __global__ void __launch_bounds__(NW * 32) NAME(                                 \
      const __half* q, const __half* k, const __half* v, const __half* dout, const float* lse, \
      const float* delta, const int* key_mask, const float* bias, __half* dk, __half* dv,     \
      float* dq_accum, float* dbias, int B, int H, int Lq, int Lk, float scale, int causal,   \
      float dropout_p, unsigned long long key, int ldq, int ldkv) {                           \
    fbattn::attn_bwd<D, BR, NW>(q, k, v, dout, lse, delta, key_mask, bias, dk, dv, dq_accum,  \
                                dbias, B, H, Lq, Lk, scale, causal, dropout_p, key, ldq,      \
                                ldkv);                                                        \
  }

FB_ATTN_FWD(fb_attn_fwd_f16, 64, FB_FWD_BOUNDS_SMALL_D)
FB_ATTN_FWD(fb_attn_fwd_f16_d32, 32, FB_FWD_BOUNDS_SMALL_D)
FB_ATTN_FWD(fb_attn_fwd_f16_d128, 128, __launch_bounds__(fbattn::kThreads))
FB_ATTN_BWD(fb_attn_bwd_f16, 64, 32, 4)
FB_ATTN_BWD(fb_attn_bwd_f16_d32, 32, 64, 4)
FB_ATTN_BWD(fb_attn_bwd_f16_d128, 128, 16, 4)
FB_ATTN_BWD(fb_attn_bwd_f16_k128, 64, 32, 8)
#define FB_ATTN_HAS_BWD_K128 1  // dev/cuda/attn_check: earlier kernel copies lack it

// delta[b,h,i] = Σ_d dout·out (one warp per row), plus zero-fill of the atomic targets.
extern "C" __global__ void __launch_bounds__(128)
    fb_attn_bwd_preprocess_f16(const __half* out, const __half* dout, float* delta,
                               float* dq_accum, float* dbias, int B, int H, int Lq, int Lk,
                               int D) {
  const long long nthreads = (long long)gridDim.x * blockDim.x;
  const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long ndq = (long long)B * Lq * H * D;
  for (long long i = tid; i < ndq; i += nthreads) dq_accum[i] = 0.f;
  if (dbias) {
    const long long nb = (long long)H * Lq * Lk;
    for (long long i = tid; i < nb; i += nthreads) dbias[i] = 0.f;
  }
  const long long row = (long long)blockIdx.x * 4 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= (long long)B * H * Lq) return;
  const int i = (int)(row % Lq);
  const int h = (int)((row / Lq) % H);
  const long long b = row / ((long long)Lq * H);
  const long long base = ((b * Lq + i) * H + h) * D;
  float acc = 0.f;
  for (int d = lane; d < D; d += 32) {
    acc += __half2float(out[base + d]) * __half2float(dout[base + d]);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) delta[row] = acc;
}

extern "C" __global__ void __launch_bounds__(256)
    fb_attn_dq_cast_f16(const float* dq_accum, __half* dq, int n, int hd, int ldq) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dq[(long long)(i / hd) * ldq + i % hd] = __float2half_rn(dq_accum[i]);
}
