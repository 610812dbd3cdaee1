//! What every optimizer here shares: one slot per trainable tensor with the fp32 master
//! copy an fp16 parameter trains through and the optimizer's named state buffers
//! (torch's state names), the checkpoint form of both, the global-norm check of the
//! per-tensor path (clip coefficient, inf/NaN skip), and the locking of every buffer for
//! a multi-tensor step.
//!
//! Clipping and loss-scale unscaling fold into one gradient multiplier passed to the
//! backend's fused step, so gradients are never rewritten in place (two parameters may
//! share one gradient buffer).

use std::collections::BTreeMap;
use std::sync::{RwLockReadGuard, RwLockWriteGuard};

use crate::autograd::Grads;
use crate::backend::Storage;
use crate::error::{Error, Result};
use crate::shape::{DType, Device};
use crate::tensor::Tensor;

/// What one `step` did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    /// True when the gradients held inf/NaN and nothing was updated.
    pub skipped: bool,
    /// Global L2 norm of the unscaled gradients (before clipping).
    pub grad_norm: f64,
}

/// One trainable tensor as an optimizer holds it.
pub(crate) struct Slot {
    pub name: String,
    /// The tensor the model uses (and the tape differentiates).
    pub param: Tensor,
    /// fp32 master copy when the working parameter is fp16; else the param itself.
    pub master: Option<Tensor>,
    /// The optimizer's state, under torch's names (`exp_avg`, `exp_avg_sq`, ...), in the
    /// order the optimizer reads them.
    pub state: Vec<(&'static str, Tensor)>,
    pub weight_decay: f64,
}

impl Slot {
    /// `p` with its master (an f32 copy when `p` is f16) and no state yet.
    pub fn new(name: &str, p: &Tensor, weight_decay: f64) -> Result<Slot> {
        let master = if p.dtype() == DType::F16 {
            Some(p.to_dtype(DType::F32)?.detach())
        } else {
            None
        };
        Ok(Slot {
            name: name.to_string(),
            param: p.clone(),
            master,
            state: Vec::new(),
            weight_decay,
        })
    }

    /// The buffer the update is applied to: the master, or the parameter itself.
    pub fn main(&self) -> &Tensor {
        self.master.as_ref().unwrap_or(&self.param)
    }

    /// Add a zero state buffer of `dims` in the master's dtype.
    pub fn add_state(&mut self, kind: &'static str, dims: &[usize]) -> Result<()> {
        let t = self
            .param
            .zeros_on_same(dims.to_vec(), self.main().dtype())?;
        self.state.push((kind, t));
        Ok(())
    }

    /// The state buffer named `kind`.
    pub fn get(&self, kind: &str) -> Option<&Tensor> {
        self.state.iter().find(|(k, _)| *k == kind).map(|(_, t)| t)
    }

    fn device(&self) -> Device {
        self.param.device()
    }
}

/// One slot per parameter, weight decay `weight_decay` for the names `decay` accepts,
/// each given its state by `add_state(slot, dims)`.
pub(crate) fn build(
    params: &[(String, Tensor)],
    weight_decay: f64,
    decay: impl Fn(&str) -> bool,
    add_state: impl Fn(&mut Slot, &[usize]) -> Result<()>,
) -> Result<Vec<Slot>> {
    let mut out = Vec::with_capacity(params.len());
    for (name, p) in params {
        let wd = if decay(name) { weight_decay } else { 0.0 };
        let mut s = Slot::new(name, p, wd)?;
        add_state(&mut s, p.dims())?;
        out.push(s);
    }
    Ok(out)
}

/// The state a checkpoint keeps, by parameter name: `param.NAME` (the fp32 master, or the
/// parameter itself when it is f32) and `KIND.NAME` for each state buffer.
pub(crate) fn state_tensors(slots: &[Slot]) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for s in slots {
        out.insert(format!("param.{}", s.name), s.main().detach());
        for (kind, t) in &s.state {
            out.insert(format!("{kind}.{}", s.name), t.detach());
        }
    }
    out
}

