//! The layer primitives of `Storage` (GEMM, norms, softmax and losses, attention, span
//! search) and its fused paths (linear with bias, the encoder's residual LayerNorm, the
//! multi-tensor AdamW step): each dispatched to the backend its operands live on (see
//! storage.rs).

use super::storage::{adafactor_state_on, dispatch, mismatch, per_backend, same_mut};
use super::storage::{Lift, Operand, Storage, Variant};
use super::{AdafactorMultiStep, AdafactorMultiTensor, AdafactorOutcome, AdafactorState};
use super::{AdamWMultiOutcome, AdamWMultiStep, MultiTensor};
use super::{AttnArgs, AttnSaved, BackendStorage, LinearDims, MatmulSpec, SpanCandidate};
use crate::error::Result;
use crate::shape::DType;

dispatch! {
    fn matmul(&self, rhs: &Storage, spec: &MatmulSpec) -> Storage;
    fn matmul_out(&self, rhs: &Storage, spec: &MatmulSpec, out: DType) -> Storage;
    fn layer_norm(&self, gamma: &Storage, beta: &Storage, cols: usize, eps: f64)
        -> (Storage, Storage, Storage);
    fn layer_norm_backward(&self, gamma: &Storage, mean: &Storage, rstd: &Storage, dy: &Storage,
        cols: usize) -> (Storage, Storage, Storage);
    /// `LayerNorm(dropout(self, p, seed) + res)` (a post-norm encoder's residual
    /// block): (y, s, mean, rstd) with `s` the normalised sum. One kernel on CUDA.
    fn dropout_add_layer_norm(&self, res: &Storage, gamma: &Storage, beta: &Storage, cols: usize,
        eps: f64, p: f32, seed: u64) -> (Storage, Storage, Storage, Storage);
    /// Backward of [`dropout_add_layer_norm`](Self::dropout_add_layer_norm) from the
    /// saved sum `self`: (ds, da, dgamma, dbeta); `da` is `None` when p = 0 (it is ds).
    fn dropout_add_layer_norm_backward(&self, gamma: &Storage, mean: &Storage, rstd: &Storage,
        dy: &Storage, cols: usize, p: f32, seed: u64) -> (Storage, Option<Storage>, Storage, Storage);
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
    // The backend is a type here, not a value to call through: pick it, then hand the
    // whole list over (the first tensor's borrow ends before the list is taken).
    match tensors.first().map(|t| backend_of(t.param)) {
        None => Ok(None),
        Some(Backend::Meta) => multi::<super::MetaStorage>(tensors, hp),
        Some(Backend::Cuda) => multi::<super::CudaStorage>(tensors, hp),
        Some(Backend::Cpu) => multi::<super::CpuStorage>(tensors, hp),
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

/// One parameter of [`adafactor_multi`].
pub type AdafactorTensor<'a> = AdafactorMultiTensor<'a, Storage>;

/// A whole Adafactor step over many parameters at once (global-norm clip and the
/// inf/NaN skip decided on the device), as [`adamw_multi`] is AdamW's. `Ok(None)` where
/// the backend has no such path (the CPU): the caller steps each tensor itself.
pub fn adafactor_multi(
    tensors: &mut [AdafactorTensor<'_>],
    hp: &AdafactorMultiStep,
) -> Result<Option<AdafactorOutcome>> {
    match tensors.first().map(|t| backend_of(t.param)) {
        None => Ok(None),
        Some(Backend::Meta) => af_multi::<super::MetaStorage>(tensors, hp),
        Some(Backend::Cuda) => af_multi::<super::CudaStorage>(tensors, hp),
        Some(Backend::Cpu) => af_multi::<super::CpuStorage>(tensors, hp),
    }
}

/// [`adafactor_multi`] on backend `B` (every tensor must live there).
fn af_multi<B: Variant>(
    tensors: &mut [AdafactorTensor<'_>],
    hp: &AdafactorMultiStep,
) -> Result<Option<AdafactorOutcome>> {
    const OP: &str = "adafactor_multi";
    let dev = tensors[0].param.device();
    let mut list = Vec::with_capacity(tensors.len());
    for t in tensors.iter_mut() {
        let grad_dev = t.grad.device();
        let st = AdafactorState {
            row: &mut *t.st.row,
            col: t.st.col.as_deref_mut(),
            exp_avg: t.st.exp_avg.as_deref_mut(),
            working: t.st.working.as_deref_mut(),
            rows_cols: t.st.rows_cols,
            weight_decay: t.st.weight_decay,
        };
        list.push(AdafactorMultiTensor {
            param: same_mut::<B>(OP, dev, &mut *t.param)?,
            grad: B::of(t.grad).ok_or_else(|| mismatch(OP, dev, grad_dev))?,
            st: adafactor_state_on(OP, dev, st)?,
        });
    }
    B::adafactor_multi(&mut list, hp)
}

/// [`adamw_multi`] on backend `B` (every tensor must live there).
fn multi<B: Variant>(
    tensors: &mut [AdamWTensor<'_>],
    hp: &AdamWMultiStep,
) -> Result<Option<AdamWMultiOutcome>> {
    const OP: &str = "adamw_multi";
    let dev = tensors[0].param.device();
    let mut list = Vec::with_capacity(tensors.len());
    for t in tensors.iter_mut() {
        let grad_dev = t.grad.device();
        list.push(MultiTensor {
            param: same_mut::<B>(OP, dev, &mut *t.param)?,
            grad: B::of(t.grad).ok_or_else(|| mismatch(OP, dev, grad_dev))?,
            m: same_mut::<B>(OP, dev, &mut *t.m)?,
            v: same_mut::<B>(OP, dev, &mut *t.v)?,
            working: match t.working.as_deref_mut() {
                Some(w) => Some(same_mut::<B>(OP, dev, w)?),
                None => None,
            },
            weight_decay: t.weight_decay,
        });
    }
    B::adamw_multi(&mut list, hp)
}
