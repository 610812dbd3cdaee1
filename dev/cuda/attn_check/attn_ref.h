// Shared by attn_check.cu (GPU run) and emu_check.cpp (CPU emulation of the same kernels):
// the test cases' shape type, where q/k/v (and dq/dk/dv) sit in memory (row strides, the
// packed QKV layout), a plain double-precision attention forward + backward, and the
// ‖x−ref‖/‖ref‖ comparison that prints the worst elements when a tensor fails.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

// The dropout hash the kernels use (fb_dropout_key, fb_dropout_keep): src/backend/mod.rs
// dropout_key_packed / dropout_keep, bit for bit.
#include "../../../kernels/dropout.cuh"

struct Case {
  std::string name;
  int B, H, Lq, Lk, D;
  float scale;
  bool causal, bias;
  std::vector<int> lens;  // valid key length per batch element; empty = no mask
  float dropout = 0.f;    // attention-probability dropout
  unsigned long long seed = 0;
  // Memory layout of q/k/v and dq/dk/dv (set with as_packed() / with_gaps() below): packed =
  // one [B, L, 3, H, D] buffer (a fused QKV projection, Lq == Lk); gap_q / gap_kv = unused
  // halves at the end of each row (ld = H*D + gap, or 3*H*D + gap_q when packed).
  bool packed = false;
  int gap_q = 0, gap_kv = 0;
  // The reference and the dropout hash see batch element b as b + b_offset: a one-batch
  // slice of a big case is checked on its own (the double reference is too slow for B=32).
  int b_offset = 0;
};

static Case as_packed(Case c, int gap = 0) {
  c.packed = true;
  c.gap_q = c.gap_kv = gap;
  return c;
}
static Case with_gaps(Case c, int gap_q, int gap_kv) {
  c.gap_q = gap_q;
  c.gap_kv = gap_kv;
  return c;
}
static bool has_strides(const Case& c) { return c.packed || c.gap_q || c.gap_kv; }

// Dropout multiplier Z for probability (b, h, i, j): 0 or 1/(1-p).
static double ref_z(const Case& c, int b, int h, int i, int j) {
  if (c.dropout <= 0.f) return 1.0;
  const unsigned long long idx =
      (((unsigned long long)(b + c.b_offset) * c.H + h) * c.Lq + i) * c.Lk + j;
  return fb_dropout_keep(c.seed, idx, c.dropout) ? 1.0 / (1.0 - (double)c.dropout) : 0.0;
}

static size_t nq(const Case& c) { return (size_t)c.B * c.Lq * c.H * c.D; }
static size_t nk(const Case& c) { return (size_t)c.B * c.Lk * c.H * c.D; }
static size_t nrow(const Case& c) { return (size_t)c.B * c.H * c.Lq; }
static size_t nbias(const Case& c) { return (size_t)c.H * c.Lq * c.Lk; }

