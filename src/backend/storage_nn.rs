//! The layer primitives of `Storage` (GEMM, norms, softmax and losses, attention, span
//! search) and its fused paths (linear with bias, the encoder's residual LayerNorm, the
//! multi-tensor AdamW step): each dispatched to the backend its operands live on (see
//! storage.rs).

use super::storage::{adafactor_state_on, dispatch, mismatch, per_backend, same_mut};
use super::storage::{Lift, Operand, Storage, Variant};
use super::SpanCandidate;
use super::{AdafactorMultiStep, AdafactorMultiTensor, AdafactorOutcome, AdafactorState};
use super::{AdamWMultiOutcome, AdamWMultiStep, MultiTensor};
use super::{AttnArgs, AttnSaved, BackendStorage, LinearDims, MatmulSpec, ResidualNorm};
use crate::error::Result;
use crate::shape::{DType, Device};

dispatch! {
    fn matmul(&self, rhs: &Storage, spec: &MatmulSpec) -> Storage;
    fn matmul_out(&self, rhs: &Storage, spec: &MatmulSpec, out: DType) -> Storage;
    fn layer_norm(&self, gamma: &Storage, beta: &Storage, cols: usize, eps: f64)
        -> (Storage, Storage, Storage);
    fn layer_norm_backward(&self, gamma: &Storage, mean: &Storage, rstd: &Storage, dy: &Storage,
        cols: usize) -> (Storage, Storage, Storage);
    /// `LayerNorm(dropout(self, p, seed) + res)` (a post-norm encoder's residual
    /// block): (y, s, mean, rstd) with `s` the normalised sum. One kernel on CUDA.
    fn dropout_add_layer_norm(&self, res: &Storage, gamma: &Storage, beta: &Storage,
        rn: ResidualNorm) -> (Storage, Storage, Storage, Storage);
    /// Backward of [`dropout_add_layer_norm`](Self::dropout_add_layer_norm) from the
    /// saved sum `self`: (ds, da, dgamma, dbeta); `da` is `None` when p = 0 (it is ds).
    fn dropout_add_layer_norm_backward(&self, gamma: &Storage, mean: &Storage, rstd: &Storage,
        dy: &Storage, rn: ResidualNorm) -> (Storage, Option<Storage>, Storage, Storage);
    /// `self [rows, in] · wᵀ + bias`: on CUDA in one GEMM with the bias added by its
    /// epilogue (cuBLASLt) where it can, else GEMM + `add_bias`.
    fn linear_bias(&self, w: &Storage, bias: &Storage, dims: LinearDims) -> Storage;
    /// A linear layer's weight and bias gradients from `self` = dy and `x`:
    /// (`dW [out, in] = dyᵀ · x`, `db [out] = Σ_rows dy`); on CUDA from one GEMM whose
    /// epilogue reduces the bias gradient, where it can.
    fn linear_wgrad_bgrad(&self, x: &Storage, dims: LinearDims) -> (Storage, Storage);
    fn rms_norm(&self, gamma: &Storage, cols: usize, eps: f64) -> (Storage, Storage);
    fn rms_norm_backward(&self, gamma: &Storage, rstd: &Storage, dy: &Storage, cols: usize)
        -> (Storage, Storage);
    fn softmax(&self, cols: usize) -> Storage;
    fn softmax_backward(&self, dy: &Storage, cols: usize) -> Storage;
    fn log_softmax(&self, cols: usize) -> Storage;
    fn cross_entropy(&self, targets: &Storage, cols: usize, ignore_index: i32) -> (Storage, Storage);
    fn cross_entropy_backward(&self, targets: &Storage, lse: &Storage, dloss: &Storage,
        cols: usize, ignore_index: i32) -> Storage;
    fn argmax_last(&self, cols: usize) -> Storage;
    fn attention(&self, k: &Storage, v: &Storage, a: AttnArgs<'_, Storage>) -> (Storage, Storage);
    fn attention_backward(&self, k: &Storage, v: &Storage, saved: AttnSaved<'_, Storage>,
        a: AttnArgs<'_, Storage>) -> (Storage, Storage, Storage, Option<Storage>);
    fn attention_qkv(&self, a: AttnArgs<'_, Storage>) -> (Storage, Storage);
    fn attention_qkv_backward(&self, saved: AttnSaved<'_, Storage>, a: AttnArgs<'_, Storage>)
        -> (Storage, Option<Storage>);
    fn span_search(&self, end_logits: &Storage, allowed: &Storage, cols: usize, max_len: usize,
        top_k: usize) -> Vec<SpanCandidate>;
}

/// One parameter of [`adamw_multi`]: the master weights (or the parameter itself when it
/// is f32), its gradient, the moments, the optional working copy that receives the
/// updated value, and its weight decay.
pub type AdamWTensor<'a> = MultiTensor<'a, Storage>;

/// A whole AdamW step over many parameters at once (global-norm clip and the inf/NaN
/// skip decided on the device, a constant number of launches, one small read). Same
/// semantics as [`BackendStorage::adamw_`] applied per tensor with the clip folded into
/// `grad_scale`. `Ok(None)` where the backend has no such path (the CPU): the caller
/// then steps each tensor itself.
pub fn adamw_multi(
    tensors: &mut [AdamWTensor<'_>],
    hp: &AdamWMultiStep,
) -> Result<Option<AdamWMultiOutcome>> {
    multi_step(tensors, hp)
}

/// One parameter of [`adafactor_multi`].
pub type AdafactorTensor<'a> = AdafactorMultiTensor<'a, Storage>;

/// A whole Adafactor step over many parameters at once (global-norm clip and the
/// inf/NaN skip decided on the device), as [`adamw_multi`] is AdamW's. `Ok(None)` where
/// the backend has no such path (the CPU): the caller steps each tensor itself.
pub fn adafactor_multi(
    tensors: &mut [AdafactorTensor<'_>],
    hp: &AdafactorMultiStep,
) -> Result<Option<AdafactorOutcome>> {
    multi_step(tensors, hp)
}

/// One parameter of an optimizer's multi-tensor step, as `Storage` hands it to a
/// backend: its buffers as backend `B`'s, and `B`'s step over the list.
trait MultiParam: Sized {
    type Hp;
    type Out;
    /// This parameter on backend `B`.
    type On<'b, B: Variant>
    where
        Self: 'b;
    fn param(&self) -> &Storage;
    /// Every buffer as `B`'s (all on `dev`), or the device-mismatch error.
    fn on<B: Variant>(&mut self, dev: Device) -> Result<Self::On<'_, B>>;
    fn step<B: Variant>(list: &mut [Self::On<'_, B>], hp: &Self::Hp) -> Result<Option<Self::Out>>;
}

/// A multi-tensor step on the backend the first parameter lives on (every buffer must
/// live there). The backend is a type here, not a value to call through: pick it, then
/// hand the whole list over (the first tensor's borrow ends before the list is taken).
fn multi_step<T: MultiParam>(tensors: &mut [T], hp: &T::Hp) -> Result<Option<T::Out>> {
    let Some((backend, dev)) = tensors
        .first()
        .map(|t| (backend_of(t.param()), t.param().device()))
    else {
        return Ok(None);
    };
    match backend {
        Backend::Meta => multi_on::<T, super::MetaStorage>(tensors, dev, hp),
        Backend::Cuda => multi_on::<T, super::CudaStorage>(tensors, dev, hp),
        Backend::Cpu => multi_on::<T, super::CpuStorage>(tensors, dev, hp),
    }
}

/// Which backend a multi-tensor step's first buffer lives on.
enum Backend {
    Cpu,
    Cuda,
    Meta,
}

fn backend_of(s: &Storage) -> Backend {
    match s {
        Storage::Cpu(_) => Backend::Cpu,
        Storage::Cuda(_) => Backend::Cuda,
        Storage::Meta(_) => Backend::Meta,
    }
}

fn multi_on<T: MultiParam, B: Variant>(
    tensors: &mut [T],
    dev: Device,
    hp: &T::Hp,
) -> Result<Option<T::Out>> {
    let mut list = Vec::with_capacity(tensors.len());
    for t in tensors.iter_mut() {
        list.push(t.on::<B>(dev)?);
    }
    T::step::<B>(&mut list, hp)
}

/// A parameter and its gradient as backend `B`'s buffers.
fn param_grad<'b, B: Variant>(
    op: &'static str,
    dev: Device,
    param: &'b mut Storage,
    grad: &'b Storage,
) -> Result<(&'b mut B, &'b B)> {
    let param = same_mut::<B>(op, dev, param)?;
    let grad = B::of(grad).ok_or_else(|| mismatch(op, dev, grad.device()))?;
    Ok((param, grad))
}

/// [`MultiParam`] for one optimizer's tensor type: its step arguments and
/// outcome, the function that moves one tensor onto a backend, and the backend's step.
macro_rules! multi_param {
    ($tensor:ident, $hp:ty, $out:ty, $on:ident, $step:ident) => {
        impl MultiParam for $tensor<'_, Storage> {
            type Hp = $hp;
            type Out = $out;
            type On<'b, B: Variant>
                = $tensor<'b, B>
            where
                Self: 'b;
            fn param(&self) -> &Storage {
                self.param
            }
            fn on<B: Variant>(&mut self, dev: Device) -> Result<$tensor<'_, B>> {
                $on(self, dev)
            }
            fn step<B: Variant>(list: &mut [$tensor<'_, B>], hp: &$hp) -> Result<Option<$out>> {
                B::$step(list, hp)
            }
        }
    };
}

multi_param!(
    MultiTensor,
    AdamWMultiStep,
    AdamWMultiOutcome,
    adamw_on,
    adamw_multi
);
multi_param!(
    AdafactorMultiTensor,
    AdafactorMultiStep,
    AdafactorOutcome,
    adafactor_on,
    adafactor_multi
);

fn adamw_on<'b, B: Variant>(t: &'b mut AdamWTensor<'_>, dev: Device) -> Result<MultiTensor<'b, B>> {
    const OP: &str = "adamw_multi";
    let (param, grad) = param_grad(OP, dev, &mut *t.param, t.grad)?;
    let on = |s| same_mut::<B>(OP, dev, s);
    Ok(MultiTensor {
        param,
        grad,
        m: on(&mut *t.m)?,
        v: on(&mut *t.v)?,
        working: t.working.as_deref_mut().map(on).transpose()?,
        weight_decay: t.weight_decay,
    })
}

fn adafactor_on<'b, B: Variant>(
    t: &'b mut AdafactorTensor<'_>,
    dev: Device,
) -> Result<AdafactorMultiTensor<'b, B>> {
    const OP: &str = "adafactor_multi";
    let (param, grad) = param_grad(OP, dev, &mut *t.param, t.grad)?;
    let st = AdafactorState {
        row: &mut *t.st.row,
        col: t.st.col.as_deref_mut(),
        exp_avg: t.st.exp_avg.as_deref_mut(),
        working: t.st.working.as_deref_mut(),
        rows_cols: t.st.rows_cols,
        weight_decay: t.st.weight_decay,
    };
    Ok(AdafactorMultiTensor {
        param,
        grad,
        st: adafactor_state_on(OP, dev, st)?,
    })
}
