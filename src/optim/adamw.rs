//! AdamW exactly as `torch.optim.AdamW` (decoupled weight decay applied to the parameter
//! before the Adam update, bias correction, eps added outside the sqrt), with HF Trainer's
//! rule for which parameters decay. Clipping and loss-scale unscaling fold into one
//! gradient multiplier passed to the backend's fused step, so gradients are never
//! rewritten in place (two parameters may share one gradient buffer).
//!
//! On CUDA the whole step goes to the backend's multi-tensor AdamW
//! (`backend::adamw_multi`): a constant number of launches for all parameters, with the
//! global norm, the clip coefficient and the inf/NaN skip decided on the device and read
//! back once. The per-tensor path below stays as the CPU implementation and the fallback
//! (and can be forced with [`AdamW::set_multi_tensor`] for A/B checks).

use std::collections::BTreeMap;

use crate::autograd::Grads;
use crate::backend::{AdamWState, AdamWStep};
use crate::error::Result;
use crate::shape::DType;
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

struct Slot {
    name: String,
    /// The tensor the model uses (and the tape differentiates).
    param: Tensor,
    /// fp32 master copy when the working parameter is fp16; else the param itself.
    master: Option<Tensor>,
    m: Tensor,
    v: Tensor,
    weight_decay: f64,
}

/// What one `step` did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    /// True when the gradients held inf/NaN and nothing was updated.
    pub skipped: bool,
    /// Global L2 norm of the unscaled gradients (before clipping).
    pub grad_norm: f64,
}

