//! Adafactor exactly as `transformers.optimization.Adafactor` (Shazeer & Stern 2018,
//! "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost"): a factored second
//! moment for tensors of two or more dims (running means over the rows and the columns
//! of the last two dims, so a [R, C] weight keeps R + C numbers instead of R·C), the full
//! one for 1-D tensors; the update clipped by its own RMS (`clip_threshold`); the step
//! size either the external lr or, with `relative_step`, min(1e-2, 1/√t) (1e-6·t under
//! `warmup_init`), times max(eps2, RMS(param)) with `scale_parameter`; an optional first
//! moment (`beta1`) and weight decay. fp16 parameters train through fp32 masters and
//! fp32 state, as AdamW's do (`slots.rs`), and the global-norm clip and loss-scale
//! unscaling come first, as HF Trainer runs `clip_grad_norm_` before `optimizer.step()`.
//!
//! On CUDA the step is the backend's multi-tensor Adafactor (`backend::adafactor_multi`,
//! kernels/adafactor.cu); the per-tensor path below is the CPU implementation and the
//! fallback, as for AdamW.

use std::collections::BTreeMap;

use super::slots::{self, Precheck, Slot, StepOutcome};
use crate::autograd::Grads;
use crate::backend::{AdafactorMultiStep, AdafactorState, AdafactorStep, AdafactorTensor};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// transformers' `Adafactor` arguments besides `lr` (which each step is given).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdafactorConfig {
    /// Added to g² (eps[0]) and the floor of the parameter scale (eps[1]).
    pub eps: (f64, f64),
    pub clip_threshold: f64,
    /// The second-moment decay at step t is 1 - t^decay_rate.
    pub decay_rate: f64,
    /// First-moment decay; `None` keeps no first moment.
    pub beta1: Option<f64>,
    pub weight_decay: f64,
    pub scale_parameter: bool,
    /// The step size is Adafactor's own schedule, not the external lr.
    pub relative_step: bool,
    pub warmup_init: bool,
}

impl Default for AdafactorConfig {
    /// transformers' `Adafactor(params)` defaults: relative step, parameter scale.
    fn default() -> Self {
        AdafactorConfig {
            eps: (1e-30, 1e-3),
            clip_threshold: 1.0,
            decay_rate: -0.8,
            beta1: None,
            weight_decay: 0.0,
            scale_parameter: true,
            relative_step: true,
            warmup_init: false,
        }
    }
}

impl AdafactorConfig {
    /// HF Trainer's `optim="adafactor"`: the external lr (Trainer's schedule),
    /// `scale_parameter` and `relative_step` off; also the T5 fine-tuning recipe
    /// transformers documents (with lr 1e-3).
    pub fn trainer(weight_decay: f64) -> AdafactorConfig {
        AdafactorConfig {
            scale_parameter: false,
            relative_step: false,
            weight_decay,
            ..AdafactorConfig::default()
        }
    }

    /// Refuse what transformers refuses, and values no step can use.
    pub fn check(&self) -> Result<()> {
        if self.warmup_init && !self.relative_step {
            return Err(Error::msg(
                "adafactor: warmup_init=True requires relative_step=True (as transformers)",
            ));
        }
        // Each (what, value, in range): NaN is never in range.
        let checks = [
            ("eps[0] (>= 0)", self.eps.0, self.eps.0 >= 0.0),
            ("eps[1] (>= 0)", self.eps.1, self.eps.1 >= 0.0),
            (
                "clip_threshold (> 0)",
                self.clip_threshold,
                self.clip_threshold > 0.0,
            ),
            ("decay_rate (< 0)", self.decay_rate, self.decay_rate < 0.0),
            (
                "weight_decay (>= 0)",
                self.weight_decay,
                self.weight_decay >= 0.0,
            ),
            (
                "beta1 (in [0, 1))",
                self.beta1.unwrap_or(0.0),
                self.beta1.is_none_or(|b| (0.0..1.0).contains(&b)),
            ),
        ];
        if let Some((what, v, _)) = checks.iter().find(|c| !c.2) {
            return Err(Error::msg(format!("adafactor: {what} is {v}")));
        }
        Ok(())
    }

