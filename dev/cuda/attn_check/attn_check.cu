// Standalone correctness + speed harness for kernels/attention.cu (CUDA runtime only, no Rust).
// Why: the fused attention kernels were written on a machine without a GPU; this program is
// the one shot that proves them on a real card. Every case runs the fp16 kernels on random
// inputs and compares out, lse, dq, dk, dv, dbias with a CPU reference in double (plain
// loops, easy to trust), by ‖x−ref‖/‖ref‖ ≤ 1e-2; all outputs and workspaces are poisoned
// with NaN (0xFF bytes) before launch and any NaN fails. On failure it prints the worst
// elements with their decoded indices so a layout bug can be told from a masking bug.
// Then it times forward and forward+backward (cudaEvent, median) at the model shapes.
// q/k/v live in one device buffer and dq/dk/dv in another (attn_ref.h qkv_layout), so the
// same code runs the plain layout (row stride H*D), rows with gaps and the packed QKV
// layout of a fused projection; gradient gaps hold a sentinel that must survive.
//
// Usage: attn_check [--quick] [--only SUBSTR] [--bench-only] [--no-bench] [--reps N]
//                   [--bwd-k128]   (D=64 backward: fb_attn_bwd_f16_k128, 128-key tiles)
// FB_ATTN_SRC: another copy of the kernels (run.sh's ATTN_PREV_SRC A/B timing of an
// earlier version). A copy from before the row strides (git 90f5fcd: no ldq/ldkv, 3-argument
// dq_cast) is recognised by its kernels' arity: it is called the old way and the cases that
// need strides are skipped.
#ifndef FB_ATTN_SRC
#define FB_ATTN_SRC "../../../kernels/attention.cu"
#endif
#include FB_ATTN_SRC
#include "attn_ref.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#define CK(x)                                                                        \
  do {                                                                               \
    cudaError_t e_ = (x);                                                            \
    if (e_ != cudaSuccess) {                                                         \
      fprintf(stderr, "CUDA error '%s' at %s:%d: %s\n", #x, __FILE__, __LINE__,      \
              cudaGetErrorString(e_));                                               \
      exit(2);                                                                       \
    }                                                                                \
  } while (0)

// The kernels' ABI: with row strides, fwd/bwd end in (..., key, ldq, ldkv) and dq_cast is
// (dq_accum, dq, n, hd, ldq); before them (an FB_ATTN_SRC from git 90f5fcd) neither.
template <class... P>
constexpr int kernel_arity(void (*)(P...)) {
  return sizeof...(P);
}
constexpr bool kRowStrides = kernel_arity(fb_attn_dq_cast_f16) == 5;

// Launches kern with args, plus the two trailing stride arguments when it takes them.
template <class... P, class... A>
static void launch_strided(void (*kern)(P...), dim3 grid, dim3 block, int s0, int s1,
                           A... args) {
  if constexpr (sizeof...(P) == sizeof...(A) + 2)
    kern<<<grid, block>>>(args..., s0, s1);
  else
    kern<<<grid, block>>>(args...);
}

struct Dev {
  QkvLayout lay{};
  __half *in = nullptr, *grad = nullptr;  // q/k/v and dq/dk/dv arenas (lay)
  __half *q = nullptr, *k = nullptr, *v = nullptr, *out = nullptr, *dout = nullptr;
  __half *dq = nullptr, *dk = nullptr, *dv = nullptr;
  float *lse = nullptr, *delta = nullptr, *dq_acc = nullptr, *bias = nullptr, *dbias = nullptr;
  int* mask = nullptr;
  size_t workspace_bytes = 0;
};

