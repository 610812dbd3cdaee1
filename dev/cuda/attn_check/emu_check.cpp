// CPU emulation of kernels/attention.cu, for machines without a GPU.
// Why: the kernels depend on warp-level details (mma fragment layouts, shuffles, barriers)
// that a desk check can miss, and the GPU is lent for one short try. Here every CUDA thread
// is a std::thread, __syncthreads is a block-wide std::barrier, shuffles and the
// mma.m16n8k8 go through a per-warp exchange, and the MMA is evaluated from the PTX ISA's
// fragment tables (written out independently below), so a fragment or indexing bug shows up
// as a wrong result against the double reference, exactly as attn_check.cu would on a GPU.
// fp16 rounding uses _Float16 (round-to-nearest-even, like the GPU's __float2half_rn);
// __expf is exact expf here, so errors are a bit smaller than on the GPU.
//
// Build: g++ -std=c++20 -O1 -pthread emu_check.cpp -o emu_check   (tiny shapes only: slow)
// That emulates the sm_75 code (pairs of m16n8k8); add -DFB_ATTN_EMU_K16 for the sm_80+
// code (one m16n8k16 per k16 step).
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

// ---- the CUDA names attention.cu uses
#define FB_ATTN_EMULATE 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct __half {
  uint16_t bits;
};
struct __half2 {
  __half x, y;
};
struct uint4 {
  unsigned x, y, z, w;
};
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) {
  return {x, y, z, w};
}
static inline __half __float2half_rn(float f) {
  _Float16 h = (_Float16)f;
  __half r;
  std::memcpy(&r.bits, &h, 2);
  return r;
}
static inline __half __float2half(float f) { return __float2half_rn(f); }
static inline float __half2float(__half h) {
  _Float16 v;
  std::memcpy(&v, &h.bits, 2);
  return (float)v;
}
static inline unsigned short __half_as_ushort(__half h) { return h.bits; }
static inline __half2 __floats2half2_rn(float a, float b) {
  return {__float2half_rn(a), __float2half_rn(b)};
}
static inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}
static inline float fb_emu_expf(float x) { return std::exp(x); }
#define __expf fb_emu_expf
using std::max;
using std::min;

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};
thread_local Dim3 threadIdx, blockIdx;
Dim3 gridDim, blockDim;

struct WarpCtx {
  std::barrier<> bar{32};
  float xf[32];
  uint32_t a0[32], a1[32], a2[32], a3[32], b0[32], b1[32];
  const __half* rowp[32];
  float c[32][4];
};
thread_local WarpCtx* tw = nullptr;
thread_local int tlane = 0;
std::barrier<>* g_block_bar = nullptr;
std::mutex g_atomic_mu;

static inline void __syncthreads() { g_block_bar->arrive_and_wait(); }
std::atomic<int> g_or_flag{0};
static inline int __syncthreads_or(int pred) {
  if (pred) g_or_flag.store(1);
  g_block_bar->arrive_and_wait();
  const int r = g_or_flag.load();
  g_block_bar->arrive_and_wait();
  if (threadIdx.x == 0) g_or_flag.store(0);
  g_block_bar->arrive_and_wait();
  return r;
}
static inline float __shfl_xor_sync(unsigned, float v, int o) {
  tw->xf[tlane] = v;
  tw->bar.arrive_and_wait();
  const float r = tw->xf[tlane ^ o];
  tw->bar.arrive_and_wait();
  return r;
}
static inline float atomicAdd(float* p, float v) {
  std::lock_guard<std::mutex> lk(g_atomic_mu);
  const float old = *p;
  *p = old + v;
  return old;
}

static inline float lo_h(uint32_t r) { return __half2float(__half{(uint16_t)(r & 0xFFFF)}); }
static inline float hi_h(uint32_t r) { return __half2float(__half{(uint16_t)(r >> 16)}); }