    /// The step size before the parameter scale at 1-based step `t`: transformers'
    /// `_get_lr` without its RMS factor.
    pub fn rel_step(&self, lr: f64, t: u64) -> f64 {
        if !self.relative_step {
            return lr;
        }
        let t = t as f64;
        let min_step = if self.warmup_init { 1e-6 * t } else { 1e-2 };
        min_step.min(1.0 / t.sqrt())
    }
}

pub struct Adafactor {
    slots: Vec<Slot>,
    pub config: AdafactorConfig,
    steps: u64,
    multi_tensor: bool,
    distinct: Option<bool>,
    /// The slot whose step size is reported (HF's AdafactorSchedule: the first
    /// parameter of the first group, the decaying one).
    report: usize,
    last_lr: Option<f64>,
}

impl Adafactor {
    /// One state per trainable tensor: `exp_avg_sq_row` [.., R] and `exp_avg_sq_col`
    /// [.., C] for two or more dims, `exp_avg_sq` for one, and `exp_avg` with beta1;
    /// weight decay for the names `decay` accepts (HF's groups: [`super::decays`]).
    pub fn new(
        params: &[(String, Tensor)],
        config: AdafactorConfig,
        decay: impl Fn(&str) -> bool,
    ) -> Result<Adafactor> {
        config.check()?;
        let mut out = Vec::with_capacity(params.len());
        for (name, p) in params {
            let wd = if decay(name) {
                config.weight_decay
            } else {
                0.0
            };
            let mut s = Slot::new(name, p, wd)?;
            let d = p.dims();
            if d.len() >= 2 {
                let (lead, last) = (&d[..d.len() - 2], d[d.len() - 1]);
                s.add_state("exp_avg_sq_row", &d[..d.len() - 1])?;
                s.add_state("exp_avg_sq_col", &[lead, &[last]].concat())?;
            } else {
                s.add_state("exp_avg_sq", d)?;
            }
            if config.beta1.is_some() {
                s.add_state("exp_avg", d)?;
            }
            out.push(s);
        }
        let report = params.iter().position(|(n, _)| decay(n)).unwrap_or(0);
        Ok(Adafactor {
            slots: out,
            config,
            steps: 0,
            multi_tensor: super::adamw::multi_tensor_default(),
            distinct: None,
            report,
            last_lr: None,
        })
    }

    /// Use the backend's multi-tensor step where it has one (default: on).
    pub fn set_multi_tensor(&mut self, on: bool) {
        self.multi_tensor = on;
    }

    /// Number of updates applied (skipped steps not counted): transformers' `step`.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }

    /// The step size the last update gave the reported parameter, as HF's
    /// `AdafactorSchedule` reports it (`None` before the first update).
    pub fn last_lr(&self) -> Option<f64> {
        self.last_lr
    }