static void alloc(Dev& d, const Case& c) {
  d.lay = qkv_layout(c);
  CK(cudaMalloc(&d.in, d.lay.size * 2));
  CK(cudaMalloc(&d.grad, d.lay.size * 2));
  d.q = d.in + d.lay.off_q;
  d.k = d.in + d.lay.off_k;
  d.v = d.in + d.lay.off_v;
  d.dq = d.grad + d.lay.off_q;
  d.dk = d.grad + d.lay.off_k;
  d.dv = d.grad + d.lay.off_v;
  CK(cudaMalloc(&d.out, nq(c) * 2));
  CK(cudaMalloc(&d.dout, nq(c) * 2));
  CK(cudaMalloc(&d.lse, nrow(c) * 4));
  CK(cudaMalloc(&d.delta, nrow(c) * 4));
  CK(cudaMalloc(&d.dq_acc, nq(c) * 4));
  d.workspace_bytes = nrow(c) * 8 + nq(c) * 4;
  if (c.bias) {
    CK(cudaMalloc(&d.bias, nbias(c) * 4));
    CK(cudaMalloc(&d.dbias, nbias(c) * 4));
    d.workspace_bytes += nbias(c) * 4;
  }
  if (!c.lens.empty()) CK(cudaMalloc(&d.mask, (size_t)c.B * c.Lk * 4));
}

static void release(Dev& d) {
  void* ps[] = {d.in, d.grad, d.out, d.dout, d.lse, d.delta, d.dq_acc, d.bias, d.dbias, d.mask};
  for (void* p : ps)
    if (p) CK(cudaFree(p));
  d = Dev();
}

