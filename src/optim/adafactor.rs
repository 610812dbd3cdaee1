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

use super::slots::{self, core_api, Core, Slot, StepOutcome};
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
    core: Core,
    pub config: AdafactorConfig,
    /// The slot whose step size is reported (HF's AdafactorSchedule: the first
    /// parameter of the first group, the decaying one).
    report: usize,
    last_lr: Option<f64>,
}

core_api!(Adafactor);

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
        let out = slots::build(params, config.weight_decay, &decay, |s, d| {
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
            Ok(())
        })?;
        let report = params.iter().position(|(n, _)| decay(n)).unwrap_or(0);
        Ok(Adafactor {
            core: Core::new(out),
            config,
            report,
            last_lr: None,
        })
    }

    /// The step size the last update gave the reported parameter, as HF's
    /// `AdafactorSchedule` reports it (`None` before the first update).
    pub fn last_lr(&self) -> Option<f64> {
        self.last_lr
    }

    /// A state buffer of a parameter by torch's name (`exp_avg_sq_row`, ...).
    pub fn state(&self, name: &str, kind: &str) -> Option<&Tensor> {
        self.core.slots.iter().find(|s| s.name == name)?.get(kind)
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
        let c = self.config;
        let t = self.core.steps + 1;
        let hp = AdafactorStep {
            rel_step: c.rel_step(lr, t),
            scale_parameter: c.scale_parameter,
            eps1: c.eps.0,
            eps2: c.eps.1,
            clip_threshold: c.clip_threshold,
            beta2t: 1.0 - (t as f64).powf(c.decay_rate),
            beta1: c.beta1,
            grad_scale,
            report_lr: false,
        };
        let report = self.report;
        // The reported step size, from whichever path runs.
        let seen = std::cell::Cell::new(None);
        let multi = |core: &mut Core| {
            let out = step_multi(core, report, grads, &hp, max_grad_norm)?;
            seen.set(out.and_then(|o| o.1));
            Ok(out.map(|o| o.0))
        };
        let each = |i: usize, s: &Slot, g: &Tensor, gm: f64, _step: u64| {
            let hp = AdafactorStep {
                grad_scale: gm,
                report_lr: i == report,
                ..hp
            };
            let gs = g.storage();
            let mut st: Vec<_> = s.state.iter().map(|(_, t)| t.storage_mut()).collect();
            let mut w = s.master.as_ref().map(|_| s.param.storage_mut());
            let state = adafactor_state(
                s,
                st.iter_mut().map(|g| &mut **g).collect(),
                w.as_deref_mut(),
            )?;
            if let Some(lr) = s.main().storage_mut().adafactor_(&gs, state, &hp)? {
                seen.set(Some(lr));
            }
            Ok(())
        };
        let span = crate::profile::Span::new("adafactor", self.core.device()).cost(|| {
            self.core.cost(grads, |s, g| {
                let state = s.state.iter().map(|(_, t)| t.elem_count()).sum();
                let (p, n) = (s.param.dtype(), s.param.elem_count());
                let moment = c.beta1.is_some();
                crate::profile::cost::adafactor(n, state, p, g.dtype(), s.master.is_some(), moment)
            })
        });
        let out = self
            .core
            .step(span, grads, (grad_scale, max_grad_norm), multi, each)?;
        if let Some(lr) = seen.get() {
            self.last_lr = Some(lr);
        }
        Ok(out)
    }
}

/// The step through `backend::adafactor_multi`, with the reported step size; `None`
/// when the backend has no such path or the buffers cannot be locked together.
fn step_multi(
    core: &mut Core,
    report: usize,
    grads: &Grads,
    hp: &AdafactorStep,
    max_grad_norm: Option<f64>,
) -> Result<Option<(StepOutcome, Option<f64>)>> {
    let Some(mut locked) = slots::lock(&core.slots, grads, &mut core.distinct) else {
        return Ok(None);
    };
    let reported = core.slots.get(report);
    let mut list = Vec::new();
    let mut at = None;
    for p in locked.parts() {
        if reported.is_some_and(|r| std::ptr::eq(p.slot, r)) {
            at = Some(list.len());
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
        report: at,
    };
    let Some(out) = crate::backend::adafactor_multi(&mut list, &hs)? else {
        return Ok(None);
    };
    drop(list);
    drop(locked);
    let lr = out.lr.filter(|_| !out.multi.skipped);
    let step = core.finish_multi(out.multi.skipped, out.multi.sum_sq, hp.grad_scale);
    Ok(Some((step, lr)))
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
