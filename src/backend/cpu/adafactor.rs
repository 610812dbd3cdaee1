//! One Adafactor step on a master parameter (mirrors kernels/adafactor.cu).
//!
//! `transformers.optimization.Adafactor.step` for one parameter, in its order of
//! operations: the step size from the parameter's RMS before the update; `g² + eps1`
//! folded into the running row and column means (factored: the last two dims, any
//! leading dims are a batch of matrices) or into the full second moment (1-D); the
//! update `g / sqrt(v̂)` with v̂ = row ⊗ col / mean(row); divided by
//! max(1, RMS(update) / clip_threshold) and scaled by the step size; the optional first
//! moment; then `p += (-wd·lr)·p` and `p -= update`. The update is formed twice (once
//! for its RMS, once to apply it) rather than stored, as the kernel does: no scratch the
//! size of the parameter. Sums are accumulated in f64 and in a fixed order, so a step is
//! deterministic whatever the thread count.

use rayon::prelude::*;

use super::{check_len, dtype_err, CpuStorage, Real, PAR_MIN};
use crate::backend::{AdafactorState, AdafactorStep};
use crate::error::{Error, Result};
use crate::shape::DType;

const OP: &str = "adafactor_";

/// Sum over `xs` of `f(x)` in f64, in fixed-size blocks summed in order.
fn sum_by<T: Real>(xs: &[T], f: impl Fn(usize, T) -> f64 + Sync) -> f64 {
    let parts: Vec<f64> = xs
        .par_chunks(PAR_MIN)
        .enumerate()
        .map(|(k, c)| {
            c.iter()
                .enumerate()
                .map(|(i, &x)| f(k * PAR_MIN + i, x))
                .sum::<f64>()
        })
        .collect();
    parts.iter().sum()
}

/// `state = beta2t·state + (1 - beta2t)·mean` for each running mean.
fn ema<T: Real>(state: &mut [T], means: &[f64], hp: &AdafactorStep) {
    let (b2, ob2) = (T::of(hp.beta2t), T::of(1.0 - hp.beta2t));
    for (s, &m) in state.iter_mut().zip(means) {
        *s = b2 * *s + ob2 * T::of(m);
    }
}

/// The factored second moment's per-element factor: `rsqrt(row / mean(row))` per row
/// and `rsqrt(col)` per column, both updated from the scaled gradient.
struct Factors<T> {
    rows: Vec<T>,
    cols: Vec<T>,
}

fn factored<T: Real>(
    g: &[T],
    gs: T,
    (r, c): (usize, usize),
    row: &mut [T],
    col: &mut [T],
    hp: &AdafactorStep,
) -> Factors<T> {
    let eps1 = T::of(hp.eps1);
    let sq = |x: T| {
        let x = x * gs;
        (x * x + eps1).f64()
    };
    // Row means (each row in parallel), then column means (rows in order).
    let row_means: Vec<f64> = g
        .par_chunks(c)
        .map(|x| x.iter().map(|&v| sq(v)).sum::<f64>() / c as f64)
        .collect();
    ema(row, &row_means, hp);
    let mats = g.len() / (r * c);
    let mut col_means = vec![0f64; mats * c];
    for (b, m) in col_means.chunks_mut(c).enumerate() {
        for x in g[b * r * c..(b + 1) * r * c].chunks(c) {
            for (acc, &v) in m.iter_mut().zip(x) {
                *acc += sq(v);
            }
        }
        m.iter_mut().for_each(|v| *v /= r as f64);
    }
    ema(col, &col_means, hp);
    // transformers' _approx_sq_grad: rsqrt(row / row.mean(-1)) ⊗ rsqrt(col).
    let mut rows = Vec::with_capacity(row.len());
    for rb in row.chunks(r) {
        let mean = T::of(rb.iter().map(|v| v.f64()).sum::<f64>() / r as f64);
        rows.extend(rb.iter().map(|&v| T::one() / (v / mean).sqrt()));
    }
    let cols = col.iter().map(|&v| T::one() / v.sqrt()).collect();
    Factors { rows, cols }
}

/// The second moment an update is divided by: factored (with the matrix size and the
/// column count), or full.
enum Moment<'a, T> {
    Factored(Factors<T>, usize, usize),
    Full(&'a [T]),
}