/// Restore [`state_tensors`]: values copied into the live buffers, the fp16 working
/// copies recast from their masters. Every tensor must be there with its shape.
pub(crate) fn load_state(slots: &[Slot], state: &BTreeMap<String, Tensor>) -> Result<()> {
    let get = |kind: &str, name: &str, like: &Tensor| -> Result<&Tensor> {
        let key = format!("{kind}.{name}");
        let t = state
            .get(&key)
            .ok_or_else(|| Error::msg(format!("optimizer state: no {key}")))?;
        if t.dims() != like.dims() {
            return Err(Error::msg(format!(
                "optimizer state: {key} has shape {}, the model's is {}",
                t.shape(),
                like.shape()
            )));
        }
        Ok(t)
    };
    for s in slots {
        // Each tensor moves to the parameter's device only for its copy, so resuming
        // needs no second copy of the whole state on the card.
        let dev = s.device();
        for (kind, buf) in &s.state {
            let v = get(kind, &s.name, buf)?.to_device(dev)?;
            buf.storage_mut().copy_from_(&v.storage())?;
        }
        let value = get("param", &s.name, &s.param)?.to_device(dev)?;
        if let Some(m) = &s.master {
            m.storage_mut().copy_from_(&value.storage())?;
        }
        s.param.storage_mut().copy_from_(&value.storage())?;
    }
    Ok(())
}

/// What every optimizer here keeps besides its settings: its slots, the count of
/// applied updates (AdamW's bias correction, Adafactor's t), whether the multi-tensor
/// path is on, and whether every buffer is distinct (checked once).
pub(crate) struct Core {
    pub slots: Vec<Slot>,
    pub steps: u64,
    pub multi_tensor: bool,
    pub distinct: Option<bool>,
}

impl Core {
    pub fn new(slots: Vec<Slot>) -> Core {
        Core {
            slots,
            steps: 0,
            multi_tensor: super::adamw::multi_tensor_default(),
            distinct: None,
        }
    }

    /// The device the slots live on (the CPU when there are none).
    pub fn device(&self) -> Device {
        self.slots.first().map(Slot::device).unwrap_or(Device::Cpu)
    }

    /// The profiler's cost of a step: `each(slot, gradient)` summed over the slots that
    /// have a gradient.
    pub fn cost(
        &self,
        grads: &Grads,
        each: impl Fn(&Slot, &Tensor) -> crate::profile::OpCost,
    ) -> crate::profile::OpCost {
        let mut total = crate::profile::OpCost::default();
        for s in &self.slots {
            if let Some(g) = grads.get(&s.param) {
                total.fwd += each(s, g).fwd;
            }
        }
        total
    }

    /// One optimizer step, timed by `span` (the optimizer's, with its cost): on CUDA the
    /// backend's multi-tensor path (`multi`; `None` when it cannot run), else the
    /// per-tensor path: [`precheck`], then `each(index, slot, gradient, gradient
    /// multiplier, 1-based step)` for every slot with a gradient.
    pub fn step(
        &mut self,
        span: crate::profile::Span,
        grads: &Grads,
        (grad_scale, max_grad_norm): (f64, Option<f64>),
        multi: impl FnOnce(&mut Core) -> Result<Option<StepOutcome>>,
        mut each: impl FnMut(usize, &Slot, &Tensor, f64, u64) -> Result<()>,
    ) -> Result<StepOutcome> {
        let _span = span;
        let device = self.device();
        if self.multi_tensor && device.target() == Some(crate::shape::Target::Cuda) {
            if let Some(out) = multi(self)? {
                return Ok(out);
            }
        }
        let (grad_norm, clip) = match precheck(&self.slots, grads, grad_scale, max_grad_norm)? {
            Precheck::Skip(out) => return Ok(out),
            Precheck::Go { grad_norm, clip } => (grad_norm, clip),
        };
        self.steps += 1;
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(g) = grads.get(&s.param) {
                each(i, s, g, grad_scale * clip, self.steps)?;
            }
        }
        Ok(StepOutcome {
            skipped: false,
            grad_norm,
        })
    }

    /// Count a multi-tensor step the backend reports, as the per-tensor path would.
    pub fn finish_multi(&mut self, skipped: bool, sum_sq: f64, grad_scale: f64) -> StepOutcome {
        if !skipped {
            self.steps += 1;
        }
        multi_outcome(skipped, sum_sq, grad_scale)
    }
}