// mma.sync.aligned.m16n8k{8,16}.row.col.f32.f16.f16.f32, fragments per the PTX ISA
// (g = groupID = lane >> 2, t = lane % 4):
// A (16xK): a0,a1 -> row g, cols 2t+{0,1}; a2,a3 -> row g+8, same cols (register 1);
//   k16 only: a4,a5 -> row g, cols 2t+8+{0,1}; a6,a7 -> row g+8, cols 2t+8+{0,1}
//   (registers 2 and 3).
// B (Kx8): b0,b1 -> rows 2t+{0,1}, col g; k16 only: b2,b3 -> rows 2t+8+{0,1}, col g.
// C (16x8): c0,c1 -> row g, cols 2t+{0,1}; c2,c3 -> row g+8.
// The m16n8k8 tables are the first half of the m16n8k16 ones, so one body serves both.
static void fb_emu_mma_k(int K, float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                         uint32_t b0, uint32_t b1) {
  WarpCtx& w = *tw;
  w.a0[tlane] = a0;
  w.a1[tlane] = a1;
  w.a2[tlane] = a2;
  w.a3[tlane] = a3;
  w.b0[tlane] = b0;
  w.b1[tlane] = b1;
  for (int i = 0; i < 4; ++i) w.c[tlane][i] = c[i];
  w.bar.arrive_and_wait();
  float A[16][16], B[16][8], C[16][8];
  for (int L = 0; L < 32; ++L) {
    const int g = L >> 2, t = L & 3;
    A[g][2 * t] = lo_h(w.a0[L]);
    A[g][2 * t + 1] = hi_h(w.a0[L]);
    A[g + 8][2 * t] = lo_h(w.a1[L]);
    A[g + 8][2 * t + 1] = hi_h(w.a1[L]);
    B[2 * t][g] = lo_h(w.b0[L]);
    B[2 * t + 1][g] = hi_h(w.b0[L]);
    if (K == 16) {
      A[g][2 * t + 8] = lo_h(w.a2[L]);
      A[g][2 * t + 9] = hi_h(w.a2[L]);
      A[g + 8][2 * t + 8] = lo_h(w.a3[L]);
      A[g + 8][2 * t + 9] = hi_h(w.a3[L]);
      B[2 * t + 8][g] = lo_h(w.b1[L]);
      B[2 * t + 9][g] = hi_h(w.b1[L]);
    }
    C[g][2 * t] = w.c[L][0];
    C[g][2 * t + 1] = w.c[L][1];
    C[g + 8][2 * t] = w.c[L][2];
    C[g + 8][2 * t + 1] = w.c[L][3];
  }
  const int g = tlane >> 2, t = tlane & 3;
  const int rr[4] = {g, g, g + 8, g + 8};
  const int cc[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
  for (int i = 0; i < 4; ++i) {
    float acc = C[rr[i]][cc[i]];
    for (int kk = 0; kk < K; ++kk) acc += A[rr[i]][kk] * B[kk][cc[i]];
    c[i] = acc;
  }
  w.bar.arrive_and_wait();
}
// The Turing path (pairs of m16n8k8).
static void fb_emu_mma(float c[4], uint32_t a0, uint32_t a1, uint32_t b0) {
  fb_emu_mma_k(8, c, a0, a1, 0, 0, b0, 0);
}
// The sm_80+ path (one m16n8k16 per k16 step; built with -DFB_ATTN_EMU_K16).
static void fb_emu_mma_k16(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                           uint32_t b0, uint32_t b1) {
  fb_emu_mma_k(16, c, a0, a1, a2, a3, b0, b1);
}

// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16: lane 8i + r supplies the address of row r
// of matrix i (8 contiguous halves). Without .trans lane 4r + w would receive row r's halves
// 2w, 2w+1; with .trans the matrix is transposed first, so lane 4r + w receives
// M_i[2w][r] (low) and M_i[2w+1][r] (high).
static void fb_emu_ldsm_x4_trans(uint32_t r[4], const __half* row) {
  WarpCtx& w = *tw;
  w.rowp[tlane] = row;
  w.bar.arrive_and_wait();
  const int rr = tlane >> 2, ww = tlane & 3;
  for (int i = 0; i < 4; ++i) {
    const uint32_t lo = w.rowp[8 * i + 2 * ww][rr].bits;
    const uint32_t hi = w.rowp[8 * i + 2 * ww + 1][rr].bits;
    r[i] = lo | (hi << 16);
  }
  w.bar.arrive_and_wait();
}

// cp.async.cg.shared.global (sm_80+ forward, -DFB_ATTN_EMU_K16): the copy happens at once;
// commit/wait are no-ops. This checks buffer indexing and zero-fill, not the overlap (a
// missing wait_group shows only on the GPU: run compute-sanitizer racecheck there).
static void fb_emu_cp_async16(__half* s, const __half* g, bool valid) {
  if (valid) std::memcpy(s, g, 16);
  else std::memset(s, 0, 16);
}

#include "../../../kernels/attention.cu"
#include "attn_ref.h"

template <class F>
static void launch(Dim3 grid, unsigned nthreads, F f) {
  gridDim = grid;
  blockDim = Dim3{nthreads, 1, 1};
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        std::barrier<> bb((std::ptrdiff_t)nthreads);
        g_block_bar = &bb;
        const unsigned nw = (nthreads + 31) / 32;
        std::vector<std::unique_ptr<WarpCtx>> warps;
        for (unsigned i = 0; i < nw; ++i) warps.emplace_back(new WarpCtx());
        std::vector<std::thread> ths;
        for (unsigned i = 0; i < nthreads; ++i) {
          ths.emplace_back([&, i] {
            threadIdx = Dim3{i, 0, 0};
            blockIdx = Dim3{x, y, z};
            tw = warps[i / 32].get();
            tlane = (int)(i % 32);
            f();
          });
        }
        for (auto& th : ths) th.join();
      }
}

