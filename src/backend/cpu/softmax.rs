//! Row softmax, log-softmax, cross-entropy (forward and backward) and argmax (mirrors
//! kernels/softmax.cu).
//!
//! Every row subtracts its maximum before exponentiating. Cross-entropy saves the
//! per-row log-sum-exp so its backward is one pass, softmax − one-hot, with no second
//! reduction; rows whose target is `ignore_index` get zero loss and zero gradient, and
//! the mean is over the kept rows only (torch's `reduction="mean"`).

use rayon::prelude::*;

use super::{check_len, rows_of, CpuStorage, Real};
use crate::error::{Error, Result};

fn row_min(cols: usize) -> usize {
    (4096 / cols.max(1)).max(1)
}

/// log Σ exp(x) of a row, or -inf for an empty or all -inf row.
pub(super) fn logsumexp<T: Real>(xr: &[T]) -> T {
    let m = xr.iter().copied().fold(T::neg_infinity(), T::max);
    if m == T::neg_infinity() {
        return m;
    }
    // The sum runs in f64: a reference over a 32k vocabulary must not carry the
    // √n·ε rounding of a long f32 sum (the CUDA kernel sums in a tree, more accurately).
    let s: f64 = xr.iter().map(|&v| (v - m).exp().f64()).sum();
    m + T::of(s.ln())
}

pub(super) fn softmax<T: Real>(x: &CpuStorage, cols: usize, log: bool) -> Result<CpuStorage> {
    let op = if log { "log_softmax" } else { "softmax" };
    let x = x.floats::<T>(op)?;
    rows_of(op, x.len(), cols)?;
    let mut y = vec![T::zero(); x.len()];
    if cols > 0 {
        y.par_chunks_mut(cols)
            .zip(x.par_chunks(cols))
            .with_min_len(row_min(cols))
            .for_each(|(yr, xr)| {
                let lse = logsumexp(xr);
                for (o, &v) in yr.iter_mut().zip(xr) {
                    *o = if log { v - lse } else { (v - lse).exp() };
                }
            });
    }
    Ok(CpuStorage::from_real(y))
}

pub(super) fn softmax_backward<T: Real>(
    y: &CpuStorage,
    dy: &CpuStorage,
    cols: usize,
) -> Result<CpuStorage> {
    const OP: &str = "softmax_backward";
    let (y, dy) = (y.floats::<T>(OP)?, dy.floats::<T>(OP)?);
    rows_of(OP, y.len(), cols)?;
    check_len(OP, "dy", y.len(), dy.len())?;
    let mut dx = vec![T::zero(); y.len()];
    if cols > 0 {
        dx.par_chunks_mut(cols)
            .zip(y.par_chunks(cols).zip(dy.par_chunks(cols)))
            .with_min_len(row_min(cols))
            .for_each(|(dxr, (yr, dyr))| {
                let dot = yr.iter().zip(dyr).map(|(&a, &b)| a * b).sum::<T>();
                for c in 0..cols {
                    dxr[c] = yr[c] * (dyr[c] - dot);
                }
            });
    }
    Ok(CpuStorage::from_real(dx))
}

/// Targets must be in `[0, cols)` or equal to `ignore_index`.
fn check_targets(op: &'static str, t: &[i32], cols: usize, ignore_index: i32) -> Result<usize> {
    let mut kept = 0;
    for (r, &v) in t.iter().enumerate() {
        if v == ignore_index {
            continue;
        }
        if v < 0 || v as usize >= cols {
            return Err(Error::msg(format!(
                "{op}: target {v} at row {r} is outside [0, {cols}) and is not the ignore index {ignore_index}"
            )));
        }
        kept += 1;
    }
    Ok(kept)
}

pub(super) fn cross_entropy<T: Real>(
    logits: &CpuStorage,
    targets: &CpuStorage,
    cols: usize,
    ignore_index: i32,
) -> Result<(CpuStorage, CpuStorage)> {
    const OP: &str = "cross_entropy";
    let (x, t) = (logits.floats::<T>(OP)?, targets.ints(OP)?);
    let rows = rows_of(OP, x.len(), cols)?;
    check_len(OP, "targets", rows, t.len())?;
    let kept = check_targets(OP, t, cols, ignore_index)?;
    let lse: Vec<T> = if cols == 0 {
        vec![T::neg_infinity(); rows]
    } else {
        x.par_chunks(cols)
            .with_min_len(row_min(cols))
            .map(logsumexp)
            .collect()
    };
    let total: T = (0..rows)
        .filter(|&r| t[r] != ignore_index)
        .map(|r| lse[r] - x[r * cols + t[r] as usize])
        .sum();
    let loss = if kept == 0 {
        T::zero()
    } else {
        total / T::of(kept as f64)
    };
    Ok((
        CpuStorage::from_real(vec![loss]),
        CpuStorage::from_real(lse),
    ))
}

pub(super) fn cross_entropy_backward<T: Real>(
    logits: &CpuStorage,
    targets: &CpuStorage,
    lse: &CpuStorage,
    dloss: &CpuStorage,
    cols: usize,
    ignore_index: i32,
) -> Result<CpuStorage> {
    const OP: &str = "cross_entropy_backward";
    let (x, t) = (logits.floats::<T>(OP)?, targets.ints(OP)?);
    let (lse, dl) = (lse.floats::<T>(OP)?, dloss.floats::<T>(OP)?);
    let rows = rows_of(OP, x.len(), cols)?;
    check_len(OP, "targets", rows, t.len())?;
    check_len(OP, "lse", rows, lse.len())?;
    check_len(OP, "dloss", 1, dl.len())?;
    let kept = check_targets(OP, t, cols, ignore_index)?;
    let mut dx = vec![T::zero(); x.len()];
    if kept == 0 || cols == 0 {
        return Ok(CpuStorage::from_real(dx));
    }
    let g = dl[0] / T::of(kept as f64);
    dx.par_chunks_mut(cols)
        .enumerate()
        .with_min_len(row_min(cols))
        .for_each(|(r, dxr)| {
            if t[r] == ignore_index {
                return;
            }
            let xr = &x[r * cols..(r + 1) * cols];
            for c in 0..cols {
                dxr[c] = g * (xr[c] - lse[r]).exp();
            }
            dxr[t[r] as usize] -= g;
        });
    Ok(CpuStorage::from_real(dx))
}

pub(super) fn argmax_last<T: Real>(x: &CpuStorage, cols: usize) -> Result<CpuStorage> {
    const OP: &str = "argmax_last";
    let x = x.floats::<T>(OP)?;
    rows_of(OP, x.len(), cols)?;
    if cols == 0 {
        return Err(Error::msg("argmax_last: rows of 0 columns have no maximum"));
    }
    if cols > i32::MAX as usize {
        return Err(Error::msg(
            "argmax_last: more columns than an i32 index holds",
        ));
    }
    // The first maximum wins; NaN counts as the largest value, as in torch.argmax.
    let out: Vec<i32> = x
        .par_chunks(cols)
        .with_min_len(row_min(cols))
        .map(|xr| {
            let mut best = 0;
            for c in 1..cols {
                if xr[best].is_nan() {
                    break;
                }
                if xr[c] > xr[best] || xr[c].is_nan() {
                    best = c;
                }
            }
            best as i32
        })
        .collect();
    Ok(CpuStorage::from_i32(out))
}