    /// Checkpoint state: `param.NAME` and torch's state names per parameter.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        slots::state_tensors(&self.slots)
    }

    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        slots::load_state(&self.slots, state)
    }

    /// A state buffer of a parameter by torch's name (`exp_avg_sq_row`, ...).
    pub fn state(&self, name: &str, kind: &str) -> Option<&Tensor> {
        self.slots.iter().find(|s| s.name == name)?.get(kind)
    }

    /// This step's hyper-parameters (before the gradient multiplier is final).
    fn hp(&self, lr: f64, grad_scale: f64) -> AdafactorStep {
        let c = &self.config;
        let t = self.steps + 1;
        AdafactorStep {
            rel_step: c.rel_step(lr, t),
            scale_parameter: c.scale_parameter,
            eps1: c.eps.0,
            eps2: c.eps.1,
            clip_threshold: c.clip_threshold,
            beta2t: 1.0 - (t as f64).powf(c.decay_rate),
            beta1: c.beta1,
            grad_scale,
            report_lr: false,
        }
    }

    /// One update with external learning rate `lr` (ignored with `relative_step`);
    /// `grad_scale` and `max_grad_norm` as [`super::AdamW::step`] takes them.
    pub fn step(
        &mut self,
        grads: &Grads,
        lr: f64,
        grad_scale: f64,
        max_grad_norm: Option<f64>,
    ) -> Result<StepOutcome> {
        let device = slots::device_of(&self.slots);
        let _span = crate::profile::Span::new("adafactor", device);
        let mut hp = self.hp(lr, grad_scale);
        if self.multi_tensor && device.target() == Some(crate::shape::Target::Cuda) {
            if let Some(out) = self.step_multi(grads, &hp, max_grad_norm)? {
                return Ok(out);
            }
        }
        let (grad_norm, clip) =
            match slots::precheck(&self.slots, grads, grad_scale, max_grad_norm)? {
                Precheck::Skip(out) => return Ok(out),
                Precheck::Go { grad_norm, clip } => (grad_norm, clip),
            };
        self.steps += 1;
        hp.grad_scale = grad_scale * clip;
        for (i, s) in self.slots.iter().enumerate() {
            let Some(g) = grads.get(&s.param) else {
                continue;
            };
            hp.report_lr = i == self.report;
            let gs = g.storage();
            let mut st: Vec<_> = s.state.iter().map(|(_, t)| t.storage_mut()).collect();
            let mut w = s.master.as_ref().map(|_| s.param.storage_mut());
            let mut main = s.main().storage_mut();
            let state = adafactor_state(
                s,
                st.iter_mut().map(|g| &mut **g).collect(),
                w.as_deref_mut(),
            )?;
            if let Some(lr) = main.adafactor_(&gs, state, &hp)? {
                self.last_lr = Some(lr);
            }
        }
        Ok(StepOutcome {
            skipped: false,
            grad_norm,
        })
    }

    /// The step through `backend::adafactor_multi`; `None` when the backend has no such
    /// path or the buffers cannot be locked together.
    fn step_multi(
        &mut self,
        grads: &Grads,
        hp: &AdafactorStep,
        max_grad_norm: Option<f64>,
    ) -> Result<Option<StepOutcome>> {
        let Some(mut locked) = slots::lock(&self.slots, grads, &mut self.distinct) else {
            return Ok(None);
        };
        let mut list = Vec::new();
        let mut report = None;
        for p in locked.parts() {
            if std::ptr::eq(p.slot, &self.slots[self.report]) {
                report = Some(list.len());
            }
            list.push(AdafactorTensor {
                param: p.main,
                grad: p.grad,
                st: adafactor_state(p.slot, p.state, p.working)?,
            });
        }
        let hs = AdafactorMultiStep {
            hp: *hp,
            max_grad_norm,
            report,
        };
        let Some(out) = crate::backend::adafactor_multi(&mut list, &hs)? else {
            return Ok(None);
        };
        if !out.multi.skipped {
            self.steps += 1;
            self.last_lr = out.lr.or(self.last_lr);
        }
        let grad_scale = hp.grad_scale;
        Ok(Some(slots::multi_outcome(
            out.multi.skipped,
            out.multi.sum_sq,
            grad_scale,
        )))
    }
}

/// A slot's locked state buffers (in `Adafactor::new`'s order: the second moment, row
/// then column when factored, then exp_avg) as the backend takes them.
fn adafactor_state<'a, S>(
    s: &Slot,
    state: Vec<&'a mut S>,
    working: Option<&'a mut S>,
) -> Result<AdafactorState<'a, S>> {
    let d = s.param.dims();
    let factored = d.len() >= 2;
    let mut it = state.into_iter();
    let row = it
        .next()
        .ok_or_else(|| Error::msg(format!("adafactor: {} has no second moment", s.name)))?;
    let col = if factored { it.next() } else { None };
    Ok(AdafactorState {
        row,
        col,
        exp_avg: it.next(),
        working,
        rows_cols: factored.then(|| (d[d.len() - 2], d[d.len() - 1])),
        weight_decay: s.weight_decay,
    })
}
