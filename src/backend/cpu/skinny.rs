//! `x · Wᵀ` for an `x` of few rows: a generation step's linear layers, one row per
//! sequence and beam (T5's beam search with 4 beams: 4 rows of 512 against 2048 × 512 and
//! the 32128 × 512 head), and the products of small batches. gemm 0.19 handles a
//! transposed right operand with so few rows at a fraction of the memory bandwidth
//! (4 × 32128 × 512: 16.9 ms, against 1.7 ms for its own one-row product; 64 rows: 26 ms
//! against 12 with W row-major; `cargo bench --bench gemm_layouts -- 4x32128x512`).
//! Two routes instead:
//!
//! - 2 to [`FEW_MAX_ROWS`] rows ([`x_wt`]): each row of W is read once for all the rows
//!   of x ([`simd::row_dots`], fused multiply-adds, four rows of x at a time), W rows
//!   split over the threads in blocks: 2.1–2.7 ms for 4 × 32128 × 512, 0.11–0.16 ms
//!   (from 0.80) for 4 × 1536 × 512. Not on the scalar path (its multiply-adds would be
//!   library calls).
//! - up to [`SWAP_MAX_ROWS`] rows, where W is not copied (`matmul::copies_rhs`)
//!   ([`swapped_product`]): gemm computes `(x · Wᵀ)ᵀ = W · xᵀ`, whose left operand is W
//!   as stored, row-major, into a scratch, then transposes it into the output: 5.8 ms for
//!   16 × 32128 × 512 (gemm 19.3, the few-row kernel 10.3), 12.2 for 64 rows (25.9).
//!   Written straight through transposed strides instead, gemm runs it as slowly as before.
//!
//! One row stays on gemm's matrix-vector path (greedy search's products are unchanged),
//! and so do batched products and a transposed x.

use rayon::prelude::*;

use gemm::Parallelism;

use super::matmul::{copies_rhs, transpose, SharedDst, View};
use super::path::{cpu_path, CpuPath};
use super::{simd, CpuStorage, Real};
use crate::backend::MatmulSpec;
use crate::error::Result;

/// The most rows of x [`x_wt`] takes; from 16 rows the swapped product is faster.
pub(super) const FEW_MAX_ROWS: usize = 8;

/// The most rows of x the swapped product takes; from 512 rows gemm's own route is
/// faster (91 against 95 ms for 512 × 32128 × 512).
pub(super) const SWAP_MAX_ROWS: usize = 256;

/// W rows per task: 64 rows of 512 are 128 KiB of f32.
const BLOCK: usize = 64;

/// Whether [`x_wt`] computes `spec`: not on the scalar path, where the dots' fused
/// multiply-adds would be library calls.
pub(super) fn takes(s: &MatmulSpec) -> bool {
    x_wt_shape(s) && (2..=FEW_MAX_ROWS).contains(&s.m) && cpu_path() != CpuPath::Scalar
}

/// Whether [`swapped_product`] computes `spec` (the same on every CPU path, so the meta
/// device's `scratch_len` does not depend on it).
pub(super) fn swapped(s: &MatmulSpec) -> bool {
    x_wt_shape(s) && (FEW_MAX_ROWS + 1..=SWAP_MAX_ROWS).contains(&s.m) && !copies_rhs(s)
}

/// One `x · Wᵀ` with W as stored, x row-major, something to compute.
fn x_wt_shape(s: &MatmulSpec) -> bool {
    s.batch == 1 && s.trans_b && !s.trans_a && s.k > 0 && s.n > 0
}

/// `x · Wᵀ` (`m × n`), or `init +` it, as `(W · xᵀ)ᵀ`: gemm's `n × m` product into a
/// scratch of `scratch_len(spec)` elements, counted from when it is filled until the
/// output exists (as the meta device counts it), then transposed into the output.
pub(super) fn swapped_product<T: Real>(
    x: &[T],
    w: &[T],
    s: &MatmulSpec,
    init: Option<Vec<T>>,
) -> Result<CpuStorage> {
    let (m, n, k) = (s.m, s.n, s.k);
    let mut t = vec![T::zero(); n * m];
    // SAFETY: one call writes the whole scratch; nothing else holds it.
    unsafe {
        SharedDst::new(&mut t).gemm(
            (n, m, k),
            View::row_major(0, m),
            (w, View::row_major(0, k)),
            (x, View::transposed(0, k)),
            T::one(),
            false,
            Parallelism::Rayon(0),
        )?;
    }
    let scratch = CpuStorage::from_real(t);
    let t = scratch.floats::<T>("matmul")?;
    let out = match init {
        Some(mut v) => {
            transpose(t, n, m, &mut v, true);
            v
        }
        None => {
            let mut v = vec![T::zero(); m * n];
            transpose(t, n, m, &mut v, false);
            v
        }
    };
    let out = CpuStorage::from_real(out);
    drop(scratch);
    Ok(out)
}