static unsigned cdiv(long long a, long long b) { return (unsigned)((a + b - 1) / b); }

static std::vector<__half> to_half(const std::vector<float>& f) {
  std::vector<__half> h(f.size());
  for (size_t i = 0; i < f.size(); ++i) h[i] = __float2half_rn(f[i]);
  return h;
}
static std::vector<float> to_float(const std::vector<__half>& h) {
  std::vector<float> f(h.size());
  for (size_t i = 0; i < h.size(); ++i) f[i] = __half2float(h[i]);
  return f;
}
static std::vector<float> rand_f16(size_t n, std::mt19937& rng, float amp) {
  std::uniform_real_distribution<float> u(-amp, amp);
  std::vector<float> f(n);
  for (auto& x : f) x = __half2float(__float2half_rn(u(rng)));
  return f;
}

static std::vector<uint16_t> to_bits(const std::vector<float>& f) {
  std::vector<uint16_t> b(f.size());
  for (size_t i = 0; i < f.size(); ++i) b[i] = __float2half_rn(f[i]).bits;
  return b;
}
static std::vector<float> bits_to_float(const std::vector<uint16_t>& b) {
  std::vector<float> f(b.size());
  for (size_t i = 0; i < b.size(); ++i) f[i] = __half2float(__half{b[i]});
  return f;
}

// FB_EMU_BWD_K128=1: the D=64 backward runs as fb_attn_bwd_f16_k128 (8 warps, 128-key
// tiles, dS aliased on the Q/dO buffers) instead of fb_attn_bwd_f16 (4 warps, 64 keys).
static bool bwd_k128() {
  const char* e = std::getenv("FB_EMU_BWD_K128");
  return e != nullptr && e[0] == '1';
}
struct BwdKernel {
  decltype(&fb_attn_bwd_f16) f;
  unsigned keys, threads;  // keys per block, threads per block
};
static BwdKernel bwd_kernel(int D) {
  if (D == 32) return {fb_attn_bwd_f16_d32, 64, 128};
  if (D == 128) return {fb_attn_bwd_f16_d128, 64, 128};
  if (bwd_k128()) return {fb_attn_bwd_f16_k128, 128, 256};
  return {fb_attn_bwd_f16, 64, 128};
}

