//! LayerNorm (BERT, DistilBERT) and T5's RMSNorm, forward and backward (mirrors
//! kernels/norm.cu).
//!
//! Forward saves per-row statistics (mean and rstd, or rstd alone) so backward never
//! recomputes a reduction. Rows are independent and go to rayon threads; the parameter
//! gradients (dgamma, dbeta) are column sums, reduced per row block and then added, so
//! the result is deterministic. RMSNorm is T5's: no mean subtraction, no bias, the
//! variance accumulated in the compute type (f32, or f64 for F64 inputs).

use rayon::prelude::*;

use super::elementwise::col_sums_with;
use super::{check_len, rows_of, simd, CpuStorage, Real};
use crate::error::Result;

/// Rows per rayon task at least: about 4096 elements.
pub(super) fn row_min(cols: usize) -> usize {
    (4096 / cols.max(1)).max(1)
}

pub(super) fn layer_norm<T: Real>(
    x: &CpuStorage,
    gamma: &CpuStorage,
    beta: &CpuStorage,
    cols: usize,
    eps: f64,
) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
    const OP: &str = "layer_norm";
    let (x, g, b) = (
        x.floats::<T>(OP)?,
        gamma.floats::<T>(OP)?,
        beta.floats::<T>(OP)?,
    );
    let rows = rows_of(OP, x.len(), cols)?;
    check_len(OP, "gamma", cols, g.len())?;
    check_len(OP, "beta", cols, b.len())?;
    let mut y = vec![T::zero(); x.len()];
    let mut mean = vec![T::zero(); rows];
    let mut rstd = vec![T::zero(); rows];
    let eps = T::of(eps);
    if cols > 0 {
        y.par_chunks_mut(cols)
            .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
            .enumerate()
            .with_min_len(row_min(cols))
            .for_each(|(r, (yr, (mu, rs)))| {
                let xr = &x[r * cols..(r + 1) * cols];
                (*mu, *rs) = simd::layer_norm_row(xr, g, b, yr, eps);
            });
    }
    Ok((
        CpuStorage::from_real(y),
        CpuStorage::from_real(mean),
        CpuStorage::from_real(rstd),
    ))
}

/// dx of LayerNorm (`mean` given) and of RMSNorm (`mean` None: x is not centred and
/// g's mean is not subtracted), after checking the operands' lengths:
/// dx = rstd · (g − [mean(g)] − x̂ · mean(g ⊙ x̂)) with g = dy ⊙ γ, x̂ = (x − [mean]) · rstd.
/// Returns (rows, dx).
fn norm_dx<T: Real>(
    op: &'static str,
    [x, g, dy]: [&[T]; 3],
    mean: Option<&[T]>,
    rstd: &[T],
    cols: usize,
) -> Result<(usize, Vec<T>)> {
    let rows = rows_of(op, x.len(), cols)?;
    check_len(op, "gamma", cols, g.len())?;
    if let Some(m) = mean {
        check_len(op, "mean", rows, m.len())?;
    }
    check_len(op, "rstd", rows, rstd.len())?;
    check_len(op, "dy", x.len(), dy.len())?;
    let mut dx = vec![T::zero(); x.len()];
    if cols > 0 {
        dx.par_chunks_mut(cols)
            .enumerate()
            .with_min_len(row_min(cols))
            .for_each(|(r, dxr)| {
                let (xr, dyr) = (&x[r * cols..(r + 1) * cols], &dy[r * cols..(r + 1) * cols]);
                let m = mean.map_or(T::zero(), |m| m[r]);
                simd::norm_dx_row(xr, g, dyr, dxr, m, rstd[r], mean.is_some());
            });
    }
    Ok((rows, dx))
}

pub(super) fn layer_norm_backward<T: Real>(
    x: &CpuStorage,
    gamma: &CpuStorage,
    mean: &CpuStorage,
    rstd: &CpuStorage,
    dy: &CpuStorage,
    cols: usize,
) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
    const OP: &str = "layer_norm_backward";
    let (x, dy) = (x.floats::<T>(OP)?, dy.floats::<T>(OP)?);
    let (mean, rstd) = (mean.floats::<T>(OP)?, rstd.floats::<T>(OP)?);
    let g = gamma.floats::<T>(OP)?;
    let (rows, dx) = norm_dx(OP, [x, g, dy], Some(mean), rstd, cols)?;
    let dgb = col_sums_with::<T>(rows, 2 * cols, |r, acc| {
        let (m, s) = (mean[r], rstd[r]);
        for c in 0..cols {
            let i = r * cols + c;
            acc[c] += dy[i] * (x[i] - m) * s;
            acc[cols + c] += dy[i];
        }
    });
    let (dg, db) = dgb.split_at(cols);
    Ok((
        CpuStorage::from_real(dx),
        CpuStorage::from_real(dg.to_vec()),
        CpuStorage::from_real(db.to_vec()),
    ))
}

pub(super) fn rms_norm<T: Real>(
    x: &CpuStorage,
    gamma: &CpuStorage,
    cols: usize,
    eps: f64,
) -> Result<(CpuStorage, CpuStorage)> {
    const OP: &str = "rms_norm";
    let (x, g) = (x.floats::<T>(OP)?, gamma.floats::<T>(OP)?);
    let rows = rows_of(OP, x.len(), cols)?;
    check_len(OP, "gamma", cols, g.len())?;
    let mut y = vec![T::zero(); x.len()];
    let mut rstd = vec![T::zero(); rows];
    let n = T::of(cols as f64);
    let eps = T::of(eps);
    if cols > 0 {
        y.par_chunks_mut(cols)
            .zip(rstd.par_iter_mut())
            .enumerate()
            .with_min_len(row_min(cols))
            .for_each(|(r, (yr, rs))| {
                let xr = &x[r * cols..(r + 1) * cols];
                let var = xr.iter().map(|&v| v * v).sum::<T>() / n;
                let s = T::one() / (var + eps).sqrt();
                for c in 0..cols {
                    // HF T5LayerNorm: weight * (x * rsqrt(var + eps)).
                    yr[c] = g[c] * (xr[c] * s);
                }
                *rs = s;
            });
    }
    Ok((CpuStorage::from_real(y), CpuStorage::from_real(rstd)))
}

pub(super) fn rms_norm_backward<T: Real>(
    x: &CpuStorage,
    gamma: &CpuStorage,
    rstd: &CpuStorage,
    dy: &CpuStorage,
    cols: usize,
) -> Result<(CpuStorage, CpuStorage)> {
    const OP: &str = "rms_norm_backward";
    let (x, dy) = (x.floats::<T>(OP)?, dy.floats::<T>(OP)?);
    let (g, rstd) = (gamma.floats::<T>(OP)?, rstd.floats::<T>(OP)?);
    let (rows, dx) = norm_dx(OP, [x, g, dy], None, rstd, cols)?;
    let dg = col_sums_with::<T>(rows, cols, |r, acc| {
        let s = rstd[r];
        for (c, a) in acc.iter_mut().enumerate() {
            let i = r * cols + c;
            *a += dy[i] * x[i] * s;
        }
    });
    Ok((CpuStorage::from_real(dx), CpuStorage::from_real(dg)))
}