pub(super) fn adafactor_<T: Real>(
    p: &mut CpuStorage,
    grad: &CpuStorage,
    st: AdafactorState<'_, CpuStorage>,
    hp: &AdafactorStep,
) -> Result<Option<f64>> {
    let n = p.data.len();
    let g = grad.floats::<T>(OP)?;
    check_len(OP, "grad", n, g.len())?;
    let AdafactorState {
        row,
        col,
        exp_avg,
        working,
        rows_cols,
        weight_decay,
    } = st;
    if let Some(w) = working.as_ref() {
        check_len(OP, "working", n, w.data.len())?;
        if w.data.dtype() == DType::I32 {
            return Err(dtype_err(OP, "a float working copy", DType::I32));
        }
    }
    if let Some(m) = exp_avg.as_ref() {
        check_len(OP, "exp_avg", n, m.data.len())?;
    }
    if exp_avg.is_some() != hp.beta1.is_some() {
        return Err(Error::msg(
            "adafactor_: exp_avg is kept exactly when beta1 is set",
        ));
    }
    if n == 0 {
        return Ok(hp.report_lr.then_some(0.0));
    }
    let gs = T::of(hp.grad_scale);
    // transformers' _get_lr, from the RMS of the parameter before this step.
    let pp = p.floats_mut::<T>(OP)?;
    let rms_p = (sum_by(pp, |_, x| (x * x).f64()) / n as f64).sqrt();
    let param_scale = if hp.scale_parameter {
        hp.eps2.max(T::of(rms_p).f64())
    } else {
        1.0
    };
    let lr = param_scale * hp.rel_step;
    let rows = row.floats_mut::<T>(OP)?;
    let moment = match rows_cols {
        Some((r, c)) => {
            let col = col.ok_or_else(|| Error::msg("adafactor_: a factored state needs col"))?;
            let cols = col.floats_mut::<T>(OP)?;
            if r == 0 || c == 0 || !n.is_multiple_of(r * c) {
                return Err(Error::msg(format!(
                    "adafactor_: {n} elements are not matrices of {r} x {c}"
                )));
            }
            check_len(OP, "exp_avg_sq_row", n / c, rows.len())?;
            check_len(OP, "exp_avg_sq_col", n / r, cols.len())?;
            Moment::Factored(factored(g, gs, (r, c), rows, cols, hp), r * c, c)
        }
        None => {
            check_len(OP, "exp_avg_sq", n, rows.len())?;
            let (b2, ob2, eps1) = (T::of(hp.beta2t), T::of(1.0 - hp.beta2t), T::of(hp.eps1));
            rows.par_iter_mut()
                .zip(g.par_iter())
                .with_min_len(PAR_MIN)
                .for_each(|(v, &x)| {
                    let x = x * gs;
                    *v = b2 * *v + ob2 * (x * x + eps1);
                });
            Moment::Full(&*rows)
        }
    };
    // The unscaled update of element i: (r_factor · c_factor) · g, or rsqrt(v) · g.
    let u_at = |i: usize| match &moment {
        Moment::Factored(f, rc, c) => f.rows[i / c] * f.cols[(i / rc) * c + i % c] * (g[i] * gs),
        Moment::Full(v) => T::one() / v[i].sqrt() * (g[i] * gs),
    };
    // update /= max(1, RMS(update) / clip_threshold); update *= lr.
    let usq = sum_by(g, |i, _| {
        let u = u_at(i);
        (u * u).f64()
    });
    let rms_u = T::of(usq.sqrt()) / T::of((n as f64).sqrt());
    let denom = (rms_u / T::of(hp.clip_threshold)).max(T::one());
    let (lr_t, wd) = (T::of(lr), T::of(-weight_decay * lr));
    let step_of = |i: usize| u_at(i) / denom * lr_t;
    let decay = weight_decay != 0.0;
    match (exp_avg, hp.beta1) {
        (Some(m), Some(b1)) => {
            let (tb1, ob1) = (T::of(b1), T::of(1.0 - b1));
            let mm = m.floats_mut::<T>(OP)?;
            pp.par_iter_mut()
                .zip(mm.par_iter_mut())
                .enumerate()
                .with_min_len(PAR_MIN / 4)
                .for_each(|(i, (p, m))| {
                    *m = *m * tb1 + ob1 * step_of(i);
                    if decay {
                        *p += wd * *p;
                    }
                    *p -= *m;
                });
        }
        _ => pp
            .par_iter_mut()
            .enumerate()
            .with_min_len(PAR_MIN / 4)
            .for_each(|(i, p)| {
                let u = step_of(i);
                if decay {
                    *p += wd * *p;
                }
                *p -= u;
            }),
    }
    if let Some(w) = working {
        super::elementwise::copy_from_(w, p)?;
    }
    Ok(hp.report_lr.then_some(lr))
}