// grad: the gradient arena's bits, from grad_poison (NaN under dq/dk/dv, sentinel in gaps).
static void poison(Dev& d, const Case& c, const std::vector<uint16_t>& grad) {
  CK(cudaMemset(d.out, 0xFF, nq(c) * 2));
  CK(cudaMemcpy(d.grad, grad.data(), grad.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemset(d.lse, 0xFF, nrow(c) * 4));
  CK(cudaMemset(d.delta, 0xFF, nrow(c) * 4));
  CK(cudaMemset(d.dq_acc, 0xFF, nq(c) * 4));
  if (d.dbias) CK(cudaMemset(d.dbias, 0xFF, nbias(c) * 4));
}

static unsigned cdiv(long long a, long long b) { return (unsigned)((a + b - 1) / b); }

static bool g_bwd_k128 = false;  // --bwd-k128

static void launch_fwd(const Dev& d, const Case& c) {
  dim3 grid(cdiv(c.Lq, 64), c.H, c.B), block(128);
  const int causal = c.causal ? 1 : 0;
#define FWD_ARGS                                                                         \
  grid, block, d.lay.ldq, d.lay.ldkv, (const __half*)d.q, (const __half*)d.k,             \
      (const __half*)d.v, (const int*)d.mask, (const float*)d.bias, d.out, d.lse, c.B, c.H, \
      c.Lq, c.Lk, c.scale, causal, c.dropout, fb_dropout_key(c.seed)
  switch (c.D) {
    case 32: launch_strided(fb_attn_fwd_f16_d32, FWD_ARGS); break;
    case 64: launch_strided(fb_attn_fwd_f16, FWD_ARGS); break;
    case 128: launch_strided(fb_attn_fwd_f16_d128, FWD_ARGS); break;
    default: fprintf(stderr, "unsupported D=%d\n", c.D); exit(2);
  }
#undef FWD_ARGS
  CK(cudaGetLastError());
}

static void launch_bwd(const Dev& d, const Case& c) {
  const long long rows = (long long)nrow(c);
  fb_attn_bwd_preprocess_f16<<<cdiv(rows, 4), 128>>>(d.out, d.dout, d.delta, d.dq_acc, d.dbias,
                                                     c.B, c.H, c.Lq, c.Lk, c.D);
  CK(cudaGetLastError());
  const bool k128 = g_bwd_k128 && c.D == 64;
  dim3 grid(cdiv(c.Lk, k128 ? 128 : 64), c.H, c.B), block(k128 ? 256 : 128);
  const int causal = c.causal ? 1 : 0;
#define BWD_ARGS                                                                            \
  grid, block, d.lay.ldq, d.lay.ldkv, (const __half*)d.q, (const __half*)d.k,                \
      (const __half*)d.v, (const __half*)d.dout, (const float*)d.lse, (const float*)d.delta, \
      (const int*)d.mask, (const float*)d.bias, d.dk, d.dv, d.dq_acc, d.dbias, c.B, c.H, c.Lq, \
      c.Lk, c.scale, causal, c.dropout, fb_dropout_key(c.seed)
  switch (c.D) {
    case 32: launch_strided(fb_attn_bwd_f16_d32, BWD_ARGS); break;
    case 64:
#ifdef FB_ATTN_HAS_BWD_K128
      if (k128) {
        launch_strided(fb_attn_bwd_f16_k128, BWD_ARGS);
        break;
      }
#endif
      launch_strided(fb_attn_bwd_f16, BWD_ARGS);
      break;
    case 128: launch_strided(fb_attn_bwd_f16_d128, BWD_ARGS); break;
    default: fprintf(stderr, "unsupported D=%d\n", c.D); exit(2);
  }
#undef BWD_ARGS
  CK(cudaGetLastError());
  const int n = (int)nq(c);
  launch_strided(fb_attn_dq_cast_f16, dim3(cdiv(n, 256)), dim3(256), c.H * c.D, d.lay.ldq,
                 (const float*)d.dq_acc, d.dq, n);
  CK(cudaGetLastError());
}

static std::vector<float> to_host_half(const __half* d, size_t n) {
  std::vector<__half> h(n);
  CK(cudaMemcpy(h.data(), d, n * 2, cudaMemcpyDeviceToHost));
  std::vector<float> f(n);
  for (size_t i = 0; i < n; ++i) f[i] = __half2float(h[i]);
  return f;
}

static std::vector<float> to_host_float(const float* d, size_t n) {
  std::vector<float> f(n);
  CK(cudaMemcpy(f.data(), d, n * 4, cudaMemcpyDeviceToHost));
  return f;
}

static uint16_t half_bits(__half h) {
  uint16_t b;
  memcpy(&b, &h, 2);
  return b;
}
static float bits_half(uint16_t b) {
  __half h;
  memcpy(&h, &b, 2);
  return __half2float(h);
}

// fp16-rounded random values: as float (what the reference sees) and as fp16 bits.
static std::vector<float> rand_half(size_t n, std::mt19937& rng, float amp,
                                    std::vector<uint16_t>& bits) {
  std::uniform_real_distribution<float> u(-amp, amp);
  std::vector<float> f(n);
  bits.resize(n);
  for (size_t i = 0; i < n; ++i) {
    bits[i] = half_bits(__float2half(u(rng)));
    f[i] = bits_half(bits[i]);
  }
  return f;
}

static void upload_mask(const Dev& d, const Case& c) {
  if (c.lens.empty()) return;
  std::vector<int> m((size_t)c.B * c.Lk);
  for (int b = 0; b < c.B; ++b)
    for (int j = 0; j < c.Lk; ++j) m[(size_t)b * c.Lk + j] = j < c.lens[b] ? 1 : 0;
  CK(cudaMemcpy(d.mask, m.data(), m.size() * 4, cudaMemcpyHostToDevice));
}

// Relative errors of one case against the reference, worst over the batches compared.
struct Errs {
  double out = 0, lse = 0, dq = 0, dk = 0, dv = 0, dbias = 0;
};
static void compare_all(Errs& e, const Case& c, const Ref& r, const std::vector<float>& out,
                        const std::vector<float>& lse, const std::vector<float>& dq,
                        const std::vector<float>& dk, const std::vector<float>& dv,
                        const std::vector<float>& dbias) {
  const char* qn = "b,i,h,d";
  const char* kn = "b,j,h,d";
  std::vector<int> qd = {c.B, c.Lq, c.H, c.D}, kd = {c.B, c.Lk, c.H, c.D};
  e.out = std::max(e.out, compare("out", out, r.out, qd, qn, true));
  e.lse = std::max(e.lse, compare("lse", lse, r.lse, {c.B, c.H, c.Lq}, "b,h,i", true));
  e.dq = std::max(e.dq, compare("dq", dq, r.dq, qd, qn, true));
  e.dk = std::max(e.dk, compare("dk", dk, r.dk, kd, kn, true));
  e.dv = std::max(e.dv, compare("dv", dv, r.dv, kd, kn, true));
  if (c.bias)
    e.dbias = std::max(e.dbias, compare("dbias", dbias, r.dbias, {c.H, c.Lq, c.Lk}, "h,i,j", true));
}

static size_t count_nonfinite(const std::vector<float>& x) {
  size_t n = 0;
  for (float v : x) n += !std::isfinite(v);
  return n;
}

static bool run_check(const Case& c, unsigned seed) {
  if (!kRowStrides && has_strides(c)) {
    printf("ATTNCHECK case=%s skipped (kernels without row strides)\n", c.name.c_str());
    return true;
  }
  std::mt19937 rng(seed);
  Dev d;
  alloc(d, c);
  const int hd = c.H * c.D;
  std::vector<uint16_t> qb, kb, vb, dob;
  auto q = rand_half(nq(c), rng, 1.f, qb);
  auto k = rand_half(nk(c), rng, 1.f, kb);
  auto v = rand_half(nk(c), rng, 1.f, vb);
  auto dout = rand_half(nq(c), rng, 1.f, dob);
  {
    std::vector<uint16_t> in(d.lay.size, 0xFFFF);  // gaps: NaN, a read of one poisons
    scatter_rows(in, d.lay.off_q, d.lay.ldq, qb, hd);
    scatter_rows(in, d.lay.off_k, d.lay.ldkv, kb, hd);
    scatter_rows(in, d.lay.off_v, d.lay.ldkv, vb, hd);
    CK(cudaMemcpy(d.in, in.data(), in.size() * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d.dout, dob.data(), dob.size() * 2, cudaMemcpyHostToDevice));
  }
  std::vector<float> bias;
  if (c.bias) {
    std::uniform_real_distribution<float> u(-2.f, 2.f);
    bias.resize(nbias(c));
    for (auto& x : bias) x = u(rng);
    CK(cudaMemcpy(d.bias, bias.data(), bias.size() * 4, cudaMemcpyHostToDevice));
  }
  upload_mask(d, c);
  const std::vector<uint8_t> cov = qkv_coverage(c, d.lay);
  poison(d, c, grad_poison(cov));
  launch_fwd(d, c);
  CK(cudaDeviceSynchronize());
  launch_bwd(d, c);
  CK(cudaDeviceSynchronize());

  std::vector<uint16_t> grad(d.lay.size);
  CK(cudaMemcpy(grad.data(), d.grad, grad.size() * 2, cudaMemcpyDeviceToHost));
  const size_t gw = gap_writes(grad, cov);
  auto to_f = [](const std::vector<uint16_t>& b) {
    std::vector<float> f(b.size());
    for (size_t i = 0; i < b.size(); ++i) f[i] = bits_half(b[i]);
    return f;
  };
  const size_t qrows = (size_t)c.B * c.Lq, krows = (size_t)c.B * c.Lk;
  const auto gq = to_f(gather_rows(grad, d.lay.off_q, d.lay.ldq, qrows, hd));
  const auto gk = to_f(gather_rows(grad, d.lay.off_k, d.lay.ldkv, krows, hd));
  const auto gv = to_f(gather_rows(grad, d.lay.off_v, d.lay.ldkv, krows, hd));
  const auto gout = to_host_half(d.out, nq(c));
  const auto glse = to_host_float(d.lse, nrow(c));
  const auto gdb = c.bias ? to_host_float(d.dbias, nbias(c)) : std::vector<float>();

  // The double reference is too slow for B=32 on one core: a big case without bias (dbias
  // sums over the batch) is compared on its first, middle and last batch element, and
  // every element of out/dq/dk/dv must be finite (the NaN poison shows what was not written).
  Errs e;
  char sub[64] = "";
  size_t nonfinite = 0;
  if (c.B > 4 && !c.bias) {
    const int sel[3] = {0, c.B / 2, c.B - 1};
    for (int b : sel) {
      const Case cb = batch_case(c, b);
      const Ref r = reference(cb, batch_slice(q, c.B, b), batch_slice(k, c.B, b),
                              batch_slice(v, c.B, b), batch_slice(dout, c.B, b), bias);
      compare_all(e, cb, r, batch_slice(gout, c.B, b), batch_slice(glse, c.B, b),
                  batch_slice(gq, c.B, b), batch_slice(gk, c.B, b), batch_slice(gv, c.B, b), gdb);
    }
    nonfinite = count_nonfinite(gout) + count_nonfinite(gq) + count_nonfinite(gk) +
                count_nonfinite(gv);
    for (float x : glse) nonfinite += std::isnan(x);
    snprintf(sub, sizeof sub, " ref_batches=%d,%d,%d nonfinite=%zu", sel[0], sel[1], sel[2],
             nonfinite);
  } else {
    const Ref r = reference(c, q, k, v, dout, bias);
    compare_all(e, c, r, gout, glse, gq, gk, gv, gdb);
  }
  const double tol = 1e-2;
  const bool pass = e.out <= tol && e.lse <= tol && e.dq <= tol && e.dk <= tol &&
                    e.dv <= tol && (!c.bias || e.dbias <= tol) && gw == 0 && nonfinite == 0;
  char dbs[32];
  if (c.bias)
    snprintf(dbs, sizeof dbs, "%.3e", e.dbias);
  else
    snprintf(dbs, sizeof dbs, "n/a");
  printf(
      "ATTNCHECK case=%s B=%d H=%d Lq=%d Lk=%d D=%d causal=%d bias=%d mask=%d dropout=%.2f "
      "ldq=%d ldkv=%d%s out_err=%.3e lse_err=%.3e dq_err=%.3e dk_err=%.3e dv_err=%.3e "
      "dbias_err=%s gap_writes=%zu%s pass=%s\n",
      c.name.c_str(), c.B, c.H, c.Lq, c.Lk, c.D, (int)c.causal, (int)c.bias,
      (int)!c.lens.empty(), c.dropout, d.lay.ldq, d.lay.ldkv, c.packed ? " packed" : "", e.out,
      e.lse, e.dq, e.dk, e.dv, dbs, gw, sub, pass ? "true" : "false");
  fflush(stdout);
  release(d);
  return pass;
}

// ---------------------------------------------------------------- benchmark
// Uniform in [-amp, amp) from a hash of the index: inputs for the timings, made on the card.
__device__ inline void store_rand(__half* p, float v) { *p = __float2half(v); }
__device__ inline void store_rand(float* p, float v) { *p = v; }
template <class T>
__global__ void init_rand(T* p, size_t n, unsigned seed, float amp) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    unsigned x = (unsigned)i * 2654435761u ^ seed;
    x ^= x >> 15;
    x *= 2246822519u;
    x ^= x >> 13;
    store_rand(p + i, ((x & 0xFFFFFF) / 16777216.f * 2.f - 1.f) * amp);
  }
}

