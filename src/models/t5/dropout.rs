//! T5's dropout sites. HF's T5 drops out after the embeddings, inside every sublayer and
//! on the attention probabilities; fusebox numbers those sites in the order one forward
//! reaches them and takes each site's seed from the one scheme every model uses
//! (`Mode::seed_for`). One `Dropout` lives for one forward pass, so it also caches what
//! the unfused attention shares across layers.

use std::cell::{Cell, RefCell};

use crate::error::Result;
use crate::nn::Mode;
use crate::tensor::{Tensor, TensorId};

/// Identifies an additive score tensor (bias + masks) built once per forward.
pub(super) type ExtraKey = (Option<TensorId>, Option<TensorId>, bool, [usize; 4]);

/// Where dropout is on: HF's `model.train()`, with this step's `Mode` for the hashed
/// masks. Each call site draws the next site number, so no two sites share a mask.
pub struct Dropout {
    p: f32,
    mode: Mode,
    /// Sites drawn so far in this forward.
    counter: Cell<u64>,
    force_unfused: bool,
    attention_probs: bool,
    extra: RefCell<Vec<(ExtraKey, Tensor)>>,
}

impl Dropout {
    /// Rate `p` in training (`seed` given) or off (`None`).
    pub fn new(p: f64, seed: Option<u64>) -> Dropout {
        Dropout::for_mode(p, seed.map_or(Mode::Eval, Mode::train))
    }
    /// Rate `p` when `mode` trains; off in evaluation.
    pub fn for_mode(p: f64, mode: Mode) -> Dropout {
        Dropout {
            p: p as f32,
            mode,
            counter: Cell::new(0),
            force_unfused: false,
            attention_probs: true,
            extra: RefCell::new(Vec::new()),
        }
    }
    pub fn off() -> Dropout {
        Dropout::new(0.0, None)
    }
    /// Skip dropout on attention probabilities, keeping the fused attention op in
    /// training (faster; a small departure from HF's regularisation).
    pub fn without_attention_dropout(mut self) -> Dropout {
        self.attention_probs = false;
        self
    }
    /// Take the unfused attention path even without dropout (to test it against the
    /// fused op).
    pub fn with_unfused_attention(mut self) -> Dropout {
        self.force_unfused = true;
        self
    }
    /// Take the op-by-op path (scores materialised, as HF's eager attention): only when
    /// forced, for tests. Dropout on the probabilities is fused into the attention op.
    pub fn unfused_attention(&self) -> bool {
        self.force_unfused
    }
    pub fn active(&self) -> bool {
        self.p > 0.0 && self.mode.is_train()
    }
    /// (p, seed) for the next attention call's probability dropout, or None. Draws the
    /// site seed exactly as `apply` does, so the fused op and the unfused path drop the
    /// same (b, h, i, j) entries.
    pub fn attention_dropout(&self) -> Option<(f32, u64)> {
        if !self.attention_probs || !self.active() {
            return None;
        }
        Some((self.p, self.next_site_seed()))
    }
    fn next_site_seed(&self) -> u64 {
        let k = self.counter.get();
        self.counter.set(k + 1);
        self.mode.seed_for(k)
    }
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if !self.active() {
            return Ok(x.clone());
        }
        x.dropout(self.p, self.next_site_seed())
    }
    /// Dropout on attention probabilities (identity unless they are dropped).
    pub(super) fn apply_attention(&self, probs: &Tensor) -> Result<Tensor> {
        match self.attention_dropout() {
            Some((p, seed)) => probs.dropout(p, seed),
            None => Ok(probs.clone()),
        }
    }
    pub(super) fn cached_extra(
        &self,
        key: ExtraKey,
        build: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        if let Some((_, t)) = self.extra.borrow().iter().find(|(k, _)| *k == key) {
            return Ok(t.clone());
        }
        let t = build()?;
        self.extra.borrow_mut().push((key, t.clone()));
        Ok(t)
    }
    /// A copy that draws the same site seeds from here on, with its own cache: a
    /// checkpointed block's forward and its recompute in backward each run on a fork
    /// taken at the block's start, so both draw identical masks.
    pub fn fork(&self) -> Dropout {
        Dropout {
            p: self.p,
            mode: self.mode,
            counter: Cell::new(self.counter.get()),
            force_unfused: self.force_unfused,
            attention_probs: self.attention_probs,
            extra: RefCell::new(Vec::new()),
        }
    }
    /// Sites drawn so far (to continue after a fork).
    pub fn sites_drawn(&self) -> u64 {
        self.counter.get()
    }
    /// Continue drawing from site `k` (after a fork drew the sites before it).
    pub fn resume_at(&self, k: u64) {
        self.counter.set(k);
    }
}