pub struct AdamW {
    slots: Vec<Slot>,
    pub config: AdamWConfig,
    steps: u64,
    multi_tensor: bool,
    /// Whether every parameter, master and moment buffer is a distinct storage (checked
    /// once; a shared buffer would need two write locks in the multi-tensor path).
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
        let mut slots = Vec::with_capacity(params.len());
        for (name, p) in params {
            let master = if p.dtype() == DType::F16 {
                Some(p.to_dtype(DType::F32)?.detach())
            } else {
                None
            };
            let state_dtype = master.as_ref().map(|m| m.dtype()).unwrap_or(p.dtype());
            let m = p.zeros_on_same(p.shape().clone(), state_dtype)?;
            let v = p.zeros_on_same(p.shape().clone(), state_dtype)?;
            let wd = if decay(name) {
                config.weight_decay
            } else {
                0.0
            };
            slots.push(Slot {
                name: name.clone(),
                param: p.clone(),
                master,
                m,
                v,
                weight_decay: wd,
            });
        }
        Ok(AdamW {
            slots,
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
        let mut out = BTreeMap::new();
        for s in &self.slots {
            let p = s.master.as_ref().unwrap_or(&s.param);
            out.insert(format!("param.{}", s.name), p.detach());
            out.insert(format!("exp_avg.{}", s.name), s.m.detach());
            out.insert(format!("exp_avg_sq.{}", s.name), s.v.detach());
        }
        out
    }

    /// Restore [`state_tensors`](Self::state_tensors): values copied into the live
    /// buffers, the fp16 working copies recast from their masters. Every parameter must
    /// be there with its shape. The update count is [`set_steps`](Self::set_steps)'s.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let get = |kind: &str, name: &str, like: &Tensor| -> Result<&Tensor> {
            let key = format!("{kind}.{name}");
            let t = state
                .get(&key)
                .ok_or_else(|| crate::error::Error::msg(format!("optimizer state: no {key}")))?;
            if t.dims() != like.dims() {
                return Err(crate::error::Error::msg(format!(
                    "optimizer state: {key} has shape {}, the model's is {}",
                    t.shape(),
                    like.shape()
                )));
            }
            Ok(t)
        };
        for s in &self.slots {
            // Each tensor moves to the parameter's device only for its copy.
            let dev = s.param.device();
            let value = get("param", &s.name, &s.param)?.to_device(dev)?;
            let m = get("exp_avg", &s.name, &s.m)?.to_device(dev)?;
            s.m.storage_mut().copy_from_(&m.storage())?;
            drop(m);
            let v = get("exp_avg_sq", &s.name, &s.v)?.to_device(dev)?;
            s.v.storage_mut().copy_from_(&v.storage())?;
            drop(v);
            if let Some(m) = &s.master {
                m.storage_mut().copy_from_(&value.storage())?;
            }
            s.param.storage_mut().copy_from_(&value.storage())?;
        }
        Ok(())
    }

    /// Moment buffers of a parameter (for parity tests and checkpoints).
    pub fn moments(&self, name: &str) -> Option<(&Tensor, &Tensor)> {
        self.slots
            .iter()
            .find(|s| s.name == name)
            .map(|s| (&s.m, &s.v))
    }

    /// The profiler's cost of a step over the parameters that have a gradient.
    fn cost(&self, grads: &Grads) -> crate::profile::OpCost {
        let mut total = crate::profile::OpCost::default();
        for s in &self.slots {
            if let Some(g) = grads.get(&s.param) {
                let (p, n) = (s.param.dtype(), s.param.elem_count());
                let c = crate::profile::cost::adamw(n, p, g.dtype(), s.master.is_some());
                total.fwd += c.fwd;
            }
        }
        total
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
        let device = self
            .slots
            .first()
            .map(|s| s.param.device())
            .unwrap_or(crate::shape::Device::Cpu);
        let _span = crate::profile::Span::new("adamw", device).cost(|| self.cost(grads));
        if self.multi_tensor && device.target() == Some(crate::shape::Target::Cuda) {
            if let Some(out) = self.step_multi(grads, lr, grad_scale, max_grad_norm)? {
                return Ok(out);
            }
        }
        // One sum of squares over every gradient, accumulated on the device and read
        // back once: it is the global norm, and it is non-finite exactly when some
        // gradient holds inf/NaN (squares of f16 values cannot overflow the f32 sum), so
        // a skipped step is decided before anything is touched, with one sync.
        let mut total: Option<crate::backend::Storage> = None;
        for s in &self.slots {
            if let Some(g) = grads.get(&s.param) {
                let sq = g.storage().sum_sq()?;
                total = Some(match total {
                    None => sq,
                    Some(t) => t.binary(&sq, crate::backend::BinaryOp::Add)?,
                });
            }
        }
        let sumsq = match total {
            Some(t) => t.to_vec_f64()?.first().copied().unwrap_or(0.0),
            None => 0.0,
        };
        if !sumsq.is_finite() {
            return Ok(StepOutcome {
                skipped: true,
                grad_norm: f64::INFINITY,
            });
        }
        let grad_norm = sumsq.sqrt() * grad_scale;
        if !grad_norm.is_finite() {
            return Ok(StepOutcome {
                skipped: true,
                grad_norm,
            });
        }
        // torch: clip_coef = max_norm / (total_norm + 1e-6), applied only when < 1.
        let clip = match max_grad_norm {
            Some(max) => (max / (grad_norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        self.steps += 1;
        let c = self.config;
        for s in &mut self.slots {
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
            let mut m = s.m.storage_mut();
            let mut v = s.v.storage_mut();
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
}

impl AdamW {
    fn all_distinct(&mut self) -> bool {
        if let Some(d) = self.distinct {
            return d;
        }
        let mut bufs: Vec<&Tensor> = Vec::new();
        for s in &self.slots {
            bufs.extend([&s.param, &s.m, &s.v]);
            bufs.extend(s.master.iter());
        }
        let d = bufs
            .iter()
            .enumerate()
            .all(|(i, a)| bufs[..i].iter().all(|b| !a.same_storage(b)));
        self.distinct = Some(d);
        d
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
        if !self.all_distinct() {
            return Ok(None);
        }
        let live: Vec<(&Slot, &Tensor)> = self
            .slots
            .iter()
            .filter_map(|s| grads.get(&s.param).map(|g| (s, g)))
            .collect();
        // A gradient that shares a buffer with a parameter-side tensor cannot be read
        // while that tensor is written; two parameters sharing one gradient buffer read
        // it through one lock.
        let mut grad_bufs: Vec<&Tensor> = Vec::new();
        let mut grad_of = Vec::with_capacity(live.len());
        for (_, g) in &live {
            let clash = live.iter().any(|(o, _)| {
                g.same_storage(&o.param)
                    || g.same_storage(&o.m)
                    || g.same_storage(&o.v)
                    || o.master.as_ref().is_some_and(|m| g.same_storage(m))
            });
            if clash {
                return Ok(None);
            }
            match grad_bufs.iter().position(|b| b.same_storage(g)) {
                Some(i) => grad_of.push(i),
                None => {
                    grad_of.push(grad_bufs.len());
                    grad_bufs.push(g);
                }
            }
        }
        let grad_guards: Vec<_> = grad_bufs.iter().map(|g| g.storage()).collect();
        let mut main = Vec::with_capacity(live.len());
        let mut work = Vec::with_capacity(live.len());
        let mut ms = Vec::with_capacity(live.len());
        let mut vs = Vec::with_capacity(live.len());
        for (s, _) in &live {
            match &s.master {
                Some(master) => {
                    main.push(master.storage_mut());
                    work.push(Some(s.param.storage_mut()));
                }
                None => {
                    main.push(s.param.storage_mut());
                    work.push(None);
                }
            }
            ms.push(s.m.storage_mut());
            vs.push(s.v.storage_mut());
        }
        let mut list = Vec::with_capacity(live.len());
        for (k, ((((p, w), m), v), (s, _))) in main
            .iter_mut()
            .zip(work.iter_mut())
            .zip(ms.iter_mut())
            .zip(vs.iter_mut())
            .zip(&live)
            .enumerate()
        {
            list.push(crate::backend::AdamWTensor {
                param: p,
                grad: &grad_guards[grad_of[k]],
                m,
                v,
                working: w.as_mut().map(|w| &mut **w),
                weight_decay: s.weight_decay,
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
        // Same reporting as the per-tensor path: inf when the sum itself overflowed.
        let grad_norm = if out.sum_sq.is_finite() {
            out.sum_sq.sqrt() * grad_scale
        } else {
            f64::INFINITY
        };
        if !out.skipped {
            self.steps += 1;
        }
        Ok(Some(StepOutcome {
            skipped: out.skipped,
            grad_norm,
        }))
    }
}

/// Global L2 norm of a set of gradients (torch `clip_grad_norm_`'s total_norm).
pub fn global_grad_norm(grads: &Grads) -> Result<f64> {
    let mut sumsq = 0.0f64;
    for (_, g) in grads.iter() {
        let s = g.storage().sum_sq()?;
        sumsq += s.to_vec_f64()?[0];
    }
    Ok(sumsq.sqrt())
}
