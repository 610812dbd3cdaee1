// Standalone correctness + speed harness for kernels/attention.cu (CUDA runtime only, no Rust).
// Why: the fused attention kernels were written on a machine without a GPU; this program is
// the one shot that proves them on a real card. Every case runs the fp16 kernels on random
// inputs and compares out, lse, dq, dk, dv, dbias with a CPU reference in double (plain
// loops, easy to trust), by ‖x−ref‖/‖ref‖ ≤ 1e-2; all outputs and workspaces are poisoned
// with NaN (0xFF bytes) before launch and any NaN fails. On failure it prints the worst
// elements with their decoded indices so a layout bug can be told from a masking bug.
// Then it times forward and forward+backward (cudaEvent, median) at the model shapes.
//
// Usage: attn_check [--quick] [--only SUBSTR] [--bench-only] [--no-bench] [--reps N]
// FB_ATTN_SRC: another copy of the kernels (run.sh's ATTN_PREV_SRC A/B timing of an
// earlier version; its correctness lines are not meaningful if its interface differed).
#ifndef FB_ATTN_SRC
#define FB_ATTN_SRC "../../kernels/attention.cu"
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

struct Dev {
  __half *q = nullptr, *k = nullptr, *v = nullptr, *out = nullptr, *dout = nullptr;
  __half *dq = nullptr, *dk = nullptr, *dv = nullptr;
  float *lse = nullptr, *delta = nullptr, *dq_acc = nullptr, *bias = nullptr, *dbias = nullptr;
  int* mask = nullptr;
  size_t workspace_bytes = 0;
};

static void alloc(Dev& d, const Case& c) {
  CK(cudaMalloc(&d.q, nq(c) * 2));
  CK(cudaMalloc(&d.out, nq(c) * 2));
  CK(cudaMalloc(&d.dout, nq(c) * 2));
  CK(cudaMalloc(&d.dq, nq(c) * 2));
  CK(cudaMalloc(&d.k, nk(c) * 2));
  CK(cudaMalloc(&d.v, nk(c) * 2));
  CK(cudaMalloc(&d.dk, nk(c) * 2));
  CK(cudaMalloc(&d.dv, nk(c) * 2));
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
  void* ps[] = {d.q, d.k, d.v, d.out, d.dout, d.dq, d.dk, d.dv, d.lse, d.delta, d.dq_acc,
                d.bias, d.dbias, d.mask};
  for (void* p : ps)
    if (p) CK(cudaFree(p));
  d = Dev();
}

static void poison(Dev& d, const Case& c) {
  CK(cudaMemset(d.out, 0xFF, nq(c) * 2));
  CK(cudaMemset(d.dq, 0xFF, nq(c) * 2));
  CK(cudaMemset(d.dk, 0xFF, nk(c) * 2));
  CK(cudaMemset(d.dv, 0xFF, nk(c) * 2));
  CK(cudaMemset(d.lse, 0xFF, nrow(c) * 4));
  CK(cudaMemset(d.delta, 0xFF, nrow(c) * 4));
  CK(cudaMemset(d.dq_acc, 0xFF, nq(c) * 4));
  if (d.dbias) CK(cudaMemset(d.dbias, 0xFF, nbias(c) * 4));
}

static unsigned cdiv(long long a, long long b) { return (unsigned)((a + b - 1) / b); }