// Which code path the kernels were compiled for (a compute_75 PTX build JIT-compiled on an
// sm_90 card reports 750: the Turing m16n8k8 path).
__global__ void report_arch(int* out) {
#ifdef __CUDA_ARCH__
  *out = __CUDA_ARCH__;
#endif
}

static double median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

static void run_bench(const Case& c, int reps) {
  if (!kRowStrides && has_strides(c)) return;  // an earlier kernel copy: no such layout
  Dev d;
  alloc(d, c);
  init_rand<<<1024, 256>>>(d.in, d.lay.size, 1u, 1.f);  // q, k, v (and any gaps)
  init_rand<<<1024, 256>>>(d.dout, nq(c), 4u, 1.f);
  if (d.bias) init_rand<<<1024, 256>>>(d.bias, nbias(c), 5u, 2.f);
  CK(cudaGetLastError());
  upload_mask(d, c);
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  // Milliseconds of each of `reps` runs (forward, or forward + backward) after 3 warm-ups.
  auto timed = [&](bool with_bwd) {
    std::vector<float> t;
    for (int it = 0; it < reps + 3; ++it) {
      CK(cudaEventRecord(e0));
      launch_fwd(d, c);
      if (with_bwd) launch_bwd(d, c);
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      float ms = 0;
      CK(cudaEventElapsedTime(&ms, e0, e1));
      if (it >= 3) t.push_back(ms);
    }
    return t;
  };
  const std::vector<float> tf = timed(false), tfb = timed(true);
  // The timed outputs must be finite too: a fast kernel writing NaN is not a result.
  auto lse = to_host_float(d.lse, nrow(c));
  std::vector<uint16_t> grad(d.lay.size);
  CK(cudaMemcpy(grad.data(), d.grad, grad.size() * 2, cudaMemcpyDeviceToHost));
  const auto dqb = gather_rows(grad, d.lay.off_q, d.lay.ldq, (size_t)c.B * c.Lq, c.H * c.D);
  std::vector<float> dq(dqb.size());
  for (size_t i = 0; i < dqb.size(); ++i) dq[i] = bits_half(dqb[i]);
  size_t bad = 0;
  for (float x : lse) bad += std::isnan(x);
  for (float x : dq) bad += !std::isfinite(x);
  const double fwd_flops = 4.0 * c.B * c.H * (double)c.Lq * c.Lk * c.D * (c.causal ? 0.5 : 1.0);
  const double fb_flops = fwd_flops * 3.5;
  const double mf = median(tf), mfb = median(tfb);
  printf(
      "ATTNBENCH case=%s B=%d H=%d Lq=%d Lk=%d D=%d fwd_ms=%.4f fwdbwd_ms=%.4f "
      "fwd_tflops=%.2f fwdbwd_tflops=%.2f workspace_mb=%.2f nonfinite_outputs=%zu\n",
      c.name.c_str(), c.B, c.H, c.Lq, c.Lk, c.D, mf, mfb, fwd_flops / (mf * 1e9),
      fb_flops / (mfb * 1e9), d.workspace_bytes / 1048576.0, bad);
  fflush(stdout);
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  release(d);
}