// ---------------------------------------------------------------- strided q/k/v layout
// q, k, v live in one buffer of halves ("arena"), and dq, dk, dv in a second one laid out
// the same way, so what the kernels must never touch (the gaps) is everything the three
// tensors do not cover. Separate: q, then k, then v, each rows of its own ld. Packed: the
// columns [0, HD), [HD, 2HD), [2HD, 3HD) of rows of ld = 3HD + gap.
struct QkvLayout {
  int ldq, ldkv;
  size_t off_q, off_k, off_v, size;
};
static QkvLayout qkv_layout(const Case& c) {
  const int hd = c.H * c.D;
  QkvLayout l;
  if (c.packed) {
    l.ldq = l.ldkv = 3 * hd + c.gap_q;
    l.off_q = 0;
    l.off_k = (size_t)hd;
    l.off_v = 2 * (size_t)hd;
    l.size = (size_t)c.B * c.Lq * l.ldq;
  } else {
    l.ldq = hd + c.gap_q;
    l.ldkv = hd + c.gap_kv;
    l.off_q = 0;
    l.off_k = (size_t)c.B * c.Lq * l.ldq;
    l.off_v = l.off_k + (size_t)c.B * c.Lk * l.ldkv;
    l.size = l.off_v + (size_t)c.B * c.Lk * l.ldkv;
  }
  return l;
}
// A contiguous [rows, hd] tensor into / out of the arena at off with row stride ld.
template <class T>
static void scatter_rows(std::vector<T>& arena, size_t off, int ld, const std::vector<T>& src,
                         int hd) {
  const size_t rows = src.size() / hd;
  for (size_t r = 0; r < rows; ++r)
    std::copy(src.begin() + r * hd, src.begin() + (r + 1) * hd, arena.begin() + off + r * ld);
}
template <class T>
static std::vector<T> gather_rows(const std::vector<T>& arena, size_t off, int ld, size_t rows,
                                  int hd) {
  std::vector<T> out(rows * hd);
  for (size_t r = 0; r < rows; ++r)
    std::copy(arena.begin() + off + r * ld, arena.begin() + off + r * ld + hd,
              out.begin() + r * hd);
  return out;
}
// 1 where q/k/v (or dq/dk/dv) live, 0 in the gaps.
static std::vector<uint8_t> qkv_coverage(const Case& c, const QkvLayout& l) {
  std::vector<uint8_t> cov(l.size, 0);
  const int hd = c.H * c.D;
  const std::vector<uint8_t> qs((size_t)c.B * c.Lq * hd, 1), ks((size_t)c.B * c.Lk * hd, 1);
  scatter_rows(cov, l.off_q, l.ldq, qs, hd);
  scatter_rows(cov, l.off_k, l.ldkv, ks, hd);
  scatter_rows(cov, l.off_v, l.ldkv, ks, hd);
  return cov;
}
// Gradient-arena bits before a run: NaN (0xFFFF) where dq/dk/dv go (an element left
// unwritten fails the comparison), kGapSentinel in the gaps (checked unchanged after).
static const uint16_t kGapSentinel = 0x7E5A;  // a quiet NaN too: a read of it poisons
static std::vector<uint16_t> grad_poison(const std::vector<uint8_t>& cov) {
  std::vector<uint16_t> g(cov.size());
  for (size_t i = 0; i < cov.size(); ++i) g[i] = cov[i] ? 0xFFFF : kGapSentinel;
  return g;
}
static size_t gap_writes(const std::vector<uint16_t>& grad, const std::vector<uint8_t>& cov) {
  size_t n = 0;
  for (size_t i = 0; i < cov.size(); ++i) n += !cov[i] && grad[i] != kGapSentinel;
  return n;
}
// Batch element b of a batch-major tensor ([B, ...]), and the one-batch case it is.
template <class T>
static std::vector<T> batch_slice(const std::vector<T>& x, int B, int b) {
  const size_t per = x.size() / B;
  return std::vector<T>(x.begin() + b * per, x.begin() + (b + 1) * per);
}
static Case batch_case(const Case& c, int b) {
  Case s = c;
  s.B = 1;
  s.b_offset = c.b_offset + b;
  if (!c.lens.empty()) s.lens = {c.lens[b]};
  return s;
}

// ---------------------------------------------------------------- CPU reference (double)
struct Ref {
  std::vector<double> out, lse, dq, dk, dv, dbias;
};

static bool allowed(const Case& c, int b, int i, int j) {
  if (!c.lens.empty() && j >= c.lens[b]) return false;
  if (c.causal && j > i + (c.Lk - c.Lq)) return false;
  return true;
}