// q, k, v sit in one input arena and dq, dk, dv in one gradient arena (attn_ref.h
// qkv_layout: separate tensors, rows with gaps, or the packed QKV layout); the input gaps
// hold NaN, the gradient gaps a sentinel that must survive the run.
static bool run_case(const Case& c, unsigned seed) {
  std::mt19937 rng(seed);
  auto q = rand_f16(nq(c), rng, 1.f), k = rand_f16(nk(c), rng, 1.f);
  auto v = rand_f16(nk(c), rng, 1.f), dout = rand_f16(nq(c), rng, 1.f);
  std::vector<float> bias;
  if (c.bias) {
    std::uniform_real_distribution<float> u(-2.f, 2.f);
    bias.resize(nbias(c));
    for (auto& x : bias) x = u(rng);
  }
  std::vector<int> mask;
  if (!c.lens.empty()) {
    mask.resize((size_t)c.B * c.Lk);
    for (int b = 0; b < c.B; ++b)
      for (int j = 0; j < c.Lk; ++j) mask[(size_t)b * c.Lk + j] = j < c.lens[b];
  }
  const int hd = c.H * c.D;
  const QkvLayout lay = qkv_layout(c);
  const std::vector<uint8_t> cov = qkv_coverage(c, lay);
  std::vector<uint16_t> in(lay.size, 0xFFFF);
  scatter_rows(in, lay.off_q, lay.ldq, to_bits(q), hd);
  scatter_rows(in, lay.off_k, lay.ldkv, to_bits(k), hd);
  scatter_rows(in, lay.off_v, lay.ldkv, to_bits(v), hd);
  std::vector<uint16_t> grad = grad_poison(cov);
  const __half* hq = reinterpret_cast<const __half*>(in.data()) + lay.off_q;
  const __half* hk = reinterpret_cast<const __half*>(in.data()) + lay.off_k;
  const __half* hv = reinterpret_cast<const __half*>(in.data()) + lay.off_v;
  __half* dq = reinterpret_cast<__half*>(grad.data()) + lay.off_q;
  __half* dk = reinterpret_cast<__half*>(grad.data()) + lay.off_k;
  __half* dv = reinterpret_cast<__half*>(grad.data()) + lay.off_v;
  auto hdo = to_half(dout);
  const __half nanh = __half{0xFFFF};
  std::vector<__half> out(nq(c), nanh);
  std::vector<float> lse(nrow(c), NAN), delta(nrow(c), NAN), dqa(nq(c), NAN);
  std::vector<float> dbias(c.bias ? nbias(c) : 0, NAN);
  const float* bp = c.bias ? bias.data() : nullptr;
  float* dbp = c.bias ? dbias.data() : nullptr;
  const int* mp = mask.empty() ? nullptr : mask.data();
  const int causal = c.causal;
  auto fwd = c.D == 32 ? fb_attn_fwd_f16_d32 : c.D == 128 ? fb_attn_fwd_f16_d128 : fb_attn_fwd_f16;
  const BwdKernel bwd = bwd_kernel(c.D);
  launch(Dim3{cdiv(c.Lq, 64), (unsigned)c.H, (unsigned)c.B}, 128, [&] {
    fwd(hq, hk, hv, mp, bp, out.data(), lse.data(), c.B, c.H, c.Lq, c.Lk, c.scale, causal,
        c.dropout, fb_dropout_key(c.seed), lay.ldq, lay.ldkv);
  });
  launch(Dim3{cdiv((long long)nrow(c), 4), 1, 1}, 128, [&] {
    fb_attn_bwd_preprocess_f16(out.data(), hdo.data(), delta.data(), dqa.data(), dbp, c.B, c.H,
                               c.Lq, c.Lk, c.D);
  });
  launch(Dim3{cdiv(c.Lk, bwd.keys), (unsigned)c.H, (unsigned)c.B}, bwd.threads, [&] {
    bwd.f(hq, hk, hv, hdo.data(), lse.data(), delta.data(), mp, bp, dk, dv, dqa.data(), dbp, c.B,
        c.H, c.Lq, c.Lk, c.scale, causal, c.dropout, fb_dropout_key(c.seed), lay.ldq, lay.ldkv);
  });
  const int n = (int)nq(c);
  launch(Dim3{cdiv(n, 256), 1, 1}, 256,
         [&] { fb_attn_dq_cast_f16(dqa.data(), dq, n, hd, lay.ldq); });

  const Ref r = reference(c, q, k, v, dout, bias);
  std::vector<int> qd = {c.B, c.Lq, c.H, c.D}, kd = {c.B, c.Lk, c.H, c.D};
  const size_t qrows = (size_t)c.B * c.Lq, krows = (size_t)c.B * c.Lk;
  const auto gq = bits_to_float(gather_rows(grad, lay.off_q, lay.ldq, qrows, hd));
  const auto gk = bits_to_float(gather_rows(grad, lay.off_k, lay.ldkv, krows, hd));
  const auto gv = bits_to_float(gather_rows(grad, lay.off_v, lay.ldkv, krows, hd));
  const double eo = compare("out", to_float(out), r.out, qd, "b,i,h,d", true);
  const double el = compare("lse", lse, r.lse, {c.B, c.H, c.Lq}, "b,h,i", true);
  const double eq = compare("dq", gq, r.dq, qd, "b,i,h,d", true);
  const double ek = compare("dk", gk, r.dk, kd, "b,j,h,d", true);
  const double ev = compare("dv", gv, r.dv, kd, "b,j,h,d", true);
  const double eb = c.bias ? compare("dbias", dbias, r.dbias, {c.H, c.Lq, c.Lk}, "h,i,j", true) : 0;
  const size_t gw = gap_writes(grad, cov);
  const bool pass = eo <= 1e-2 && el <= 1e-2 && eq <= 1e-2 && ek <= 1e-2 && ev <= 1e-2 &&
                    eb <= 1e-2 && gw == 0;
  printf("EMUCHECK case=%s D=%d ldq=%d ldkv=%d%s out_err=%.3e lse_err=%.3e dq_err=%.3e "
         "dk_err=%.3e dv_err=%.3e dbias_err=%.3e gap_writes=%zu pass=%s\n",
         c.name.c_str(), c.D, lay.ldq, lay.ldkv, c.packed ? " packed" : "", eo, el, eq, ek, ev,
         eb, gw, pass ? "true" : "false");
  fflush(stdout);
  return pass;
}

