//! `x · Wᵀ` for an `x` of few rows: a generation step's linear layers, one row per
//! sequence and beam (T5's beam search with 4 beams: 4 rows of 512 against 2048 × 512 and
//! the 32128 × 512 head). gemm 0.19 handles a transposed right operand with so few rows
//! at a fraction of the memory bandwidth (4 × 32128 × 512: 16.9 ms, against 1.7 ms for
//! its own one-row product; `cargo bench --bench gemm_layouts -- 4x32128x512`). Here
//! each row of W is read once for all the rows of x ([`simd::row_dots`], fused
//! multiply-adds, four rows of x at a time), W rows split over the threads in blocks:
//! 2.1–2.7 ms for that product, 0.11–0.16 ms (from 0.80) for 4 × 1536 × 512; with 16
//! rows (9.6–13.2 ms) it is compute-bound, still faster than gemm's 18.8–20.6.
//!
//! One row stays on gemm's matrix-vector path (greedy search's products are unchanged),
//! and so do batched products, a transposed x and anything with more than
//! [`MAX_ROWS`] rows.

use rayon::prelude::*;

use super::matmul::SharedDst;
use super::path::{cpu_path, CpuPath};
use super::{simd, Real};
use crate::backend::MatmulSpec;
use crate::error::Result;

/// The most rows of x taken here; above it gemm's packed kernels are faster.
pub(super) const MAX_ROWS: usize = 16;

/// W rows per task: 64 rows of 512 are 128 KiB of f32.
const BLOCK: usize = 64;

/// Whether [`x_wt`] computes `spec`: not on the scalar path, where the dots' fused
/// multiply-adds would be library calls.
pub(super) fn takes(s: &MatmulSpec) -> bool {
    s.batch == 1
        && s.trans_b
        && !s.trans_a
        && (2..=MAX_ROWS).contains(&s.m)
        && s.k > 0
        && cpu_path() != CpuPath::Scalar
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
            // Column-major tile: the dots of W row j0 + j with every x row at j·m.
            let mut tile = vec![T::zero(); nj * m];
            simd::row_dots::<T>(x, wb, k, &mut tile);
            let mut row = vec![T::zero(); nj];
            for i in 0..m {
                row.iter_mut()
                    .zip(tile.iter().skip(i).step_by(m))
                    .for_each(|(r, &t)| *r = t);
                // SAFETY: this task alone writes columns j0..j0 + nj of each row.
                unsafe {
                    if accumulate {
                        dst.add_at(i * n + j0, &row)?;
                    } else {
                        dst.copy_at(i * n + j0, &row)?;
                    }
                }
            }
            Ok(())
        })
}

/// [`x_wt`] for f32 slices (`x` `m × k`, `w` `n × k`, `out` `m × n`), for
/// `benches/gemm_layouts.rs`; `m` must be in 2..=[`MAX_ROWS`].
pub fn x_wt_f32(
    x: &[f32],
    w: &[f32],
    (m, n, k): (usize, usize, usize),
    out: &mut [f32],
) -> Result<()> {
    let s = MatmulSpec::linear(m, n, k);
    if !takes(&s) || x.len() < m * k || w.len() < n * k {
        return Err(crate::error::Error::msg(format!(
            "x_wt_f32: {m} x {n} x {k} is not a few-row product of these slices"
        )));
    }
    x_wt(x, w, &s, &SharedDst::new(&mut out[..m * n]), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a plain f64 triple loop, for row counts on both sides of the lane width
    /// and of a block, with and without accumulation.
    #[test]
    fn x_wt_matches_the_plain_product() {
        for &(m, n, k) in &[
            (2, 3, 5),
            (4, 130, 37),
            (16, 64, 512),
            (7, 200, 16),
            (3, 65, 1),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
                .collect();
            let spec = MatmulSpec::linear(m, n, k);
            assert_eq!(takes(&spec), cpu_path() != CpuPath::Scalar);
            for accumulate in [false, true] {
                let init: Vec<f32> = (0..m * n).map(|i| i as f32 * 0.5).collect();
                let mut out = if accumulate {
                    init.clone()
                } else {
                    vec![f32::NAN; m * n]
                };
                x_wt(&x, &w, &spec, &SharedDst::new(&mut out), accumulate).unwrap();
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                            .sum::<f64>()
                            + if accumulate {
                                init[i * n + j] as f64
                            } else {
                                0.0
                            };
                        let got = out[i * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{m}x{n}x{k} acc={accumulate} ({i},{j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn takes_only_few_row_linear_products() {
        assert!(
            !takes(&MatmulSpec::linear(1, 512, 512)),
            "one row: gemm's gemv"
        );
        assert!(!takes(&MatmulSpec::linear(MAX_ROWS + 1, 512, 512)));
        let mut s = MatmulSpec::linear(4, 512, 512);
        s.trans_a = true;
        assert!(!takes(&s));
        let mut s = MatmulSpec::linear(4, 512, 512);
        s.batch = 2;
        assert!(!takes(&s));
    }
}
