//! The layer primitives of `Storage` (GEMM, norms, softmax and losses, attention, span
//! search), the multi-tensor AdamW step and the cuBLASLt-fused linear paths: each
//! dispatched to the backend its operands live on (see storage.rs).

use super::cuda;
use super::storage::{
    as_variant, dispatch1, dispatch2, mismatch, opt_as, per_backend, same, same_opt, Storage,
    Variant,
};
use super::{AdamWMultiOutcome, AdamWMultiStep};
use super::{AttnSpec, BackendStorage, BinaryOp, MatmulSpec, SpanCandidate};
use crate::error::Result;
use crate::shape::DType;

impl Storage {
    pub fn matmul(&self, rhs: &Storage, spec: &MatmulSpec) -> Result<Storage> {
        dispatch2!("matmul", self, rhs, |a, b| a.matmul(b, spec))
    }
    pub fn matmul_out(&self, rhs: &Storage, spec: &MatmulSpec, out: DType) -> Result<Storage> {
        dispatch2!("matmul_out", self, rhs, |a, b| a.matmul_out(b, spec, out))
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
    /// block): returns (y, s, mean, rstd) with `s` the normalised sum. One kernel on
    /// CUDA; on the CPU the same three ops in sequence (the results are equal bit for
    /// bit: the kernel rounds where the unfused ops store).
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
        let dev = self.device();
        if let Storage::Cuda(a) = self {
            let r = as_variant!("dropout_add_layer_norm", Cuda, res, dev);
            let g = as_variant!("dropout_add_layer_norm", Cuda, gamma, dev);
            let b = as_variant!("dropout_add_layer_norm", Cuda, beta, dev);
            let (y, s, m, rs) = a.dropout_add_layer_norm(r, g, b, cols, eps, p, seed)?;
            return Ok((
                Storage::Cuda(y),
                Storage::Cuda(s),
                Storage::Cuda(m),
                Storage::Cuda(rs),
            ));
        }
        let s = if p > 0.0 {
            self.dropout(p, seed)?.binary(res, BinaryOp::Add)?
        } else {
            self.binary(res, BinaryOp::Add)?
        };
        let (y, m, rs) = s.layer_norm(gamma, beta, cols, eps)?;
        Ok((y, s, m, rs))
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
        let dev = self.device();
        if let Storage::Cuda(s) = self {
            let g = as_variant!("dropout_add_layer_norm_backward", Cuda, gamma, dev);
            let m = as_variant!("dropout_add_layer_norm_backward", Cuda, mean, dev);
            let r = as_variant!("dropout_add_layer_norm_backward", Cuda, rstd, dev);
            let d = as_variant!("dropout_add_layer_norm_backward", Cuda, dy, dev);
            let (ds, da, dg, db) = s.dropout_add_layer_norm_backward(g, m, r, d, cols, p, seed)?;
            return Ok((
                Storage::Cuda(ds),
                da.map(Storage::Cuda),
                Storage::Cuda(dg),
                Storage::Cuda(db),
            ));
        }
        let (ds, dg, db) = self.layer_norm_backward(gamma, mean, rstd, dy, cols)?;
        let da = if p > 0.0 {
            Some(ds.dropout(p, seed)?)
        } else {
            None
        };
        Ok((ds, da, dg, db))
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
        dispatch1!(self, |s| s.softmax(cols))
    }
    pub fn softmax_backward(&self, dy: &Storage, cols: usize) -> Result<Storage> {
        dispatch2!("softmax_backward", self, dy, |y, d| y
            .softmax_backward(d, cols))
    }
    pub fn log_softmax(&self, cols: usize) -> Result<Storage> {
        dispatch1!(self, |s| s.log_softmax(cols))
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
        dispatch1!(self, |s| s.argmax_last(cols))
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
/// `grad_scale`. `Ok(None)` when the tensors live on the CPU, which has no such path:
/// the caller then steps each tensor itself.
pub fn adamw_multi(
    tensors: &mut [AdamWTensor<'_>],
    hp: &AdamWMultiStep,
) -> Result<Option<AdamWMultiOutcome>> {
    if tensors.iter().all(|t| matches!(&*t.param, Storage::Cpu(_))) {
        return Ok(None);
    }
    let mut list = Vec::with_capacity(tensors.len());
    for t in tensors.iter_mut() {
        let dev = t.param.device();
        let param = as_variant!("adamw_multi", Cuda, &mut *t.param, dev);
        let grad = as_variant!("adamw_multi", Cuda, t.grad, dev);
        let m = as_variant!("adamw_multi", Cuda, &mut *t.m, dev);
        let v = as_variant!("adamw_multi", Cuda, &mut *t.v, dev);
        let working = opt_as!("adamw_multi", Cuda, t.working.as_deref_mut(), dev);
        list.push(cuda::MultiTensor {
            param,
            grad,
            m,
            v,
            working,
            weight_decay: t.weight_decay,
        });
    }
    cuda::adamw_multi(&mut list, hp).map(Some)
}

/// `x [rows, in] · wᵀ + bias` in one GEMM with the bias added by its epilogue (CUDA,
/// cuBLASLt). `Ok(None)` when there is no such path for these operands (the CPU, or
/// cuBLASLt declines): the caller then runs `matmul` + `add_bias`.
pub fn linear_bias_fused(
    x: &Storage,
    w: &Storage,
    bias: &Storage,
    rows: usize,
    out_f: usize,
    in_f: usize,
) -> Result<Option<Storage>> {
    match (x, w, bias) {
        (Storage::Cuda(x), Storage::Cuda(w), Storage::Cuda(b)) => {
            Ok(cuda::blaslt::linear_bias(x, w, b, rows, out_f, in_f)?.map(Storage::Cuda))
        }
        _ => Ok(None),
    }
}

/// A linear layer's weight and bias gradients, `dW [out, in] = dyᵀ · x` and
/// `db [out] = Σ_rows dy`, from one GEMM whose epilogue reduces the bias gradient
/// (CUDA, cuBLASLt). `Ok(None)` when there is no such path (see [`linear_bias_fused`]).
pub fn linear_wgrad_bgrad_fused(
    dy: &Storage,
    x: &Storage,
    rows: usize,
    out_f: usize,
    in_f: usize,
) -> Result<Option<(Storage, Storage)>> {
    match (dy, x) {
        (Storage::Cuda(dy), Storage::Cuda(x)) => {
            Ok(cuda::blaslt::linear_wgrad_bgrad(dy, x, rows, out_f, in_f)?
                .map(|(w, b)| (Storage::Cuda(w), Storage::Cuda(b))))
        }
        _ => Ok(None),
    }
}
