//! AdamW exactly as `torch.optim.AdamW` (decoupled weight decay applied to the parameter
//! before the Adam update, bias correction, eps added outside the sqrt), with HF Trainer's
//! rule for which parameters decay. Masters, clipping and the multi-tensor locking are
//! shared with Adafactor (`slots.rs`).
//!
//! On CUDA the whole step goes to the backend's multi-tensor AdamW
//! (`backend::adamw_multi`): a constant number of launches for all parameters, with the
//! global norm, the clip coefficient and the inf/NaN skip decided on the device and read
//! back once. The per-tensor path below stays as the CPU implementation and the fallback
//! (and can be forced with [`AdamW::set_multi_tensor`] for A/B checks).

use super::slots::{self, core_api, Core, Slot, StepOutcome};
use crate::autograd::Grads;
use crate::backend::{AdamWState, AdamWStep};
use crate::error::Result;
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// torch's defaults except weight decay, which HF Trainer sets per run (0.0 default).
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// HF Trainer's `get_decay_parameter_names`: no decay for biases and normalisation
/// weights (LayerNorm, T5's RMS `layer_norm`), matched on the lower-cased name.
pub fn decays(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    let parts: Vec<&str> = n.split('.').collect();
    let norm_part = parts.iter().any(|p| {
        *p == "norm" || p.ends_with("_norm") || p.contains("layernorm") || p.contains("rmsnorm")
    });
    !(n.contains("bias") || norm_part)
}

pub struct AdamW {
    core: Core,
    pub config: AdamWConfig,
}

/// Whether new optimizers take the backend's multi-tensor step: yes unless
/// FUSEBOX_ADAMW_PER_TENSOR=1 (the per-tensor path, for A/B timing; Adafactor's too).
pub fn multi_tensor_default() -> bool {
    std::env::var("FUSEBOX_ADAMW_PER_TENSOR").map_or(true, |v| v != "1")
}

core_api!(AdamW);

impl AdamW {
    /// One state per trainable tensor; decay per [`decays`] (or for all when
    /// `use_groups` is false, as plain `torch.optim.AdamW(model.parameters())`).
    pub fn new(
        params: &[(String, Tensor)],
        config: AdamWConfig,
        use_groups: bool,
    ) -> Result<AdamW> {
        AdamW::with_decay_rule(params, config, |name| !use_groups || decays(name))
    }

    /// Like [`AdamW::new`] with an explicit rule for which names get weight decay.
    pub fn with_decay_rule(
        params: &[(String, Tensor)],
        config: AdamWConfig,
        decay: impl Fn(&str) -> bool,
    ) -> Result<AdamW> {
        // torch's names for m and v.
        let out = slots::build(params, config.weight_decay, decay, |s, d| {
            s.add_state("exp_avg", d)?;
            s.add_state("exp_avg_sq", d)
        })?;
        Ok(AdamW {
            core: Core::new(out),
            config,
        })
    }

    /// Names and weight decay of each parameter (for logs and tests).
    pub fn groups(&self) -> Vec<(String, f64)> {
        self.core
            .slots
            .iter()
            .map(|s| (s.name.clone(), s.weight_decay))
            .collect()
    }

    /// Moment buffers of a parameter (for parity tests and checkpoints).
    pub fn moments(&self, name: &str) -> Option<(&Tensor, &Tensor)> {
        let s = self.core.slots.iter().find(|s| s.name == name)?;
        Some((s.get("exp_avg")?, s.get("exp_avg_sq")?))
    }

    /// Apply one update with learning rate `lr`. `grad_scale` is 1/loss_scale (1.0
    /// without scaling); `max_grad_norm` clips the global norm of the unscaled gradients
    /// as `clip_grad_norm_` does. Parameters without a gradient are left alone.
    pub fn step(
        &mut self,
        grads: &Grads,
        lr: f64,
        grad_scale: f64,
        max_grad_norm: Option<f64>,
    ) -> Result<StepOutcome> {
        let c = self.config;
        let multi = |core: &mut Core| step_multi(core, &c, grads, lr, grad_scale, max_grad_norm);
        let each = |_: usize, s: &Slot, g: &Tensor, gm: f64, step: u64| {
            let hp = AdamWStep {
                lr,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                weight_decay: s.weight_decay,
                step,
                grad_scale: gm,
                check_finite: false,
            };
            let gs = g.storage();
            let mut m = s.state[0].1.storage_mut();
            let mut v = s.state[1].1.storage_mut();
            let mut w = s.master.as_ref().map(|_| s.param.storage_mut());
            let st = AdamWState::new(&mut *m, &mut *v, w.as_deref_mut());
            if s.main().storage_mut().adamw_(&gs, st, &hp)? {
                // Unreachable after the pre-check unless a backend disagrees with it.
                return Err(crate::error::Error::msg(format!(
                    "AdamW: backend found inf/NaN in the gradient of {} after the pre-check",
                    s.name
                )));
            }
            Ok(())
        };
        let span = crate::profile::Span::new("adamw", self.core.device()).cost(|| {
            self.core.cost(grads, |s, g| {
                let (p, n) = (s.param.dtype(), s.param.elem_count());
                crate::profile::cost::adamw(n, p, g.dtype(), s.master.is_some())
            })
        });
        self.core
            .step(span, grads, (grad_scale, max_grad_norm), multi, each)
    }
}

/// The step through `backend::adamw_multi`; `None` when the backend has no such path or
/// the buffers cannot be locked together (then the per-tensor path runs).
fn step_multi(
    core: &mut Core,
    c: &AdamWConfig,
    grads: &Grads,
    lr: f64,
    grad_scale: f64,
    max_grad_norm: Option<f64>,
) -> Result<Option<StepOutcome>> {
    let Some(mut locked) = slots::lock(&core.slots, grads, &mut core.distinct) else {
        return Ok(None);
    };
    let mut list = Vec::new();
    for p in locked.parts() {
        let Ok([m, v]) = <[_; 2]>::try_from(p.state) else {
            return Ok(None);
        };
        list.push(crate::backend::AdamWTensor {
            param: p.main,
            grad: p.grad,
            m,
            v,
            working: p.working,
            weight_decay: p.slot.weight_decay,
        });
    }
    let hp = crate::backend::AdamWMultiStep {
        lr,
        beta1: c.beta1,
        beta2: c.beta2,
        eps: c.eps,
        step: core.steps + 1,
        grad_scale,
        max_grad_norm,
    };
    let Some(out) = crate::backend::adamw_multi(&mut list, &hp)? else {
        return Ok(None);
    };
    drop(list);
    drop(locked);
    Ok(Some(core.finish_multi(out.skipped, out.sum_sq, grad_scale)))
}