// The dropout hash the kernels and the reference share (kernels/dropout.cuh) against the
// words the Rust copy asserts (src/backend/mod.rs dropout_tests::GOLDEN, from an
// independent transcription).
static bool dropout_golden() {
  const unsigned long long base[2] = {0ull, (1ull << 32) | 5ull};
  const unsigned long long want[2] = {0x108f841ec86e69aeull, 0x15fc12c89560c12full};
  bool ok = true;
  for (int w = 0; w < 2; ++w) {
    unsigned long long a = 0;
    for (int k = 0; k < 64; ++k)
      a |= (unsigned long long)fb_dropout_keep_k(fb_dropout_key(12345ull), base[w] + k, 0.5f) << k;
    ok = ok && a == want[w];
  }
  std::printf("EMUCHECK dropout_golden pass=%s\n", ok ? "true" : "false");
  return ok;
}

// attn_check.cu checks its B=32 case on three batch elements, each as a one-batch case
// (attn_ref.h batch_case: b_offset keeps the dropout hash indices). Each slice's
// reference must equal that batch element of the whole case's reference.
static bool ref_batch_slices() {
  const Case c = {"slices", 3, 2, 20, 24, 32, 0.5f, true, false, {24, 9, 17}, 0.3f, 4ull};
  std::mt19937 rng(5);
  auto q = rand_f16(nq(c), rng, 1.f), k = rand_f16(nk(c), rng, 1.f);
  auto v = rand_f16(nk(c), rng, 1.f), dout = rand_f16(nq(c), rng, 1.f);
  const Ref whole = reference(c, q, k, v, dout, {});
  double worst = 0;
  for (int b = 0; b < c.B; ++b) {
    const Ref r = reference(batch_case(c, b), batch_slice(q, c.B, b), batch_slice(k, c.B, b),
                            batch_slice(v, c.B, b), batch_slice(dout, c.B, b), {});
    const std::vector<double>* pairs[5][2] = {{&r.out, &whole.out}, {&r.lse, &whole.lse},
                                              {&r.dq, &whole.dq}, {&r.dk, &whole.dk},
                                              {&r.dv, &whole.dv}};
    for (auto& p : pairs) {
      const auto w = batch_slice(*p[1], c.B, b);
      for (size_t i = 0; i < w.size(); ++i)
        worst = std::max(worst, w[i] == (*p[0])[i] ? 0.0 : std::fabs(w[i] - (*p[0])[i]));
    }
  }
  const bool ok = worst == 0;
  std::printf("EMUCHECK ref_batch_slices golden max_diff=%.3e pass=%s\n", worst,
              ok ? "true" : "false");
  return ok;
}

