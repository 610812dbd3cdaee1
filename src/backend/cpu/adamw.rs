//! One fused AdamW step on a master parameter (mirrors kernels/adamw.cu).
//!
//! torch.optim.AdamW semantics, in torch's operation order: unscale the gradient,
//! decoupled weight decay `p *= 1 - lr·wd`, moment updates, then
//! `p -= (lr / bc1) · m / (sqrt(v) / sqrt(bc2) + eps)`. The inf/NaN check of the scaled
//! gradient runs first over the whole buffer, so an overflowing step (fp16 loss
//! scaling) leaves parameters and moments untouched, like GradScaler skipping
//! `optimizer.step()`.

use rayon::prelude::*;

use super::{check_len, dtype_err, CpuStorage, Real, PAR_MIN};
use crate::backend::{AdamWState, AdamWStep};
use crate::error::{Error, Result};
use crate::shape::DType;

pub(super) fn adamw_<T: Real>(
    p: &mut CpuStorage,
    grad: &CpuStorage,
    AdamWState { m, v, working }: AdamWState<'_, CpuStorage>,
    hp: &AdamWStep,
) -> Result<bool> {
    const OP: &str = "adamw_";
    if hp.step == 0 {
        return Err(Error::msg("adamw_: step is 1-based; got 0"));
    }
    let n = p.data.len();
    let g = grad.floats::<T>(OP)?;
    check_len(OP, "grad", n, g.len())?;
    check_len(OP, "m", n, m.data.len())?;
    check_len(OP, "v", n, v.data.len())?;
    if let Some(w) = working.as_ref() {
        check_len(OP, "working", n, w.data.len())?;
        if w.data.dtype() == DType::I32 {
            return Err(dtype_err(OP, "a float working copy", DType::I32));
        }
    }
    let gs = T::of(hp.grad_scale);
    if hp.check_finite
        && g.par_iter()
            .with_min_len(PAR_MIN)
            .any(|&x| !(x * gs).is_finite())
    {
        return Ok(true);
    }
    let (b1, b2) = (hp.beta1, hp.beta2);
    let (bc1, bc2_sqrt) = hp.bias_corrections();
    let decay = T::of(1.0 - hp.lr * hp.weight_decay);
    let step_size = T::of(hp.lr / bc1);
    let inv_bc2 = T::of(1.0 / bc2_sqrt);
    let (tb1, tb2) = (T::of(b1), T::of(b2));
    let (ob1, ob2) = (T::of(1.0 - b1), T::of(1.0 - b2));
    let eps = T::of(hp.eps);
    let (mm, vv) = (m.floats_mut::<T>(OP)?, v.floats_mut::<T>(OP)?);
    let pp = p.floats_mut::<T>(OP)?;
    pp.par_iter_mut()
        .zip(mm.par_iter_mut().zip(vv.par_iter_mut()))
        .zip(g.par_iter())
        .with_min_len(PAR_MIN / 4)
        .for_each(|((p, (m, v)), &g)| {
            let g = g * gs;
            *p *= decay;
            *m = tb1 * *m + ob1 * g;
            *v = tb2 * *v + ob2 * g * g;
            *p -= step_size * *m / (v.sqrt() * inv_bc2 + eps);
        });
    if let Some(w) = working {
        super::elementwise::copy_from_(w, p)?;
    }
    Ok(false)
}