static void launch_fwd(const Dev& d, const Case& c) {
  dim3 grid(cdiv(c.Lq, 64), c.H, c.B), block(128);
  const int causal = c.causal ? 1 : 0;
#define FWD_ARGS \
  d.q, d.k, d.v, d.mask, d.bias, d.out, d.lse, c.B, c.H, c.Lq, c.Lk, c.scale, causal, c.dropout, ref_dropout_key(c.seed)
  switch (c.D) {
    case 32: fb_attn_fwd_f16_d32<<<grid, block>>>(FWD_ARGS); break;
    case 64: fb_attn_fwd_f16<<<grid, block>>>(FWD_ARGS); break;
    case 128: fb_attn_fwd_f16_d128<<<grid, block>>>(FWD_ARGS); break;
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
  dim3 grid(cdiv(c.Lk, 64), c.H, c.B), block(128);
  const int causal = c.causal ? 1 : 0;
#define BWD_ARGS                                                                          \
  d.q, d.k, d.v, d.dout, d.lse, d.delta, d.mask, d.bias, d.dk, d.dv, d.dq_acc, d.dbias, c.B, \
      c.H, c.Lq, c.Lk, c.scale, causal, c.dropout, ref_dropout_key(c.seed)
  switch (c.D) {
    case 32: fb_attn_bwd_f16_d32<<<grid, block>>>(BWD_ARGS); break;
    case 64: fb_attn_bwd_f16<<<grid, block>>>(BWD_ARGS); break;
    case 128: fb_attn_bwd_f16_d128<<<grid, block>>>(BWD_ARGS); break;
    default: fprintf(stderr, "unsupported D=%d\n", c.D); exit(2);
  }
#undef BWD_ARGS
  CK(cudaGetLastError());
  const int n = (int)nq(c);
  fb_attn_dq_cast_f16<<<cdiv(n, 256), 256>>>(d.dq_acc, d.dq, n);
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

// fp16-rounded random values, returned as float (what the reference sees) and uploaded.
static std::vector<float> upload_rand(__half* d, size_t n, std::mt19937& rng, float amp) {
  std::uniform_real_distribution<float> u(-amp, amp);
  std::vector<__half> h(n);
  std::vector<float> f(n);
  for (size_t i = 0; i < n; ++i) {
    h[i] = __float2half(u(rng));
    f[i] = __half2float(h[i]);
  }
  CK(cudaMemcpy(d, h.data(), n * 2, cudaMemcpyHostToDevice));
  return f;
}

static void upload_mask(const Dev& d, const Case& c) {
  if (c.lens.empty()) return;
  std::vector<int> m((size_t)c.B * c.Lk);
  for (int b = 0; b < c.B; ++b)
    for (int j = 0; j < c.Lk; ++j) m[(size_t)b * c.Lk + j] = j < c.lens[b] ? 1 : 0;
  CK(cudaMemcpy(d.mask, m.data(), m.size() * 4, cudaMemcpyHostToDevice));
}

static bool run_check(const Case& c, unsigned seed) {
  std::mt19937 rng(seed);
  Dev d;
  alloc(d, c);
  auto q = upload_rand(d.q, nq(c), rng, 1.f);
  auto k = upload_rand(d.k, nk(c), rng, 1.f);
  auto v = upload_rand(d.v, nk(c), rng, 1.f);
  auto dout = upload_rand(d.dout, nq(c), rng, 1.f);
  std::vector<float> bias;
  if (c.bias) {
    std::uniform_real_distribution<float> u(-2.f, 2.f);
    bias.resize(nbias(c));
    for (auto& x : bias) x = u(rng);
    CK(cudaMemcpy(d.bias, bias.data(), bias.size() * 4, cudaMemcpyHostToDevice));
  }
  upload_mask(d, c);
  poison(d, c);
  launch_fwd(d, c);
  CK(cudaDeviceSynchronize());
  launch_bwd(d, c);
  CK(cudaDeviceSynchronize());

  const Ref r = reference(c, q, k, v, dout, bias);
  const char* qn = "b,i,h,d";
  const char* kn = "b,j,h,d";
  std::vector<int> qd = {c.B, c.Lq, c.H, c.D}, kd = {c.B, c.Lk, c.H, c.D};
  const double e_out = compare("out", to_host_half(d.out, nq(c)), r.out, qd, qn, true);
  const double e_lse =
      compare("lse", to_host_float(d.lse, nrow(c)), r.lse, {c.B, c.H, c.Lq}, "b,h,i", true);
  const double e_dq = compare("dq", to_host_half(d.dq, nq(c)), r.dq, qd, qn, true);
  const double e_dk = compare("dk", to_host_half(d.dk, nk(c)), r.dk, kd, kn, true);
  const double e_dv = compare("dv", to_host_half(d.dv, nk(c)), r.dv, kd, kn, true);
  double e_db = 0;
  if (c.bias)
    e_db = compare("dbias", to_host_float(d.dbias, nbias(c)), r.dbias, {c.H, c.Lq, c.Lk},
                   "h,i,j", true);
  const double tol = 1e-2;
  const bool pass = e_out <= tol && e_lse <= tol && e_dq <= tol && e_dk <= tol &&
                    e_dv <= tol && (!c.bias || e_db <= tol);
  char dbs[32];
  if (c.bias)
    snprintf(dbs, sizeof dbs, "%.3e", e_db);
  else
    snprintf(dbs, sizeof dbs, "n/a");
  printf(
      "ATTNCHECK case=%s B=%d H=%d Lq=%d Lk=%d D=%d causal=%d bias=%d mask=%d dropout=%.2f "
      "out_err=%.3e "
      "lse_err=%.3e dq_err=%.3e dk_err=%.3e dv_err=%.3e dbias_err=%s pass=%s\n",
      c.name.c_str(), c.B, c.H, c.Lq, c.Lk, c.D, (int)c.causal, (int)c.bias,
      (int)!c.lens.empty(), c.dropout, e_out, e_lse, e_dq, e_dk, e_dv, dbs, pass ? "true" : "false");
  fflush(stdout);
  release(d);
  return pass;
}

// ---------------------------------------------------------------- benchmark
__global__ void init_rand_half(__half* p, size_t n, unsigned seed, float amp) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    unsigned x = (unsigned)i * 2654435761u ^ seed;
    x ^= x >> 15;
    x *= 2246822519u;
    x ^= x >> 13;
    p[i] = __float2half(((x & 0xFFFFFF) / 16777216.f * 2.f - 1.f) * amp);
  }
}
__global__ void init_rand_float(float* p, size_t n, unsigned seed, float amp) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    unsigned x = (unsigned)i * 2654435761u ^ seed;
    x ^= x >> 15;
    x *= 2246822519u;
    x ^= x >> 13;
    p[i] = ((x & 0xFFFFFF) / 16777216.f * 2.f - 1.f) * amp;
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
  Dev d;
  alloc(d, c);
  init_rand_half<<<1024, 256>>>(d.q, nq(c), 1u, 1.f);
  init_rand_half<<<1024, 256>>>(d.k, nk(c), 2u, 1.f);
  init_rand_half<<<1024, 256>>>(d.v, nk(c), 3u, 1.f);
  init_rand_half<<<1024, 256>>>(d.dout, nq(c), 4u, 1.f);
  if (d.bias) init_rand_float<<<1024, 256>>>(d.bias, nbias(c), 5u, 2.f);
  CK(cudaGetLastError());
  upload_mask(d, c);
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::vector<float> tf, tfb;
  for (int it = 0; it < reps + 3; ++it) {
    CK(cudaEventRecord(e0));
    launch_fwd(d, c);
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    if (it >= 3) tf.push_back(ms);
  }
  for (int it = 0; it < reps + 3; ++it) {
    CK(cudaEventRecord(e0));
    launch_fwd(d, c);
    launch_bwd(d, c);
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    if (it >= 3) tfb.push_back(ms);
  }
  // The timed outputs must be finite too: a fast kernel writing NaN is not a result.
  auto lse = to_host_float(d.lse, nrow(c));
  auto dq = to_host_half(d.dq, nq(c));
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
  }
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
    std::vector<int> full384(32, 384), full512(16, 512), var384(32);
    // SQuAD-like padding to 384: lengths 150..384 (torch_attn.py uses the same formula).
    for (int b = 0; b < 32; ++b) var384[b] = 150 + (b * 37) % 235;
    std::vector<Case> bench = {
        {"distilbert_b32_384", 32, 12, 384, 384, 64, s64, false, false, full384},
        {"t5_enc_b16_512_bias", 16, 8, 512, 512, 64, 1.f, false, true, full512},
        {"t5_dec_b16_128_causal_bias", 16, 8, 128, 128, 64, 1.f, true, true, {}},
        {"t5_cross_b16_128x512", 16, 8, 128, 512, 64, 1.f, false, false, full512},
        {"distilbert_b32_384_varlen", 32, 12, 384, 384, 64, s64, false, false, var384},
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
