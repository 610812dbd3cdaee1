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

use std::collections::BTreeMap;

use super::slots::{self, Precheck, Slot, StepOutcome};
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
    slots: Vec<Slot>,
    pub config: AdamWConfig,
    steps: u64,
    multi_tensor: bool,
    /// Whether every buffer is a distinct storage (`slots::all_distinct`, checked once).
    distinct: Option<bool>,
}

/// Whether new optimizers take the backend's multi-tensor step: yes unless
/// FUSEBOX_ADAMW_PER_TENSOR=1 (the per-tensor path, for A/B timing).
pub fn multi_tensor_default() -> bool {
    std::env::var("FUSEBOX_ADAMW_PER_TENSOR").map_or(true, |v| v != "1")
}

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
        let mut out = Vec::with_capacity(params.len());
        for (name, p) in params {
            let wd = if decay(name) {
                config.weight_decay
            } else {
                0.0
            };
            let mut s = Slot::new(name, p, wd)?;
            // torch's names for m and v.
            s.add_state("exp_avg", p.dims())?;
            s.add_state("exp_avg_sq", p.dims())?;
            out.push(s);
        }
        Ok(AdamW {
            slots: out,
            config,
            steps: 0,
            multi_tensor: multi_tensor_default(),
            distinct: None,
        })
    }

    /// Use the backend's multi-tensor step where it has one (default: on). Off forces
    /// the per-tensor path everywhere, for A/B checks of the two.
    pub fn set_multi_tensor(&mut self, on: bool) {
        self.multi_tensor = on;
    }

    /// Number of updates applied (skipped steps not counted).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Set the count of applied updates (a resumed run's, for bias correction).
    pub fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }

    /// Names and weight decay of each parameter (for logs and tests).
    pub fn groups(&self) -> Vec<(String, f64)> {
        self.slots
            .iter()
            .map(|s| (s.name.clone(), s.weight_decay))
            .collect()
    }

    /// The state a checkpoint keeps, by parameter name: `param.NAME` (the fp32 master, or
    /// the parameter itself when it is f32), `exp_avg.NAME` and `exp_avg_sq.NAME` (torch's
    /// names for m and v).
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        slots::state_tensors(&self.slots)
    }

    /// Restore [`state_tensors`](Self::state_tensors): values copied into the live
    /// buffers, the fp16 working copies recast from their masters. Every parameter must
    /// be there with its shape. The update count is [`set_steps`](Self::set_steps)'s.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        slots::load_state(&self.slots, state)
    }

    /// Moment buffers of a parameter (for parity tests and checkpoints).
    pub fn moments(&self, name: &str) -> Option<(&Tensor, &Tensor)> {
        let s = self.slots.iter().find(|s| s.name == name)?;
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
        let device = slots::device_of(&self.slots);
        let _span = crate::profile::Span::new("adamw", device);
        if self.multi_tensor && device.target() == Some(crate::shape::Target::Cuda) {
            if let Some(out) = self.step_multi(grads, lr, grad_scale, max_grad_norm)? {
                return Ok(out);
            }
        }
        let (grad_norm, clip) =
            match slots::precheck(&self.slots, grads, grad_scale, max_grad_norm)? {
                Precheck::Skip(out) => return Ok(out),
                Precheck::Go { grad_norm, clip } => (grad_norm, clip),
            };
        self.steps += 1;
        let c = self.config;
        for s in &self.slots {
            let Some(g) = grads.get(&s.param) else {
                continue;
            };
            let hp = AdamWStep {
                lr,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                weight_decay: s.weight_decay,
                step: self.steps,
                grad_scale: grad_scale * clip,
                check_finite: false,
            };
            let gs = g.storage();
            let mut m = s.state[0].1.storage_mut();
            let mut v = s.state[1].1.storage_mut();
            let skipped = match &s.master {
                Some(master) => {
                    let mut w = s.param.storage_mut();
                    master.storage_mut().adamw_(
                        &gs,
                        AdamWState::new(&mut *m, &mut *v, Some(&mut *w)),
                        &hp,
                    )?
                }
                None => s.param.storage_mut().adamw_(
                    &gs,
                    AdamWState::new(&mut *m, &mut *v, None),
                    &hp,
                )?,
            };
            if skipped {
                // Unreachable after the pre-check unless a backend disagrees with it.
                return Err(crate::error::Error::msg(format!(
                    "AdamW: backend found inf/NaN in the gradient of {} after the pre-check",
                    s.name
                )));
            }
        }
        Ok(StepOutcome {
            skipped: false,
            grad_norm,
        })
    }

    /// The step through `backend::adamw_multi`; `None` when the backend has no such path
    /// or the buffers cannot be locked together (then the per-tensor path runs).
    fn step_multi(
        &mut self,
        grads: &Grads,
        lr: f64,
        grad_scale: f64,
        max_grad_norm: Option<f64>,
    ) -> Result<Option<StepOutcome>> {
        let Some(mut locked) = slots::lock(&self.slots, grads, &mut self.distinct) else {
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
        let c = self.config;
        let hp = crate::backend::AdamWMultiStep {
            lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            step: self.steps + 1,
            grad_scale,
            max_grad_norm,
        };
        let Some(out) = crate::backend::adamw_multi(&mut list, &hp)? else {
            return Ok(None);
        };
        if !out.skipped {
            self.steps += 1;
        }
        Ok(Some(slots::multi_outcome(
            out.skipped,
            out.sum_sq,
            grad_scale,
        )))
    }
}