// A NaN in dout (an fp16 overflow the loss scaler will skip) makes delta NaN; positions
// outside the score matrix (rows past Lq in the last query tile, keys past Lk) must still
// add nothing to dbias, or the atomics land past its end. dbias gets a guard region of
// sentinels after its H·Lq·Lk floats that must survive.
static bool nan_dout_keeps_dbias_in_range() {
  const Case c = {"nan_dout", 1, 2, 40, 70, 64, 1.f, false, true, {}};
  std::mt19937 rng(3);
  auto q = rand_f16(nq(c), rng, 1.f), k = rand_f16(nk(c), rng, 1.f);
  auto v = rand_f16(nk(c), rng, 1.f), dout = rand_f16(nq(c), rng, 1.f);
  // The last row of the last head: its keys past Lk are the last addresses of dbias.
  dout[((size_t)(c.Lq - 1) * c.H + (c.H - 1)) * c.D + 3] = NAN;
  std::vector<float> bias(nbias(c), 0.5f);
  const size_t guard = 64 * 64 * 2;
  const float sentinel = 12345.f;
  std::vector<float> dbias(nbias(c) + guard, sentinel);
  auto hq = to_half(q), hk = to_half(k), hv = to_half(v), hdo = to_half(dout);
  std::vector<__half> out(nq(c)), dk(nk(c)), dv(nk(c));
  std::vector<float> lse(nrow(c)), delta(nrow(c)), dqa(nq(c));
  const int hd = c.H * c.D;
  launch(Dim3{cdiv(c.Lq, 64), (unsigned)c.H, (unsigned)c.B}, 128, [&] {
    fb_attn_fwd_f16(hq.data(), hk.data(), hv.data(), nullptr, bias.data(), out.data(),
                    lse.data(), c.B, c.H, c.Lq, c.Lk, c.scale, 0, 0.f, 0ull, hd, hd);
  });
  launch(Dim3{cdiv((long long)nrow(c), 4), 1, 1}, 128, [&] {
    fb_attn_bwd_preprocess_f16(out.data(), hdo.data(), delta.data(), dqa.data(), dbias.data(),
                               c.B, c.H, c.Lq, c.Lk, c.D);
  });
  const BwdKernel bwd = bwd_kernel(c.D);
  launch(Dim3{cdiv(c.Lk, bwd.keys), (unsigned)c.H, (unsigned)c.B}, bwd.threads, [&] {
    bwd.f(hq.data(), hk.data(), hv.data(), hdo.data(), lse.data(), delta.data(),
                    nullptr, bias.data(), dk.data(), dv.data(), dqa.data(), dbias.data(), c.B,
                    c.H, c.Lq, c.Lk, c.scale, 0, 0.f, 0ull, hd, hd);
  });
  size_t touched = 0;
  for (size_t i = nbias(c); i < dbias.size(); ++i) touched += !(dbias[i] == sentinel);
  std::printf("EMUCHECK nan_dout_dbias_in_range golden guard_writes=%zu pass=%s\n", touched,
              touched == 0 ? "true" : "false");
  return touched == 0;
}

