//! A post-norm encoder's residual block, `LayerNorm(dropout(a) + res)`, in one pass per
//! row (the CPU's counterpart of kernels/norm.cu's fused kernel). Each row is dropped out
//! with the draws [`elementwise::dropout`](super::elementwise::dropout) makes for the
//! same elements, added to the residual and normalised while it is in cache, so the
//! results equal the composed ops' bit for bit, without the dropout's and the sum's
//! separate passes and buffers.

use rayon::prelude::*;

use super::elementwise::dropout_scale;
use super::norm::row_min;
use super::{check_len, rows_of, simd, CpuStorage, Real};
use crate::backend::{dropout_key, ResidualNorm};
use crate::error::Result;

/// (y, s, mean, rstd) with `s = dropout(a) + res` the normalised sum.
pub(super) fn dropout_add_layer_norm<T: Real>(
    a: &CpuStorage,
    res: &CpuStorage,
    gamma: &CpuStorage,
    beta: &CpuStorage,
    rn: ResidualNorm,
) -> Result<(CpuStorage, CpuStorage, CpuStorage, CpuStorage)> {
    const OP: &str = "dropout_add_layer_norm";
    let ResidualNorm { cols, eps, p, seed } = rn;
    let (x, r) = (a.floats::<T>(OP)?, res.floats::<T>(OP)?);
    let (g, b) = (gamma.floats::<T>(OP)?, beta.floats::<T>(OP)?);
    let rows = rows_of(OP, x.len(), cols)?;
    check_len(OP, "residual", x.len(), r.len())?;
    check_len(OP, "gamma", cols, g.len())?;
    check_len(OP, "beta", cols, b.len())?;
    let drop = if p > 0.0 {
        Some((dropout_key(seed), dropout_scale::<T>(p)?))
    } else {
        None
    };
    let (mut y, mut s) = (vec![T::zero(); x.len()], vec![T::zero(); x.len()]);
    let (mut mean, mut rstd) = (vec![T::zero(); rows], vec![T::zero(); rows]);
    let eps = T::of(eps);
    if cols > 0 {
        y.par_chunks_mut(cols)
            .zip(s.par_chunks_mut(cols))
            .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
            .enumerate()
            .with_min_len(row_min(cols))
            .for_each(|(i, ((yr, sr), (mu, rs)))| {
                let span = i * cols..(i + 1) * cols;
                sr.copy_from_slice(&x[span.clone()]);
                if let Some((key, scale)) = drop {
                    simd::dropout_row(sr, key, span.start as u64, p, scale);
                }
                sr.iter_mut().zip(&r[span]).for_each(|(s, &v)| *s += v);
                (*mu, *rs) = simd::layer_norm_row(sr, g, b, yr, eps);
            });
    }
    Ok((
        CpuStorage::from_real(y),
        CpuStorage::from_real(s),
        CpuStorage::from_real(mean),
        CpuStorage::from_real(rstd),
    ))
}
