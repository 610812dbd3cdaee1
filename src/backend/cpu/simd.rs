//! The CPU backend's own vectorised inner loops (attention's softmax, its dropout and its
//! score gradient, GELU, LayerNorm's rows, the dots of few-row products), compiled once
//! per SIMD path and picked at run time.
//!
//! Each function body is written once, as plain Rust over slices with fixed-width lane
//! arrays for the reductions, and [`multiversion!`] compiles it three times: for
//! AVX-512, for AVX2 + FMA, and for the baseline, dispatching on [`cpu_path`]. Rust never
//! fuses a multiply and an add on its own (the few-row dots ask for it, `mul_add`, which
//! is fused on every path), and the lane structure of every reduction is fixed (`LANES`
//! partial sums, whatever the vector width), so all three give the same bits; only the
//! `gemm` crate's products differ between paths.
//!
//! [`cpu_path`]: super::path::cpu_path

use super::elementwise::{act, act_grad};
use super::Real;
use crate::backend::UnaryOp;

/// Partial sums / maxima per reduction: a fixed count, so the order of a reduction (and
/// its result) does not depend on the vector width the compiler picked.
const LANES: usize = 16;

/// `pub(super) fn $name<T: Real>(..)` with its body compiled for each SIMD path.
macro_rules! multiversion {
    ($(#[$m:meta])* fn $name:ident<T: Real>($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        pub(super) fn $name<T: Real>($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn body<T: Real>($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                use super::path::{cpu_path, CpuPath};
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn v4<T: Real>($($a: $t),*) $(-> $r)? {
                    body::<T>($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3<T: Real>($($a: $t),*) $(-> $r)? {
                    body::<T>($($a),*)
                }
                match cpu_path() {
                    // SAFETY: cpu_path() reports these paths only when the CPU has the
                    // features the functions are compiled for.
                    CpuPath::Avx512 => return unsafe { v4::<T>($($a),*) },
                    CpuPath::Avx2 => return unsafe { v3::<T>($($a),*) },
                    _ => {}
                }
            }
            body::<T>($($a),*)
        }
    };
}

#[inline(always)]
fn lane_max<T: Real>(row: &[T]) -> T {
    let mut acc = [T::neg_infinity(); LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a = if x > *a { x } else { *a };
    }
    acc.iter()
        .copied()
        .fold(T::neg_infinity(), |m, x| if x > m { x } else { m })
}

/// `Σ f(x)` over a row in `LANES` partial sums (a fixed order, whatever the vector width).
#[inline(always)]
fn lane_sum<T: Real>(row: &[T], f: impl Fn(T) -> T) -> T {
    let mut acc = [T::zero(); LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(x);
    }
    acc.iter().fold(T::zero(), |s, &a| s + a)
}

multiversion! {
    /// LayerNorm of one row, `y = (x − mean)·rstd·γ + β`; returns (mean, rstd).
    fn layer_norm_row<T: Real>(x: &[T], g: &[T], b: &[T], y: &mut [T], eps: T) -> (T, T) {
        let n = T::of(x.len() as f64);
        let m = lane_sum(x, |v| v) / n;
        let var = lane_sum(x, |v| (v - m) * (v - m)) / n;
        let s = T::one() / (var + eps).sqrt();
        for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(g).zip(b) {
            *y = (x - m) * s * g + b;
        }
        (m, s)
    }
}

multiversion! {
    /// dx of one normalised row: `rstd · (g − [mean(g)] − x̂ · mean(g ⊙ x̂))` with
    /// `g = dy ⊙ γ`, `x̂ = (x − m) · rstd`; `centred` (LayerNorm) subtracts mean(g),
    /// RMSNorm (m = 0) does not.
    fn norm_dx_row<T: Real>(x: &[T], gamma: &[T], dy: &[T], dx: &mut [T], m: T, s: T, centred: bool) {
        let (mut sg, mut sgx) = ([T::zero(); LANES], [T::zero(); LANES]);
        let mut add = |lanes: usize, x: &[T], g: &[T], d: &[T]| {
            for l in 0..lanes {
                let gc = d[l] * g[l];
                sg[l] += gc;
                sgx[l] += gc * (x[l] - m) * s;
            }
        };
        let full = x.len() / LANES * LANES;
        for c in (0..full).step_by(LANES) {
            let r = c..c + LANES;
            add(LANES, &x[r.clone()], &gamma[r.clone()], &dy[r]);
        }
        add(x.len() - full, &x[full..], &gamma[full..], &dy[full..]);
        let n = T::of(x.len() as f64);
        let total = |acc: [T; LANES]| acc.iter().fold(T::zero(), |t, &a| t + a);
        let mg = if centred { total(sg) / n } else { T::zero() };
        let mgx = total(sgx) / n;
        for (((o, &x), &g), &d) in dx.iter_mut().zip(x).zip(gamma).zip(dy) {
            let xh = (x - m) * s;
            *o = s * (d * g - mg - xh * mgx);
        }
    }
}

multiversion! {
    /// Softmax of one row in place; returns its log-sum-exp. A row whose entries are all
    /// -inf (every key masked) becomes zeros with lse -inf.
    fn softmax_row<T: Real>(row: &mut [T]) -> T {
        let m = lane_max(row);
        if m == T::neg_infinity() {
            row.iter_mut().for_each(|x| *x = T::zero());
            return T::neg_infinity();
        }
        let mut acc = [T::zero(); LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (a, x) in acc.iter_mut().zip(c.iter_mut()) {
                *x = (*x - m).exp_nonpos();
                *a += *x;
            }
        }
        for (a, x) in acc.iter_mut().zip(chunks.into_remainder()) {
            *x = (*x - m).exp_nonpos();
            *a += *x;
        }
        let sum = acc.iter().fold(T::zero(), |s, &a| s + a);
        let inv = T::one() / sum;
        row.iter_mut().for_each(|x| *x *= inv);
        m + sum.ln()
    }
}

multiversion! {
    /// `x = exp(x - lse)` over one row (probabilities recomputed from the saved lse);
    /// lse -inf (a fully masked row) gives zeros.
    fn exp_sub_row<T: Real>(row: &mut [T], lse: T) {
        if lse == T::neg_infinity() {
            row.iter_mut().for_each(|x| *x = T::zero());
        } else {
            row.iter_mut().for_each(|x| *x = (*x - lse).exp_nonpos());
        }
    }
}

multiversion! {
    /// Multiply a row by its dropout multipliers: element j is kept (times `keep_scale`)
    /// when `dropout_keep_keyed(key, base + j, p)`, else zeroed. Same draw as the CUDA
    /// kernel's, element for element.
    fn dropout_row<T: Real>(row: &mut [T], key: (u32, u32), base: u64, p: f32, keep_scale: T) {
        for (j, x) in row.iter_mut().enumerate() {
            let keep = crate::backend::dropout_keep_keyed(key, base + j as u64, p);
            *x = if keep { *x * keep_scale } else { T::zero() };
        }
    }
}

multiversion! {
    /// Attention backward's dropout, one draw for two rows: with Z the row's multipliers
    /// (as [`dropout_row`] draws them), `ds ← Z ⊙ ds` and `pz ← P ⊙ Z`.
    fn dropout_row_pair<T: Real>(ds: &mut [T], p: &[T], pz: &mut [T], key: (u32, u32), base: u64, rate: f32, keep_scale: T) {
        for (j, ((d, &pj), z)) in ds.iter_mut().zip(p).zip(pz.iter_mut()).enumerate() {
            let keep = crate::backend::dropout_keep_keyed(key, base + j as u64, rate);
            *d = if keep { *d * keep_scale } else { T::zero() };
            *z = if keep { pj * keep_scale } else { T::zero() };
        }
    }
}

multiversion! {
    /// The score gradient of one row, in place: `ds = p ⊙ (ds − di)`.
    fn score_grad_row<T: Real>(ds: &mut [T], p: &[T], di: T) {
        for (d, &p) in ds.iter_mut().zip(p) {
            *d = p * (*d - di);
        }
    }
}

/// The dots of `R` consecutive rows of `x` (from row `i0`, `k` each) with `w` (`k`), in
/// `LANES` partial sums each: a constant `R` keeps the sums in registers.
#[inline(always)]
fn dots<T: Real, const R: usize>(x: &[T], k: usize, i0: usize, w: &[T]) -> [T; R] {
    let full = k / LANES * LANES;
    let mut acc = [[T::zero(); LANES]; R];
    for c in (0..full).step_by(LANES) {
        let wc = &w[c..c + LANES];
        for (r, a) in acc.iter_mut().enumerate() {
            let xc = &x[(i0 + r) * k + c..(i0 + r) * k + c + LANES];
            for l in 0..LANES {
                a[l] = xc[l].mul_add(wc[l], a[l]);
            }
        }
    }
    let mut out = [T::zero(); R];
    for (r, (a, o)) in acc.iter_mut().zip(out.iter_mut()).enumerate() {
        let xr = &x[(i0 + r) * k + full..(i0 + r + 1) * k];
        for ((s, &xv), &wv) in a.iter_mut().zip(xr).zip(&w[full..k]) {
            *s = xv.mul_add(wv, *s);
        }
        *o = a.iter().fold(T::zero(), |s, &v| s + v);
    }
    out
}

multiversion! {
    /// `out[i·nw + j] = x_i · w_j` (row-major, `rows × nw`) for the rows `x_i` of `x`
    /// (row-major, `k` each) and the `nw = w.len() / k` rows `w_j` of `w`: each `w_j` is
    /// read from memory once for all the `x_i`, which stay in cache, four rows of x at a
    /// time.
    fn row_dots<T: Real>(x: &[T], w: &[T], k: usize, out: &mut [T]) {
        let rows = x.len() / k.max(1);
        let nw = w.len() / k.max(1);
        for (j, wj) in w.chunks_exact(k).enumerate() {
            let mut put = |i: usize, d: &[T]| {
                for (r, &v) in d.iter().enumerate() {
                    out[(i + r) * nw + j] = v;
                }
            };
            let mut i = 0;
            while i + 4 <= rows {
                put(i, &dots::<T, 4>(x, k, i, wj));
                i += 4;
            }
            match rows - i {
                3 => put(i, &dots::<T, 3>(x, k, i, wj)),
                2 => put(i, &dots::<T, 2>(x, k, i, wj)),
                1 => put(i, &dots::<T, 1>(x, k, i, wj)),
                _ => {}
            }
        }
    }
}

multiversion! {
    /// Exact GELU, `0.5·x·(1 + erf(x/√2))`, of a block.
    fn gelu<T: Real>(x: &[T], out: &mut [T]) {
        for (o, &x) in out.iter_mut().zip(x) {
            *o = act(UnaryOp::Gelu, x);
        }
    }
}

multiversion! {
    /// `dy · GELU'(x)` of a block: `GELU'(x) = Φ(x) + x·φ(x)`.
    fn gelu_backward<T: Real>(x: &[T], dy: &[T], out: &mut [T]) {
        for ((o, &x), &g) in out.iter_mut().zip(x).zip(dy) {
            *o = g * act_grad(UnaryOp::Gelu, x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_nonpos_matches_std_within_two_ulp() {
        let mut worst = 0f64;
        let mut x = -90.0f32;
        while x <= 0.5 {
            let (got, want) = (x.exp_nonpos(), x.exp());
            if want > f32::MIN_POSITIVE {
                let ulp = (got.to_bits() as i64 - want.to_bits() as i64).abs() as f64;
                worst = worst.max(ulp);
            } else {
                assert!(got <= f32::MIN_POSITIVE * 2.0, "{x}: {got}");
            }
            x += 0.000_731;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(f32::NEG_INFINITY.exp_nonpos(), 0.0);
        assert!(f32::NAN.exp_nonpos().is_nan());
        assert_eq!(0f32.exp_nonpos(), 1.0);
        assert_eq!((-1.5f64).exp_nonpos(), (-1.5f64).exp());
    }

    #[test]
    fn erf_vec_matches_libm() {
        let mut worst_abs = 0f64;
        let mut worst_rel = 0f64;
        let mut x = -6.0f32;
        while x <= 6.0 {
            let (got, want) = (x.erf_vec() as f64, libm::erf(x as f64));
            worst_abs = worst_abs.max((got - want).abs());
            if want.abs() > 1e-30 {
                worst_rel = worst_rel.max(((got - want) / want).abs());
            }
            x += 0.000_37;
        }
        assert!(worst_abs < 5e-7, "worst absolute error {worst_abs}");
        assert!(worst_rel < 5e-7, "worst relative error {worst_rel}");
        let near0 = (1e-20f32.erf_vec() / 1e-20) as f64;
        assert!(
            (near0 - 2.0 / std::f64::consts::PI.sqrt()).abs() < 1e-6,
            "x·2/√π near 0"
        );
        assert_eq!((0.3f64).erf_vec(), libm::erf(0.3));
    }

    #[test]
    fn gelu_blocks_match_the_definition() {
        let x: Vec<f32> = (0..999).map(|i| (i as f32 - 500.0) * 0.013).collect();
        let mut y = vec![0f32; x.len()];
        gelu(&x, &mut y);
        let dy: Vec<f32> = (0..999).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let mut dx = vec![0f32; x.len()];
        gelu_backward(&x, &dy, &mut dx);
        for i in 0..x.len() {
            let v = x[i] as f64;
            let cdf = 0.5 * (1.0 + libm::erf(v / 2f64.sqrt()));
            assert!((y[i] as f64 - v * cdf).abs() < 1e-6, "gelu({v})");
            let d = cdf + v * (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!((dx[i] as f64 - dy[i] as f64 * d).abs() < 2e-6, "gelu'({v})");
        }
    }

    #[test]
    fn softmax_row_matches_the_two_pass_definition() {
        for n in [1usize, 7, 16, 33, 384] {
            let row: Vec<f64> = (0..n).map(|i| ((i * 37 % 11) as f64 - 5.0) * 0.7).collect();
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|x| (x - m).exp()).sum();
            let mut got: Vec<f32> = row.iter().map(|&x| x as f32).collect();
            let lse = softmax_row(&mut got);
            assert!((lse as f64 - (m + sum.ln())).abs() < 1e-5, "n {n}");
            for (g, x) in got.iter().zip(&row) {
                assert!((*g as f64 - (x - m).exp() / sum).abs() < 1e-6, "n {n}");
            }
        }
        let mut masked = vec![f32::NEG_INFINITY; 20];
        assert_eq!(softmax_row(&mut masked), f32::NEG_INFINITY);
        assert!(masked.iter().all(|&x| x == 0.0));
        let mut some = vec![f32::NEG_INFINITY; 20];
        some[17] = 3.0;
        assert_eq!(softmax_row(&mut some), 3.0);
        assert_eq!(some[17], 1.0);
        assert_eq!(some.iter().sum::<f32>(), 1.0);
    }

    #[test]
    fn dropout_row_is_the_keyed_draw() {
        let key = crate::backend::dropout_key(1234);
        let mut row = vec![2.0f32; 1000];
        dropout_row(&mut row, key, 5_000_000_000, 0.25, 4.0 / 3.0);
        for (j, &x) in row.iter().enumerate() {
            let keep = crate::backend::dropout_keep_keyed(key, 5_000_000_000 + j as u64, 0.25);
            assert_eq!(x, if keep { 2.0 * 4.0 / 3.0 } else { 0.0 });
        }
        let kept = row.iter().filter(|&&x| x != 0.0).count();
        assert!(
            (650..850).contains(&kept),
            "{kept} of 1000 kept at p = 0.25"
        );
    }

    #[test]
    fn dropout_row_pair_is_two_dropout_rows() {
        let key = crate::backend::dropout_key(77);
        let p: Vec<f32> = (0..100).map(|i| i as f32 * 0.01).collect();
        let mut ds: Vec<f32> = (0..100).map(|i| 1.0 - i as f32 * 0.02).collect();
        let (mut want_ds, mut want_pz) = (ds.clone(), p.clone());
        dropout_row(&mut want_ds, key, 9_000, 0.3, 1.0 / 0.7);
        dropout_row(&mut want_pz, key, 9_000, 0.3, 1.0 / 0.7);
        let mut pz = vec![-1.0f32; 100];
        dropout_row_pair(&mut ds, &p, &mut pz, key, 9_000, 0.3, 1.0 / 0.7);
        assert_eq!(ds, want_ds);
        assert_eq!(pz, want_pz);
        assert!(pz.contains(&0.0) && pz.iter().any(|&x| x > 0.0));
    }

    #[test]
    fn norm_rows_match_the_two_pass_definition() {
        for n in [1usize, 5, 16, 37, 768] {
            let x: Vec<f64> = (0..n).map(|i| ((i * 29 % 13) as f64 - 6.0) * 0.3).collect();
            let g: Vec<f64> = (0..n).map(|i| 1.0 + (i % 5) as f64 * 0.1).collect();
            let b: Vec<f64> = (0..n).map(|i| (i % 3) as f64 * 0.05).collect();
            let dy: Vec<f64> = (0..n).map(|i| ((i * 7 % 11) as f64 - 5.0) * 0.2).collect();
            let nf = n as f64;
            let m = x.iter().sum::<f64>() / nf;
            let var = x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / nf;
            let s = 1.0 / (var + 1e-5).sqrt();
            let mut y = vec![0.0; n];
            let (gm, gs) = layer_norm_row(&x, &g, &b, &mut y, 1e-5);
            assert!((gm - m).abs() < 1e-12 && (gs - s).abs() < 1e-9, "n {n}");
            for i in 0..n {
                assert!(
                    (y[i] - ((x[i] - m) * s * g[i] + b[i])).abs() < 1e-9,
                    "n {n}"
                );
            }
            for centred in [true, false] {
                let mc = if centred { m } else { 0.0 };
                let gv: Vec<f64> = (0..n).map(|i| dy[i] * g[i]).collect();
                let xh: Vec<f64> = (0..n).map(|i| (x[i] - mc) * s).collect();
                let mg = if centred {
                    gv.iter().sum::<f64>() / nf
                } else {
                    0.0
                };
                let mgx = (0..n).map(|i| gv[i] * xh[i]).sum::<f64>() / nf;
                let mut dx = vec![0.0; n];
                norm_dx_row(&x, &g, &dy, &mut dx, mc, s, centred);
                for i in 0..n {
                    let want = s * (gv[i] - mg - xh[i] * mgx);
                    assert!((dx[i] - want).abs() < 1e-9, "n {n} centred {centred}");
                }
            }
        }
    }

    #[test]
    fn exp_sub_and_score_grad_rows() {
        let mut r = vec![-1.0f32, -2.0, f32::NEG_INFINITY];
        exp_sub_row(&mut r, 0.5);
        assert!((r[0] - (-1.5f32).exp()).abs() < 1e-7 && r[2] == 0.0);
        exp_sub_row(&mut r, f32::NEG_INFINITY);
        assert!(r.iter().all(|&x| x == 0.0));
        let mut ds = vec![1.0f32, 2.0, 3.0];
        score_grad_row(&mut ds, &[0.5, 0.25, 0.0], 1.0);
        assert_eq!(ds, vec![0.0, 0.25, 0.0]);
    }
}