int main(int argc, char** argv) {
  const char* only = argc > 1 ? argv[1] : nullptr;
  const bool drop_ok = dropout_golden(), slices_ok = ref_batch_slices();
  const bool nan_ok = nan_dout_keeps_dbias_in_range();
  const bool golden_ok = drop_ok && slices_ok && nan_ok;
  const std::vector<Case> cases = {
      {"tiny_64x64", 1, 1, 64, 64, 64, 0.125f, false, false, {}},
      {"pad_bias_70x67", 2, 2, 70, 67, 64, 0.125f, false, true, {67, 30}},
      {"causal_bias_67", 1, 2, 67, 67, 64, 1.f, true, true, {}},
      {"causal_lq_gt_lk_masked_batch", 2, 1, 9, 5, 64, 1.f, true, true, {5, 0}},
      {"decode_1x7_causal", 2, 1, 1, 7, 64, 1.f, true, true, {7, 4}},
      {"d32_40x70", 1, 2, 40, 70, 32, 0.17677669f, false, true, {70}},
      {"d128_70x40_causal", 1, 1, 70, 40, 128, 0.08838835f, true, true, {}},
      {"d128_33x130_mask", 1, 1, 33, 130, 128, 1.f, false, false, {100}},
      {"dropout_pad_bias_70x67", 2, 2, 70, 67, 64, 0.125f, false, true, {67, 30}, 0.1f, 42ull},
      {"dropout_causal_d32_40", 1, 2, 40, 40, 32, 1.f, true, false, {}, 0.5f, 77ull},
      {"big_all_features_150x200", 2, 2, 150, 200, 64, 0.125f, true, true, {200, 131}, 0.15f,
       9ull},
      {"dropout_d128_40x70_bias", 1, 1, 40, 70, 128, 0.08838835f, false, true, {60}, 0.2f, 5ull},
      // Row strides. Packed: q, k, v are the column blocks of one [B, L, 3, H, D] buffer (a
      // fused QKV projection) and dq, dk, dv land in one such gradient buffer.
      as_packed({"packed_mask_70", 2, 2, 70, 70, 64, 0.125f, false, false, {70, 33}}),
      as_packed({"packed_dropout_d32_h3_67", 2, 3, 67, 67, 32, 0.17677669f, false, false,
                 {67, 40}, 0.2f, 31ull}),
      as_packed({"packed_causal_bias_d128_40", 2, 2, 40, 40, 128, 0.08838835f, true, true, {}}),
      // Gaps after each row (poisoned: NaN in the inputs, a sentinel in the gradients), with
      // ldq != ldkv and Lq != Lk so that a swapped or dropped stride shows.
      with_gaps({"gaps_cross_bias_70x67", 2, 2, 70, 67, 64, 0.125f, false, true, {67, 30}}, 16,
                40),
      as_packed({"packed_gap16_dropout_bias_70", 2, 1, 70, 70, 64, 0.125f, false, true,
                 {70, 51}, 0.1f, 8ull},
                16),
  };
  int failed = 0, run = 0;
  unsigned seed = 99;
  for (const Case& c : cases) {
    ++seed;
    if (only && c.name.find(only) == std::string::npos) continue;
    ++run;
    if (!run_case(c, seed)) ++failed;
  }
#ifdef FB_ATTN_EMU_K16
  const char* path = "sm80+ (m16n8k16)";
#else
  const char* path = "sm75 (m16n8k8)";
#endif
  printf("EMUCHECK summary [%s%s]: %d/%d passed\n", path,
         bwd_k128() ? ", D=64 backward: _k128" : "", run - failed, run);
  return failed || !golden_ok ? 1 : 0;
}
