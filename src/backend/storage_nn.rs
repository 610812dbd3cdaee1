//! The layer primitives of `Storage` (GEMM, norms, softmax and losses, attention, span
//! search) and its fused paths (linear with bias, the encoder's residual LayerNorm, the
//! multi-tensor AdamW step): each dispatched to the backend its operands live on (see
//! storage.rs).

use super::storage::{mismatch, per_backend, same, same_mut, same_opt, Storage, Variant};
use super::{AdamWMultiOutcome, AdamWMultiStep, MultiTensor};
use super::{AttnSpec, BackendStorage, MatmulSpec, SpanCandidate};
use crate::error::Result;
use crate::shape::DType;

impl Storage {
    pub fn matmul(&self, rhs: &Storage, spec: &MatmulSpec) -> Result<Storage> {
        per_backend!(self, |a| a
            .matmul(same("matmul", a, rhs)?, spec)
            .map(Variant::wrap))
    }
    pub fn matmul_out(&self, rhs: &Storage, spec: &MatmulSpec, out: DType) -> Result<Storage> {
        per_backend!(self, |a| a
            .matmul_out(same("matmul_out", a, rhs)?, spec, out)
            .map(Variant::wrap))
    }
    pub fn layer_norm(
        &self,
        gamma: &Storage,
        beta: &Storage,
        cols: usize,
        eps: f64,
    ) -> Result<(Storage, Storage, Storage)> {
        per_backend!(self, |x| {
            const OP: &str = "layer_norm";
            let (y, m, r) = x.layer_norm(same(OP, x, gamma)?, same(OP, x, beta)?, cols, eps)?;
            Ok((y.wrap(), m.wrap(), r.wrap()))
        })
    }
    pub fn layer_norm_backward(
        &self,
        gamma: &Storage,
        mean: &Storage,
        rstd: &Storage,
        dy: &Storage,
        cols: usize,
    ) -> Result<(Storage, Storage, Storage)> {
        per_backend!(self, |x| {
            const OP: &str = "layer_norm_backward";
            let (g, m) = (same(OP, x, gamma)?, same(OP, x, mean)?);
            let (r, d) = (same(OP, x, rstd)?, same(OP, x, dy)?);
            let (a, b, c) = x.layer_norm_backward(g, m, r, d, cols)?;
            Ok((a.wrap(), b.wrap(), c.wrap()))
        })
    }
    /// `LayerNorm(dropout(self, p, seed) + res)` (a post-norm encoder's residual
    /// block): (y, s, mean, rstd) with `s` the normalised sum. One kernel on CUDA.
    #[allow(clippy::too_many_arguments)]
    pub fn dropout_add_layer_norm(
        &self,
        res: &Storage,
        gamma: &Storage,
        beta: &Storage,
        cols: usize,
        eps: f64,
        p: f32,
        seed: u64,
    ) -> Result<(Storage, Storage, Storage, Storage)> {
        per_backend!(self, |a| {
            const OP: &str = "dropout_add_layer_norm";
            let (r, g, b) = (same(OP, a, res)?, same(OP, a, gamma)?, same(OP, a, beta)?);
            let (y, s, m, rs) = a.dropout_add_layer_norm(r, g, b, cols, eps, p, seed)?;
            Ok((y.wrap(), s.wrap(), m.wrap(), rs.wrap()))
        })
    }

    /// Backward of [`dropout_add_layer_norm`](Self::dropout_add_layer_norm) from the
    /// saved sum `self`: (ds, da, dgamma, dbeta); `da` is `None` when p = 0 (it is ds).
    #[allow(clippy::too_many_arguments)]
    pub fn dropout_add_layer_norm_backward(
        &self,
        gamma: &Storage,
        mean: &Storage,
        rstd: &Storage,
        dy: &Storage,
        cols: usize,
        p: f32,
        seed: u64,
    ) -> Result<(Storage, Option<Storage>, Storage, Storage)> {
        per_backend!(self, |s| {
            const OP: &str = "dropout_add_layer_norm_backward";
            let (g, m) = (same(OP, s, gamma)?, same(OP, s, mean)?);
            let (r, d) = (same(OP, s, rstd)?, same(OP, s, dy)?);
            let (ds, da, dg, db) = s.dropout_add_layer_norm_backward(g, m, r, d, cols, p, seed)?;
            Ok((ds.wrap(), da.map(Variant::wrap), dg.wrap(), db.wrap()))
        })
    }