static Ref reference(const Case& c, const std::vector<float>& q, const std::vector<float>& k,
                     const std::vector<float>& v, const std::vector<float>& dout,
                     const std::vector<float>& bias) {
  const int B = c.B, H = c.H, Lq = c.Lq, Lk = c.Lk, D = c.D;
  Ref r;
  r.out.assign(nq(c), 0.0);
  r.dq.assign(nq(c), 0.0);
  r.lse.assign(nrow(c), 0.0);
  r.dk.assign(nk(c), 0.0);
  r.dv.assign(nk(c), 0.0);
  r.dbias.assign(c.bias ? nbias(c) : 0, 0.0);
  std::vector<double> P((size_t)Lq * Lk), dS((size_t)Lq * Lk);
  auto qi = [&](int b, int i, int h) { return (((size_t)b * Lq + i) * H + h) * D; };
  auto kj = [&](int b, int j, int h) { return (((size_t)b * Lk + j) * H + h) * D; };
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < H; ++h) {
      for (int i = 0; i < Lq; ++i) {
        double m = -INFINITY;
        double* p = &P[(size_t)i * Lk];
        for (int j = 0; j < Lk; ++j) {
          if (!allowed(c, b, i, j)) {
            p[j] = -INFINITY;
            continue;
          }
          const float* a = &q[qi(b, i, h)];
          const float* kk = &k[kj(b, j, h)];
          double s = 0;
          for (int d = 0; d < D; ++d) s += (double)a[d] * kk[d];
          s *= c.scale;
          if (c.bias) s += bias[((size_t)h * Lq + i) * Lk + j];
          p[j] = s;
          m = std::max(m, s);
        }
        double* o = &r.out[qi(b, i, h)];
        if (m == -INFINITY) {
          for (int j = 0; j < Lk; ++j) p[j] = 0;
          r.lse[((size_t)b * H + h) * Lq + i] = -INFINITY;
          continue;
        }
        double sum = 0;
        for (int j = 0; j < Lk; ++j) {
          p[j] = p[j] == -INFINITY ? 0.0 : std::exp(p[j] - m);
          sum += p[j];
        }
        r.lse[((size_t)b * H + h) * Lq + i] = m + std::log(sum);
        for (int j = 0; j < Lk; ++j) {
          p[j] /= sum;
          const double pz = p[j] * ref_z(c, b, h, i, j);
          if (pz == 0) continue;
          const float* vv = &v[kj(b, j, h)];
          for (int d = 0; d < D; ++d) o[d] += pz * vv[d];
        }
      }
      // backward
      for (int i = 0; i < Lq; ++i) {
        const float* go = &dout[qi(b, i, h)];
        const double* o = &r.out[qi(b, i, h)];
        double di = 0;
        for (int d = 0; d < D; ++d) di += go[d] * o[d];
        for (int j = 0; j < Lk; ++j) {
          const double pij = P[(size_t)i * Lk + j];
          if (pij == 0) {
            dS[(size_t)i * Lk + j] = 0;
            continue;
          }
          const float* vv = &v[kj(b, j, h)];
          double dp = 0;
          for (int d = 0; d < D; ++d) dp += (double)go[d] * vv[d];
          const double z = ref_z(c, b, h, i, j);
          dS[(size_t)i * Lk + j] = pij * (z * dp - di);
          double* gv = &r.dv[kj(b, j, h)];
          for (int d = 0; d < D; ++d) gv[d] += pij * z * go[d];
        }
      }
      for (int i = 0; i < Lq; ++i) {
        double* gq = &r.dq[qi(b, i, h)];
        const float* a = &q[qi(b, i, h)];
        for (int j = 0; j < Lk; ++j) {
          const double ds = dS[(size_t)i * Lk + j];
          if (ds == 0) continue;
          if (c.bias) r.dbias[((size_t)h * Lq + i) * Lk + j] += ds;
          const float* kk = &k[kj(b, j, h)];
          double* gk = &r.dk[kj(b, j, h)];
          for (int d = 0; d < D; ++d) {
            gq[d] += c.scale * ds * kk[d];
            gk[d] += c.scale * ds * a[d];
          }
        }
      }
    }
  }
  return r;
}

// ---------------------------------------------------------------- comparison
// dims: sizes of the tensor's axes (row-major) with names, for decoding worst elements.
static double compare(const char* what, const std::vector<float>& got, const std::vector<double>& ref,
                      const std::vector<int>& dims, const char* names, bool verbose) {
  double num = 0, den = 0;
  size_t nan_count = 0, inf_mismatch = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = got[i], r = ref[i];
    if (std::isnan(g)) {
      ++nan_count;
      continue;
    }
    if (std::isinf(r) || std::isinf(g)) {
      if (!(std::isinf(r) && std::isinf(g) && (r > 0) == (g > 0))) ++inf_mismatch;
      continue;
    }
    num += (g - r) * (g - r);
    den += r * r;
  }
  double err = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  if (nan_count || inf_mismatch) err = INFINITY;
  if (verbose && !(err <= 1e-2)) {
    printf("  [%s] rel_err=%.3e nan=%zu inf_mismatch=%zu ref_norm=%.3e (axes %s)\n", what,
           den > 0 ? std::sqrt(num / den) : std::sqrt(num), nan_count, inf_mismatch,
           std::sqrt(den), names);
    std::vector<size_t> idx(ref.size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
    auto bad = [&](size_t i) -> double {
      const double g = got[i], r = ref[i];
      if (std::isnan(g)) return INFINITY;
      if (std::isinf(r) || std::isinf(g)) return (std::isinf(r) && std::isinf(g)) ? 0.0 : INFINITY;
      return std::fabs(g - r);
    };
    const size_t top = std::min<size_t>(8, idx.size());
    std::partial_sort(idx.begin(), idx.begin() + top, idx.end(),
                      [&](size_t a, size_t b) { return bad(a) > bad(b); });
    for (size_t n = 0; n < top; ++n) {
      size_t rem = idx[n];
      int coord[5] = {0, 0, 0, 0, 0};
      for (int a = (int)dims.size() - 1; a >= 0; --a) {
        coord[a] = (int)(rem % dims[a]);
        rem /= dims[a];
      }
      printf("    at (");
      for (size_t a = 0; a < dims.size(); ++a) printf("%s%d", a ? "," : "", coord[a]);
      printf(") got=%.6g ref=%.6g\n", (double)got[idx[n]], ref[idx[n]]);
    }
  }
  return err;
}

