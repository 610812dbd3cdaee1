//! Host side of kernels/adamw.cu: one mixed-precision AdamW step on one parameter.
//!
//! Two launches share a device flag: `check` marks a non-finite unscaled gradient,
//! `step` reads the flag and leaves everything untouched when it is set. The host reads
//! the flag (4 bytes) to return whether the step was skipped, as the trait requires;
//! with `check_finite = false` (the optimizer checked all gradients at once) neither the
//! check nor the readback happens, so a step over ~100 tensors costs no sync per tensor.
//! `AdamW::step` on CUDA normally takes the multi-tensor path instead (adamw_multi.rs:
//! a constant number of launches for all tensors); this one stays as the fallback and
//! the per-tensor reference it is tested against.

use super::context::{cfg_1d, n64, Arg};
use super::{len_err, sfx, CudaStorage};
use crate::backend::{AdamWStep, BackendStorage};
use crate::error::{Error, Result};
use crate::shape::DType;

/// The kernels' (pointer, kind) for an optional working copy of `n` elements: kind 0 =
/// none (null pointer), 1 = f16, 2 = f32. Shared by the per-tensor and multi-tensor steps.
pub(super) fn working_arg(
    working: Option<&CudaStorage>,
    n: usize,
    op: &'static str,
) -> Result<(u64, i32)> {
    let Some(w) = working else {
        return Ok((0, 0));
    };
    if w.len() != n {
        return Err(len_err(op, n, w.len()));
    }
    match w.dtype() {
        DType::F16 => Ok((w.ptr(), 1)),
        DType::F32 => Ok((w.ptr(), 2)),
        got => Err(Error::DType {
            op,
            expected: "f16 or f32 working copy",
            got,
        }),
    }
}

/// The scalars both AdamW kernels take after the weight decay: beta1, 1 - beta1,
/// beta2, 1 - beta2, eps, lr / (1 - beta1^t), 1 / sqrt(1 - beta2^t); each formed in f64
/// and rounded once, exactly as the CPU backend does.
pub(super) fn moment_args(lr: f64, beta1: f64, beta2: f64, eps: f64, step: u64) -> [Arg; 7] {
    let (bc1, bc2_sqrt) = crate::backend::adamw_bias_corrections(beta1, beta2, step);
    [
        beta1,
        1.0 - beta1,
        beta2,
        1.0 - beta2,
        eps,
        lr / bc1,
        1.0 / bc2_sqrt,
    ]
    .map(|x| Arg::F32(x as f32))
}

fn need(v: &CudaStorage, p: &CudaStorage, dtype: Option<DType>, what: &'static str) -> Result<()> {
    p.check_pair(v, what)?;
    if let Some(d) = dtype {
        if v.dtype() != d {
            return Err(Error::DType {
                op: what,
                expected: d.as_str(),
                got: v.dtype(),
            });
        }
    }
    Ok(())
}

pub fn adamw_(
    p: &mut CudaStorage,
    grad: &CudaStorage,
    m: &mut CudaStorage,
    v: &mut CudaStorage,
    working: Option<&mut CudaStorage>,
    hp: &AdamWStep,
) -> Result<bool> {
    let op = "adamw_";
    if p.dtype() != DType::F32 {
        return Err(Error::DType {
            op,
            expected: "f32 master weights on CUDA",
            got: p.dtype(),
        });
    }
    need(grad, p, None, op)?;
    let gs = sfx(op, grad.dtype())?;
    need(m, p, Some(DType::F32), op)?;
    need(v, p, Some(DType::F32), op)?;
    if hp.step == 0 {
        return Err(Error::msg(
            "adamw_: step is 1-based (bias correction divides by 1 - beta^step)",
        ));
    }
    let (wptr, wkind) = working_arg(working.as_deref(), p.len(), op)?;
    if p.is_empty() {
        return Ok(false);
    }
    let dev = p.dev().clone();
    // Without a per-tensor check there is no flag: the kernel takes a null pointer.
    let flag = if hp.check_finite {
        Some(CudaStorage::zeroed(&dev, 1, DType::I32)?)
    } else {
        None
    };
    let flag_ptr = flag.as_ref().map(|f| f.ptr()).unwrap_or(0);
    let (n, flag_arg) = (n64(p.len()), Arg::Ptr(flag_ptr));
    let grad_scale = Arg::F32(hp.grad_scale as f32);
    if hp.check_finite {
        let name = format!("fb_adamw_check_{gs}");
        dev.launch_bufs(&name, cfg_1d(p.len()), &[grad], &[n, grad_scale, flag_arg])?;
    }
    let head = [Arg::Ptr(wptr), Arg::I32(wkind), n];
    let decay = Arg::F32((1.0 - hp.lr * hp.weight_decay) as f32);
    let moments = moment_args(hp.lr, hp.beta1, hp.beta2, hp.eps, hp.step);
    dev.launch_bufs(
        &format!("fb_adamw_step_{gs}"),
        cfg_1d(p.len()),
        &[p, grad, m, v],
        &[&head[..], &[decay], &moments, &[grad_scale, flag_arg]].concat(),
    )?;
    match flag {
        Some(f) => f.flag_set(),
        // The caller checked every gradient at once: nothing to read back.
        None => Ok(false),
    }
}