int main(int argc, char** argv) {
  bool quick = false, bench_only = false, no_bench = false;
  std::string only;
  int reps = 20;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--quick")) quick = true;
    else if (!strcmp(argv[i], "--bench-only")) bench_only = true;
    else if (!strcmp(argv[i], "--no-bench")) no_bench = true;
    else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--bwd-k128")) g_bwd_k128 = true;
  }
#ifndef FB_ATTN_HAS_BWD_K128
  if (g_bwd_k128) {
    fprintf(stderr, "--bwd-k128: these kernels have no fb_attn_bwd_f16_k128\n");
    return 2;
  }
#endif
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  int* d_arch = nullptr;
  int arch = 0;
  CK(cudaMalloc(&d_arch, sizeof(int)));
  CK(cudaMemset(d_arch, 0, sizeof(int)));
  report_arch<<<1, 1>>>(d_arch);
  CK(cudaGetLastError());
  CK(cudaMemcpy(&arch, d_arch, sizeof(int), cudaMemcpyDeviceToHost));
  CK(cudaFree(d_arch));
  printf("device: %s sm_%d%d SMs=%d kernel_code_path=__CUDA_ARCH__%d (%s)\n", prop.name,
         prop.major, prop.minor, prop.multiProcessorCount, arch,
         arch >= 800 ? "mma m16n8k16" : "Turing mma m16n8k8");
  const float s64 = 0.125f, s32 = 0.17677669f, s128 = 0.08838835f;
  std::vector<int> var384(32);
  // SQuAD-like padding to 384: lengths 150..384 (torch_attn.py uses the same formula).
  for (int b = 0; b < 32; ++b) var384[b] = 150 + (b * 37) % 235;
  std::vector<Case> cases = {
      {"tiny_64x64", 1, 1, 64, 64, 64, s64, false, false, {}},
      {"tiny_causal_bias_64", 1, 2, 64, 64, 64, 1.f, true, true, {}},
      {"distilbert_384_pad", 2, 12, 384, 384, 64, s64, false, false, {384, 300}},
      {"t5_enc_512_bias", 2, 8, 512, 512, 64, 1.f, false, true, {512, 450}},
      {"t5_dec_128_causal_bias", 2, 8, 128, 128, 64, 1.f, true, true, {}},
      {"t5_cross_128x512_mask", 2, 8, 128, 512, 64, 1.f, false, false, {512, 333}},
      {"odd_1x7", 2, 3, 1, 7, 64, 1.f, false, true, {7, 3}},
      {"odd_7x129_causal", 2, 3, 7, 129, 64, s64, true, true, {129, 100}},
      {"odd_129x383", 2, 3, 129, 383, 64, 1.f, false, true, {383, 200}},
      {"odd_383x129", 2, 3, 383, 129, 64, s64, false, false, {129, 1}},
      {"fully_masked_batch", 2, 2, 65, 70, 64, 1.f, false, true, {70, 0}},
      {"causal_lq_gt_lk", 2, 2, 9, 5, 64, 1.f, true, true, {}},
      {"d32_200x200", 2, 4, 200, 200, 32, s32, false, true, {200, 123}},
      {"d32_causal_129", 1, 2, 129, 129, 32, 1.f, true, false, {}},
      {"d128_150x200_causal", 2, 4, 150, 200, 128, s128, true, true, {200, 177}},
      {"d128_200x150", 2, 2, 200, 150, 128, 1.f, false, false, {150, 90}},
      {"dropout_t5_enc_256_bias", 2, 4, 256, 256, 64, 1.f, false, true, {256, 190}, 0.1f, 42ull},
      {"dropout_distilbert_129", 2, 3, 129, 129, 64, s64, false, false, {129, 77}, 0.1f, 7ull},
      {"dropout_causal_d32_100", 1, 2, 100, 100, 32, 1.f, true, true, {}, 0.3f, 1234567ull},
      {"dropout_d128_100x150", 2, 2, 100, 150, 128, s128, false, true, {150, 111}, 0.2f, 5ull},
      // Row strides: packed = q, k, v the column blocks of one [B, L, 3, H, D] buffer (fused
      // QKV projection), dq, dk, dv written into one such gradient buffer; gaps = unused
      // halves after each row (NaN in the inputs, a sentinel in the gradients that must stay).
      as_packed({"packed_distilbert_b32_384_mask", 32, 12, 384, 384, 64, s64, false, false,
                 var384}),
      as_packed({"packed_odd_129_dropout", 2, 3, 129, 129, 64, s64, false, false, {129, 77},
                 0.1f, 11ull}),
      as_packed({"packed_gap16_d128_causal_bias_150", 2, 2, 150, 150, 128, s128, true, true, {}},
                16),
      as_packed({"packed_gap8_d32_200_mask", 2, 4, 200, 200, 32, s32, false, false, {200, 61}},
                8),
      with_gaps({"gaps_cross_129x383_bias", 2, 3, 129, 383, 64, 1.f, false, true, {383, 200}},
                16, 40),
  };
  int failed = 0, run = 0;
  if (!bench_only) {
    unsigned seed = 1234;
    for (const Case& c : cases) {
      ++seed;
      if (!only.empty() && c.name.find(only) == std::string::npos) continue;
      if (quick && (size_t)c.B * c.H * c.Lq * c.Lk > 4u * 1024 * 1024) continue;
      ++run;
      if (!run_check(c, seed)) ++failed;
    }
    printf("ATTNCHECK summary: %d/%d passed\n", run - failed, run);
  }
  if (!quick && !no_bench) {
    std::vector<int> full384(32, 384), full512(16, 512);
    std::vector<Case> bench = {
        {"distilbert_b32_384", 32, 12, 384, 384, 64, s64, false, false, full384},
        {"t5_enc_b16_512_bias", 16, 8, 512, 512, 64, 1.f, false, true, full512},
        {"t5_dec_b16_128_causal_bias", 16, 8, 128, 128, 64, 1.f, true, true, {}},
        {"t5_cross_b16_128x512", 16, 8, 128, 512, 64, 1.f, false, false, full512},
        {"distilbert_b32_384_varlen", 32, 12, 384, 384, 64, s64, false, false, var384},
        // The same as distilbert_b32_384, q/k/v/dq/dk/dv in the packed [B, L, 3, H, D] layout.
        as_packed({"distilbert_b32_384_packed", 32, 12, 384, 384, 64, s64, false, false,
                   full384}),
        {"distilbert_b32_384_dropout0.1", 32, 12, 384, 384, 64, s64, false, false, full384, 0.1f,
         99ull},
        {"t5_enc_b16_512_bias_dropout0.1", 16, 8, 512, 512, 64, 1.f, false, true, full512, 0.1f,
         99ull},
    };
    for (const Case& c : bench) {
      if (!only.empty() && c.name.find(only) == std::string::npos) continue;
      run_bench(c, reps);
    }
  }
  return failed ? 1 : 0;
}