    /// `self [rows, in] · wᵀ + bias`: on CUDA in one GEMM with the bias added by its
    /// epilogue (cuBLASLt) where it can, else GEMM + `add_bias`.
    pub fn linear_bias(
        &self,
        w: &Storage,
        bias: &Storage,
        rows: usize,
        out_f: usize,
        in_f: usize,
    ) -> Result<Storage> {
        per_backend!(self, |x| {
            const OP: &str = "linear_bias";
            x.linear_bias(same(OP, x, w)?, same(OP, x, bias)?, rows, out_f, in_f)
                .map(Variant::wrap)
        })
    }

    /// A linear layer's weight and bias gradients from `self` = dy and `x`:
    /// (`dW [out, in] = dyᵀ · x`, `db [out] = Σ_rows dy`); on CUDA from one GEMM whose
    /// epilogue reduces the bias gradient, where it can.
    pub fn linear_wgrad_bgrad(
        &self,
        x: &Storage,
        rows: usize,
        out_f: usize,
        in_f: usize,
    ) -> Result<(Storage, Storage)> {
        per_backend!(self, |dy| {
            let (dw, db) =
                dy.linear_wgrad_bgrad(same("linear_wgrad_bgrad", dy, x)?, rows, out_f, in_f)?;
            Ok((dw.wrap(), db.wrap()))
        })
    }