/// The public methods AdamW and Adafactor share, written once over their `core`.
macro_rules! core_api {
    ($t:ty) => {
        impl $t {
            /// Use the backend's multi-tensor step where it has one (default: on). Off
            /// forces the per-tensor path everywhere, for A/B checks of the two.
            pub fn set_multi_tensor(&mut self, on: bool) {
                self.core.multi_tensor = on;
            }

            /// Number of updates applied (skipped steps not counted).
            pub fn steps(&self) -> u64 {
                self.core.steps
            }

            /// Set the count of applied updates (a resumed run's).
            pub fn set_steps(&mut self, steps: u64) {
                self.core.steps = steps;
            }

            /// The state a checkpoint keeps, by parameter name: `param.NAME` (the fp32
            /// master, or the parameter itself when it is f32) and torch's state names
            /// (`exp_avg.NAME`, ...).
            pub fn state_tensors(&self) -> std::collections::BTreeMap<String, Tensor> {
                super::slots::state_tensors(&self.core.slots)
            }

            /// Restore [`state_tensors`](Self::state_tensors): values copied into the
            /// live buffers, the fp16 working copies recast from their masters. Every
            /// tensor must be there with its shape. The update count is
            /// [`set_steps`](Self::set_steps)'s.
            pub fn load_state(
                &mut self,
                state: &std::collections::BTreeMap<String, Tensor>,
            ) -> Result<()> {
                super::slots::load_state(&self.core.slots, state)
            }
        }
    };
}

pub(crate) use core_api;

/// The per-tensor path's decision, made before anything is touched.
pub(crate) enum Precheck {
    /// Some gradient holds inf/NaN: skip the step.
    Skip(StepOutcome),
    /// Step with gradients multiplied by `grad_scale · clip`.
    Go { grad_norm: f64, clip: f64 },
}

/// One sum of squares over every gradient, accumulated on the device and read back once:
/// it is the global norm, and it is non-finite exactly when some gradient holds inf/NaN
/// (squares of f16 values cannot overflow the f32 sum), so a skipped step is decided
/// before anything is touched, with one sync. The clip is torch's `clip_grad_norm_`:
/// max_norm / (total_norm + 1e-6), applied only when < 1.
pub(crate) fn precheck(
    slots: &[Slot],
    grads: &Grads,
    grad_scale: f64,
    max_grad_norm: Option<f64>,
) -> Result<Precheck> {
    let mut total: Option<Storage> = None;
    for s in slots {
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
    let grad_norm = if sumsq.is_finite() {
        sumsq.sqrt() * grad_scale
    } else {
        f64::INFINITY
    };
    if !grad_norm.is_finite() {
        return Ok(Precheck::Skip(StepOutcome {
            skipped: true,
            grad_norm,
        }));
    }
    let clip = match max_grad_norm {
        Some(max) => (max / (grad_norm + 1e-6)).min(1.0),
        None => 1.0,
    };
    Ok(Precheck::Go { grad_norm, clip })
}

/// The outcome a multi-tensor step reports from its device sum of squares (inf when
/// the sum itself overflowed), as the per-tensor path does.
fn multi_outcome(skipped: bool, sum_sq: f64, grad_scale: f64) -> StepOutcome {
    let grad_norm = if sum_sq.is_finite() {
        sum_sq.sqrt() * grad_scale
    } else {
        f64::INFINITY
    };
    StepOutcome { skipped, grad_norm }
}

/// Whether every parameter, master and state buffer is a distinct storage (checked once;
/// a shared buffer would need two write locks in a multi-tensor step).
pub(crate) fn all_distinct(slots: &[Slot], memo: &mut Option<bool>) -> bool {
    if let Some(d) = *memo {
        return d;
    }
    let mut bufs: Vec<&Tensor> = Vec::new();
    for s in slots {
        bufs.push(&s.param);
        bufs.extend(s.master.iter());
        bufs.extend(s.state.iter().map(|(_, t)| t));
    }
    let d = bufs
        .iter()
        .enumerate()
        .all(|(i, a)| bufs[..i].iter().all(|b| !a.same_storage(b)));
    *memo = Some(d);
    d
}

/// Every buffer of a multi-tensor step, locked: per slot with a gradient, the gradient
/// (read, one lock per distinct buffer), the main buffer, the working copy and the state
/// (write).
pub(crate) struct Locked<'a> {
    live: Vec<&'a Slot>,
    grads: Vec<RwLockReadGuard<'a, Storage>>,
    grad_of: Vec<usize>,
    main: Vec<RwLockWriteGuard<'a, Storage>>,
    work: Vec<Option<RwLockWriteGuard<'a, Storage>>>,
    state: Vec<Vec<RwLockWriteGuard<'a, Storage>>>,
}

