// Finite-difference check of the double reference in attn_ref.h (the oracle both
// attn_check.cu and emu_check.cpp trust): loss = Σ out·dout, central differences on every
// q, k, v and bias element of small cases with mask, causal rows and a fully masked row.
// Build: g++ -std=c++17 -O1 ref_gradcheck.cpp -o ref_gradcheck
#include <functional>
#include <random>

#include "attn_ref.h"

static double loss(const Case& c, const std::vector<float>& q, const std::vector<float>& k,
                   const std::vector<float>& v, const std::vector<float>& dout,
                   const std::vector<float>& bias) {
  const Ref r = reference(c, q, k, v, dout, bias);
  double s = 0;
  for (size_t i = 0; i < r.out.size(); ++i) s += r.out[i] * dout[i];
  return s;
}

// max |analytic - numeric| / max(1, |analytic|) over all elements of x.
static double check(const Case& c, std::vector<float>& x, const std::vector<double>& grad,
                    const std::function<double()>& f) {
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const float keep = x[i];
    const float h = 1e-3f;
    x[i] = keep + h;
    const double lp = f();
    x[i] = keep - h;
    const double lm = f();
    x[i] = keep;
    const double num = (lp - lm) / ((double)(keep + h) - (double)(keep - h));
    worst = std::max(worst, std::fabs(num - grad[i]) / std::max(1.0, std::fabs(grad[i])));
  }
  return worst;
}

int main() {
  const std::vector<Case> cases = {
      {"mask_bias", 2, 2, 3, 5, 4, 0.5f, false, true, {5, 2}},
      {"causal_lq_gt_lk", 1, 2, 4, 3, 4, 1.f, true, true, {}},
      {"masked_batch", 2, 1, 3, 4, 8, 1.f, false, true, {4, 0}},
      {"dropout", 2, 2, 4, 6, 4, 0.7f, false, true, {6, 3}, 0.4f, 5ull},
  };
  int bad = 0;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (const Case& c : cases) {
    std::vector<float> q(nq(c)), k(nk(c)), v(nk(c)), dout(nq(c)), bias(c.bias ? nbias(c) : 0);
    for (auto* t : {&q, &k, &v, &dout, &bias})
      for (auto& x : *t) x = u(rng);
    const Ref r = reference(c, q, k, v, dout, bias);
    auto f = [&] { return loss(c, q, k, v, dout, bias); };
    const double eq = check(c, q, r.dq, f), ek = check(c, k, r.dk, f), ev = check(c, v, r.dv, f);
    const double eb = c.bias ? check(c, bias, r.dbias, f) : 0.0;
    const bool ok = eq < 1e-5 && ek < 1e-5 && ev < 1e-5 && eb < 1e-5;
    bad += !ok;
    printf("REFGRAD case=%s dq=%.2e dk=%.2e dv=%.2e dbias=%.2e pass=%s\n", c.name.c_str(), eq,
           ek, ev, eb, ok ? "true" : "false");
  }
  return bad ? 1 : 0;
}
