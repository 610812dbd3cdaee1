//! The optimizer primitives' arguments: AdamW's (per tensor and multi-tensor) and
//! Adafactor's. The math is in each backend (`cpu/adamw.rs`, `cpu/adafactor.rs`,
//! kernels/adamw.cu, kernels/adafactor.cu); these are the values that travel to it.

/// Hyper-parameters of one AdamW step (torch semantics: decoupled weight decay,
/// bias correction, eps outside the sqrt). f64 like torch's Python floats: derived
/// constants such as `1 - beta2` are formed in double and rounded once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// 1-based step count, for bias correction.
    pub step: u64,
    /// Gradients are multiplied by this before use (1/loss_scale; 1.0 without scaling).
    pub grad_scale: f64,
    /// Check the scaled gradient for inf/NaN first (and report it). `false` when the
    /// caller has already checked every gradient at once: then no per-tensor check runs
    /// and, on CUDA, no per-tensor flag is read back (no device sync per parameter).
    pub check_finite: bool,
}

impl AdamWStep {
    /// [`adamw_bias_corrections`] of this step.
    pub fn bias_corrections(&self) -> (f64, f64) {
        adamw_bias_corrections(self.beta1, self.beta2, self.step)
    }
}

/// What one AdamW step updates besides the parameter: its moments `m`, `v` (the
/// master's dtype) and the optional `working` copy that receives the updated value.
pub struct AdamWState<'a, S> {
    pub m: &'a mut S,
    pub v: &'a mut S,
    pub working: Option<&'a mut S>,
}

impl<'a, S> AdamWState<'a, S> {
    pub fn new(m: &'a mut S, v: &'a mut S, working: Option<&'a mut S>) -> Self {
        AdamWState { m, v, working }
    }
}

/// One parameter of a multi-tensor AdamW step on backend `B`: the f32 master (or f32
/// parameter), its gradient (f32 or f16), the f32 moments and an optional working copy
/// (f16 or f32) that receives the updated value.
pub struct MultiTensor<'a, B> {
    pub param: &'a mut B,
    pub grad: &'a B,
    pub m: &'a mut B,
    pub v: &'a mut B,
    pub working: Option<&'a mut B>,
    pub weight_decay: f64,
}

/// Step-wide hyper-parameters of a multi-tensor AdamW step (torch AdamW +
/// clip_grad_norm_ + GradScaler unscale).
#[derive(Clone, Copy, Debug)]
pub struct AdamWMultiStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// 1-based step count this update would have.
    pub step: u64,
    pub grad_scale: f64,
    pub max_grad_norm: Option<f64>,
}

/// What a multi-tensor step decided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWMultiOutcome {
    pub skipped: bool,
    /// Sum of squares of the (scaled) gradients, as the per-tensor path computes it.
    pub sum_sq: f64,
}

/// AdamW's bias corrections `(1 - beta1^t, sqrt(1 - beta2^t))` in f64: the one
/// derivation every backend and the multi-tensor step round from (t saturates at
/// i32::MAX).
pub fn adamw_bias_corrections(beta1: f64, beta2: f64, step: u64) -> (f64, f64) {
    let t = step.min(i32::MAX as u64) as i32;
    (1.0 - beta1.powi(t), (1.0 - beta2.powi(t)).sqrt())
}

/// Step-wide hyper-parameters of one Adafactor step (`transformers.optimization.Adafactor`),
/// every scalar formed in f64 on the host as torch forms its Python floats and rounded
/// once where the backend computes in f32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdafactorStep {
    /// The step size before the parameter scale: the external lr, or with
    /// `relative_step` min(min_step, 1/sqrt(t)) (transformers' `_get_lr`).
    pub rel_step: f64,
    /// Multiply the step size by max(eps2, RMS(parameter before the update)).
    pub scale_parameter: bool,
    /// `eps[0]`, added to the squared gradient.
    pub eps1: f64,
    /// `eps[1]`, the floor of the parameter scale.
    pub eps2: f64,
    /// The update is divided by max(1, RMS(update) / clip_threshold).
    pub clip_threshold: f64,
    /// This step's second-moment decay, 1 - t^decay_rate.
    pub beta2t: f64,
    /// First-moment decay; `None`: no first moment (transformers' `beta1=None`).
    pub beta1: Option<f64>,
    /// Gradients are multiplied by this first (1/loss_scale, times the clip coefficient
    /// on the per-tensor path).
    pub grad_scale: f64,
    /// Return the step size applied to this tensor (on CUDA a 4-byte read, a sync).
    pub report_lr: bool,
}

/// What one Adafactor step updates besides the master parameter.
pub struct AdafactorState<'a, S> {
    /// Factored (two or more dims): `exp_avg_sq_row`, the running mean of g² over the
    /// last dim, `[.., R]`; unfactored: `exp_avg_sq`, the parameter's shape.
    pub row: &'a mut S,
    /// Factored: `exp_avg_sq_col`, the running mean over the second-to-last dim, `[.., C]`.
    pub col: Option<&'a mut S>,
    /// `exp_avg` when beta1 is set.
    pub exp_avg: Option<&'a mut S>,
    /// The working copy (fp16 or f32) that receives the updated value.
    pub working: Option<&'a mut S>,
    /// Factored: the last two dims (R, C); the leading dims are the rest of the length.
    pub rows_cols: Option<(usize, usize)>,
    pub weight_decay: f64,
}

/// One parameter of a multi-tensor Adafactor step on backend `B`: the f32 master (or the
/// f32 parameter), its gradient (f32 or f16) and its state.
pub struct AdafactorMultiTensor<'a, B> {
    pub param: &'a mut B,
    pub grad: &'a B,
    pub st: AdafactorState<'a, B>,
}

/// A multi-tensor Adafactor step: `hp.grad_scale` is 1/loss_scale; the global-norm clip
/// and the inf/NaN skip are decided on the device as AdamW's multi-tensor step does.
#[derive(Clone, Copy, Debug)]
pub struct AdafactorMultiStep {
    pub hp: AdafactorStep,
    pub max_grad_norm: Option<f64>,
    /// Index of the tensor whose step size is reported (HF's AdafactorSchedule reports
    /// the first parameter of the first group).
    pub report: Option<usize>,
}

/// What a multi-tensor Adafactor step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdafactorOutcome {
    pub multi: AdamWMultiOutcome,
    /// The step size applied to the reported tensor.
    pub lr: Option<f64>,
}