/// One slot's buffers out of [`Locked`].
pub(crate) struct Parts<'b> {
    pub slot: &'b Slot,
    pub grad: &'b Storage,
    pub main: &'b mut Storage,
    pub working: Option<&'b mut Storage>,
    /// In the slot's state order.
    pub state: Vec<&'b mut Storage>,
}

impl Locked<'_> {
    pub fn parts(&mut self) -> Vec<Parts<'_>> {
        let grads = &self.grads;
        self.main
            .iter_mut()
            .zip(self.work.iter_mut())
            .zip(self.state.iter_mut())
            .zip(&self.grad_of)
            .zip(&self.live)
            .map(|((((m, w), st), &gi), slot)| Parts {
                slot,
                grad: &grads[gi],
                main: m,
                working: w.as_mut().map(|w| &mut **w),
                state: st.iter_mut().map(|s| &mut **s).collect(),
            })
            .collect()
    }
}

/// Lock what a multi-tensor step over `slots` touches; `None` when the buffers cannot
/// be locked together (a shared buffer, or a gradient that is a parameter-side buffer):
/// the per-tensor path runs then.
pub(crate) fn lock<'a>(
    slots: &'a [Slot],
    grads: &'a Grads,
    distinct: &mut Option<bool>,
) -> Option<Locked<'a>> {
    if !all_distinct(slots, distinct) {
        return None;
    }
    let live: Vec<(&Slot, &Tensor)> = slots
        .iter()
        .filter_map(|s| grads.get(&s.param).map(|g| (s, g)))
        .collect();
    // A gradient that shares a buffer with a parameter-side tensor cannot be read while
    // that tensor is written; two parameters sharing one gradient buffer read it through
    // one lock.
    let mut grad_bufs: Vec<&Tensor> = Vec::new();
    let mut grad_of = Vec::with_capacity(live.len());
    for (_, g) in &live {
        let clash = live.iter().any(|(o, _)| {
            g.same_storage(&o.param)
                || o.master.as_ref().is_some_and(|m| g.same_storage(m))
                || o.state.iter().any(|(_, t)| g.same_storage(t))
        });
        if clash {
            return None;
        }
        match grad_bufs.iter().position(|b| b.same_storage(g)) {
            Some(i) => grad_of.push(i),
            None => {
                grad_of.push(grad_bufs.len());
                grad_bufs.push(g);
            }
        }
    }
    let grads = grad_bufs.iter().map(|g| g.storage()).collect();
    let mut main = Vec::with_capacity(live.len());
    let mut work = Vec::with_capacity(live.len());
    let mut state = Vec::with_capacity(live.len());
    for (s, _) in &live {
        main.push(s.main().storage_mut());
        work.push(s.master.as_ref().map(|_| s.param.storage_mut()));
        state.push(s.state.iter().map(|(_, t)| t.storage_mut()).collect());
    }
    Some(Locked {
        live: live.into_iter().map(|(s, _)| s).collect(),
        grads,
        grad_of,
        main,
        work,
        state,
    })
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