/// `dst (m × n, row-major) = x · Wᵀ` (or `+=` with `accumulate`) for `x` `m × k`
/// row-major and `w` `n × k` row-major (a linear layer's weight), as [`takes`] allows.
pub(super) fn x_wt<T: Real>(
    x: &[T],
    w: &[T],
    s: &MatmulSpec,
    dst: &SharedDst<'_, T>,
    accumulate: bool,
) -> Result<()> {
    let (m, n, k) = (s.m, s.n, s.k);
    let (x, w) = (&x[..m * k], &w[..n * k]);
    w.par_chunks(BLOCK * k)
        .enumerate()
        .try_for_each(|(bi, wb)| {
            let (j0, nj) = (bi * BLOCK, wb.len() / k);
            // The block's m × nj outputs, row-major: row i goes to columns j0.. of row i.
            let mut tile = vec![T::zero(); m * nj];
            simd::row_dots::<T>(x, wb, k, &mut tile);
            for (i, row) in tile.chunks_exact(nj).enumerate() {
                // SAFETY: this task alone writes columns j0..j0 + nj of each row.
                unsafe {
                    if accumulate {
                        dst.add_at(i * n + j0, row)?;
                    } else {
                        dst.copy_at(i * n + j0, row)?;
                    }
                }
            }
            Ok(())
        })
}

/// [`x_wt`] for f32 slices (`x` `m × k`, `w` `n × k`, `out` `m × n`), any `m` and `k`
/// from 1, for `benches/gemm_layouts.rs`.
pub fn x_wt_f32(
    x: &[f32],
    w: &[f32],
    (m, n, k): (usize, usize, usize),
    out: &mut [f32],
) -> Result<()> {
    let s = MatmulSpec::linear(m, n, k);
    if m == 0 || k == 0 || x.len() < m * k || w.len() < n * k || out.len() < m * n {
        return Err(crate::error::Error::msg(format!(
            "x_wt_f32: {m} x {n} x {k} is not a few-row product of these slices"
        )));
    }
    x_wt(x, w, &s, &SharedDst::new(&mut out[..m * n]), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(m: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let x = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
            .collect();
        let w = (0..n * k)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
            .collect();
        let init = (0..m * n).map(|i| i as f32 * 0.5).collect();
        (x, w, init)
    }

    /// `out` against a plain f64 triple loop (plus `init` when given).
    fn check(
        out: &[f32],
        (x, w): (&[f32], &[f32]),
        (m, n, k): (usize, usize, usize),
        init: Option<&[f32]>,
    ) {
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum();
                let want = dot + init.map_or(0.0, |v| v[i * n + j] as f64);
                let got = out[i * n + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{m}x{n}x{k} init={} ({i},{j}): {got} vs {want}",
                    init.is_some()
                );
            }
        }
    }

    /// Row counts on both sides of the lane width and of a block, with and without
    /// accumulation.
    #[test]
    fn x_wt_matches_the_plain_product() {
        for (m, n, k) in [
            (2, 3, 5),
            (4, 130, 37),
            (16, 64, 512),
            (7, 200, 16),
            (3, 65, 1),
        ] {
            let (x, w, init) = inputs(m, n, k);
            let spec = MatmulSpec::linear(m, n, k);
            assert_eq!(
                takes(&spec),
                m <= FEW_MAX_ROWS && cpu_path() != CpuPath::Scalar
            );
            for accumulate in [false, true] {
                let mut out = if accumulate {
                    init.clone()
                } else {
                    vec![f32::NAN; m * n]
                };
                x_wt(&x, &w, &spec, &SharedDst::new(&mut out), accumulate).unwrap();
                check(&out, (&x, &w), (m, n, k), accumulate.then_some(&init[..]));
            }
        }
    }

    /// The swapped route at its bounds, odd sizes and a tile edge, with and without an
    /// initial value (a linear layer's bias rows).
    #[test]
    fn swapped_product_matches_the_plain_product() {
        for (m, n, k) in [(9, 33, 7), (17, 100, 64), (64, 1100, 32), (256, 2000, 3)] {
            let (x, w, init) = inputs(m, n, k);
            let spec = MatmulSpec::linear(m, n, k);
            assert!(swapped(&spec) && !takes(&spec), "{m}x{n}x{k}");
            assert_eq!(super::super::matmul::scratch_len(&spec), m * n);
            for with_init in [false, true] {
                let out = swapped_product(&x, &w, &spec, with_init.then(|| init.clone())).unwrap();
                let out = out.floats::<f32>("test").unwrap();
                check(out, (&x, &w), (m, n, k), with_init.then_some(&init[..]));
            }
        }
    }

    #[test]
    fn each_route_takes_only_its_products() {
        let lin = MatmulSpec::linear;
        assert!(
            !takes(&lin(1, 512, 512)) && !swapped(&lin(1, 512, 512)),
            "one row: gemv"
        );
        assert!(!takes(&lin(FEW_MAX_ROWS + 1, 512, 512)));
        assert!(swapped(&lin(FEW_MAX_ROWS + 1, 2048, 512)));
        assert!(!swapped(&lin(SWAP_MAX_ROWS + 1, 2048, 512)));
        // Where W is copied row-major (a narrow output from 64 rows), that route stays.
        assert!(copies_rhs(&lin(64, 512, 2048)) && !swapped(&lin(64, 512, 2048)));
        for edit in [
            |s: &mut MatmulSpec| s.trans_a = true,
            |s: &mut MatmulSpec| s.batch = 2,
        ] {
            for m in [4, 32] {
                let mut s = lin(m, 512, 512);
                edit(&mut s);
                assert!(!takes(&s) && !swapped(&s));
            }
        }
    }
}