    pub fn rms_norm(&self, gamma: &Storage, cols: usize, eps: f64) -> Result<(Storage, Storage)> {
        per_backend!(self, |x| {
            let (y, r) = x.rms_norm(same("rms_norm", x, gamma)?, cols, eps)?;
            Ok((y.wrap(), r.wrap()))
        })
    }
    pub fn rms_norm_backward(
        &self,
        gamma: &Storage,
        rstd: &Storage,
        dy: &Storage,
        cols: usize,
    ) -> Result<(Storage, Storage)> {
        per_backend!(self, |x| {
            const OP: &str = "rms_norm_backward";
            let (g, r, d) = (same(OP, x, gamma)?, same(OP, x, rstd)?, same(OP, x, dy)?);
            let (a, b) = x.rms_norm_backward(g, r, d, cols)?;
            Ok((a.wrap(), b.wrap()))
        })
    }
    pub fn softmax(&self, cols: usize) -> Result<Storage> {
        per_backend!(self, |s| s.softmax(cols).map(Variant::wrap))
    }
    pub fn softmax_backward(&self, dy: &Storage, cols: usize) -> Result<Storage> {
        per_backend!(self, |y| y
            .softmax_backward(same("softmax_backward", y, dy)?, cols)
            .map(Variant::wrap))
    }
    pub fn log_softmax(&self, cols: usize) -> Result<Storage> {
        per_backend!(self, |s| s.log_softmax(cols).map(Variant::wrap))
    }
    pub fn cross_entropy(
        &self,
        targets: &Storage,
        cols: usize,
        ignore_index: i32,
    ) -> Result<(Storage, Storage)> {
        per_backend!(self, |x| {
            let t = same("cross_entropy", x, targets)?;
            let (l, s) = x.cross_entropy(t, cols, ignore_index)?;
            Ok((l.wrap(), s.wrap()))
        })
    }
    pub fn cross_entropy_backward(
        &self,
        targets: &Storage,
        lse: &Storage,
        dloss: &Storage,
        cols: usize,
        ignore_index: i32,
    ) -> Result<Storage> {
        per_backend!(self, |x| {
            const OP: &str = "cross_entropy_backward";
            let (t, l, d) = (
                same(OP, x, targets)?,
                same(OP, x, lse)?,
                same(OP, x, dloss)?,
            );
            x.cross_entropy_backward(t, l, d, cols, ignore_index)
                .map(Variant::wrap)
        })
    }
    pub fn argmax_last(&self, cols: usize) -> Result<Storage> {
        per_backend!(self, |s| s.argmax_last(cols).map(Variant::wrap))
    }
    pub fn attention(
        &self,
        k: &Storage,
        v: &Storage,
        key_mask: Option<&Storage>,
        bias: Option<&Storage>,
        spec: &AttnSpec,
    ) -> Result<(Storage, Storage)> {
        per_backend!(self, |q| {
            const OP: &str = "attention";
            let (k, v) = (same(OP, q, k)?, same(OP, q, v)?);
            let (m, b) = (same_opt(OP, q, key_mask)?, same_opt(OP, q, bias)?);
            let (o, l) = q.attention(k, v, m, b, spec)?;
            Ok((o.wrap(), l.wrap()))
        })
    }
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(
        &self,
        k: &Storage,
        v: &Storage,
        out: &Storage,
        lse: &Storage,
        dout: &Storage,
        key_mask: Option<&Storage>,
        bias: Option<&Storage>,
        spec: &AttnSpec,
    ) -> Result<(Storage, Storage, Storage, Option<Storage>)> {
        per_backend!(self, |q| {
            const OP: &str = "attention_backward";
            let (k, v, o) = (same(OP, q, k)?, same(OP, q, v)?, same(OP, q, out)?);
            let (l, d) = (same(OP, q, lse)?, same(OP, q, dout)?);
            let (m, b) = (same_opt(OP, q, key_mask)?, same_opt(OP, q, bias)?);
            let (dq, dk, dv, db) = q.attention_backward(k, v, o, l, d, m, b, spec)?;
            Ok((dq.wrap(), dk.wrap(), dv.wrap(), db.map(Variant::wrap)))
        })
    }
    pub fn attention_qkv(
        &self,
        key_mask: Option<&Storage>,
        bias: Option<&Storage>,
        spec: &AttnSpec,
    ) -> Result<(Storage, Storage)> {
        per_backend!(self, |x| {
            const OP: &str = "attention_qkv";
            let (m, b) = (same_opt(OP, x, key_mask)?, same_opt(OP, x, bias)?);
            let (o, l) = x.attention_qkv(m, b, spec)?;
            Ok((o.wrap(), l.wrap()))
        })
    }
    #[allow(clippy::too_many_arguments)]
    pub fn attention_qkv_backward(
        &self,
        out: &Storage,
        lse: &Storage,
        dout: &Storage,
        key_mask: Option<&Storage>,
        bias: Option<&Storage>,
        spec: &AttnSpec,
    ) -> Result<(Storage, Option<Storage>)> {
        per_backend!(self, |x| {
            const OP: &str = "attention_qkv_backward";
            let (o, l, d) = (same(OP, x, out)?, same(OP, x, lse)?, same(OP, x, dout)?);
            let (m, b) = (same_opt(OP, x, key_mask)?, same_opt(OP, x, bias)?);
            let (g, db) = x.attention_qkv_backward(o, l, d, m, b, spec)?;
            Ok((g.wrap(), db.map(Variant::wrap)))
        })
    }
    pub fn span_search(
        &self,
        end_logits: &Storage,
        allowed: &Storage,
        cols: usize,
        max_len: usize,
        top_k: usize,
    ) -> Result<Vec<SpanCandidate>> {
        per_backend!(self, |s| {
            let e = same("span_search", s, end_logits)?;
            s.span_search(e, same("span_search", s, allowed)?, cols, max_len, top_k)
        })
    }
}

/// One parameter of [`adamw_multi`]: the master weights (or the parameter itself when it
/// is f32), its gradient, the moments, the optional working copy that receives the
/// updated value, and its weight decay.
pub struct AdamWTensor<'a> {
    pub param: &'a mut Storage,
    pub grad: &'a Storage,
    pub m: &'a mut Storage,
    pub v: &'a mut Storage,
    pub working: Option<&'a mut Storage>,
    pub weight_decay: f64,
}

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
    match tensors.first().map(|t| t.param.device().target()) {
        None => Ok(None),
        Some(_) if matches!(&*tensors[0].param, Storage::Meta(_)) => {
            multi::<super::MetaStorage>(tensors, hp)
        }
        Some(Some(crate::shape::Target::Cuda)) => multi::<super::CudaStorage>(tensors, hp),
        Some(_) => multi::<super::CpuStorage>(tensors, hp),
    }
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
