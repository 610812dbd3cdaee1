//! One optimizer step over its micro-batches: the sequence the training loop runs and
//! the VRAM planner runs on the meta device, written once so the plan is the loop's.
//!
//! Each micro-batch's loss is scaled by its share of the step's rows (HF divides each
//! micro-batch loss by the accumulation steps) and by the loss scale, and back-propagated
//! into the one gradient set the step holds (`autograd::backward_into`: each parameter's
//! gradient is added in as soon as it is final, so two full sets are never held at
//! once). Its loss value stays on the device (detached) and is read once after the
//! optimizer step, so nothing waits for the device between forward and backward.
//! Forward, backward and optimizer are NVTX ranges (profile/nvtx.rs).

use crate::autograd::{backward_into, Grads};
use crate::error::{Error, Result};
use crate::optim::{LossScaler, Optimizer, StepOutcome};
use crate::profile::nvtx;
use crate::tensor::Tensor;

/// What a step did: the optimizer's outcome and the step's loss (the micro-batch losses
/// weighted by their shares, summed in micro-batch order).
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    pub outcome: StepOutcome,
    pub loss: f64,
}

/// Run `shares.len()` micro-batches (`loss_of(i)` computes micro-batch `i`'s loss; its
/// share of the step's rows is `shares[i]`), then one optimizer update at `lr`. The scaler's
/// state is read here; updating it from the outcome is the caller's.
pub fn accumulate_and_step(
    opt: &mut Optimizer,
    scaler: Option<&LossScaler>,
    lr: f64,
    max_grad_norm: Option<f64>,
    shares: &[f64],
    mut loss_of: impl FnMut(usize) -> Result<Tensor>,
) -> Result<StepReport> {
    if shares.is_empty() {
        return Err(Error::msg("train: empty optimizer step"));
    }
    let mut grads = Grads::default();
    let mut losses: Vec<Tensor> = Vec::with_capacity(shares.len());
    for (i, &share) in shares.iter().enumerate() {
        let loss = {
            let _range = nvtx::range("forward");
            loss_of(i)?
        };
        losses.push(loss.detach());
        let _range = nvtx::range("backward");
        let mut scaled = loss.scale(share)?;
        if let Some(s) = scaler {
            scaled = scaled.scale(s.scale)?;
        }
        backward_into(&scaled, &mut grads)?;
    }
    let inv = scaler.map(|s| s.inv_scale()).unwrap_or(1.0);
    let outcome = {
        let _range = nvtx::range("optimizer");
        opt.step(&grads, lr, inv, max_grad_norm)?
    };
    // The step's one host read of the losses (the optimizer already waited for the
    // gradients' norm).
    let mut loss = 0.0;
    for (l, share) in losses.iter().zip(shares) {
        loss += l.to_scalar()? * share;
    }
    Ok(StepReport { outcome, loss })
}
