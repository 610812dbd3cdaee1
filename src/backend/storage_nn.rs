//! The layer primitives of `Storage` (GEMM, norms, softmax and losses, attention, span
//! search), the multi-tensor AdamW step and the cuBLASLt-fused linear paths: each
//! dispatched to the backend its operands live on (see storage.rs).

use super::cuda;
use super::storage::{as_variant, dispatch1, dispatch2, mismatch, opt_as, Storage};
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
        let dev = self.device();
        match self {
            Storage::Cpu(x) => {
                let g = as_variant!("layer_norm", Cpu, gamma, dev);
                let b = as_variant!("layer_norm", Cpu, beta, dev);
                let (y, m, r) = x.layer_norm(g, b, cols, eps)?;
                Ok((Storage::Cpu(y), Storage::Cpu(m), Storage::Cpu(r)))
            }
            Storage::Cuda(x) => {
                let g = as_variant!("layer_norm", Cuda, gamma, dev);
                let b = as_variant!("layer_norm", Cuda, beta, dev);
                let (y, m, r) = x.layer_norm(g, b, cols, eps)?;
                Ok((Storage::Cuda(y), Storage::Cuda(m), Storage::Cuda(r)))
            }
        }
    }
    pub fn layer_norm_backward(
        &self,
        gamma: &Storage,
        mean: &Storage,
        rstd: &Storage,
        dy: &Storage,
        cols: usize,
    ) -> Result<(Storage, Storage, Storage)> {
        let dev = self.device();
        match self {
            Storage::Cpu(x) => {
                let g = as_variant!("layer_norm_backward", Cpu, gamma, dev);
                let m = as_variant!("layer_norm_backward", Cpu, mean, dev);
                let r = as_variant!("layer_norm_backward", Cpu, rstd, dev);
                let d = as_variant!("layer_norm_backward", Cpu, dy, dev);
                let (a, b, c) = x.layer_norm_backward(g, m, r, d, cols)?;
                Ok((Storage::Cpu(a), Storage::Cpu(b), Storage::Cpu(c)))
            }
            Storage::Cuda(x) => {
                let g = as_variant!("layer_norm_backward", Cuda, gamma, dev);
                let m = as_variant!("layer_norm_backward", Cuda, mean, dev);
                let r = as_variant!("layer_norm_backward", Cuda, rstd, dev);
                let d = as_variant!("layer_norm_backward", Cuda, dy, dev);
                let (a, b, c) = x.layer_norm_backward(g, m, r, d, cols)?;
                Ok((Storage::Cuda(a), Storage::Cuda(b), Storage::Cuda(c)))
            }
        }
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
        let dev = self.device();
        match self {
            Storage::Cpu(x) => {
                let g = as_variant!("rms_norm", Cpu, gamma, dev);
                let (y, r) = x.rms_norm(g, cols, eps)?;
                Ok((Storage::Cpu(y), Storage::Cpu(r)))
            }
            Storage::Cuda(x) => {
                let g = as_variant!("rms_norm", Cuda, gamma, dev);
                let (y, r) = x.rms_norm(g, cols, eps)?;
                Ok((Storage::Cuda(y), Storage::Cuda(r)))
            }
        }
    }
    pub fn rms_norm_backward(
        &self,
        gamma: &Storage,
        rstd: &Storage,
        dy: &Storage,
        cols: usize,
    ) -> Result<(Storage, Storage)> {
        let dev = self.device();
        match self {
            Storage::Cpu(x) => {
                let g = as_variant!("rms_norm_backward", Cpu, gamma, dev);
                let r = as_variant!("rms_norm_backward", Cpu, rstd, dev);
                let d = as_variant!("rms_norm_backward", Cpu, dy, dev);
                let (a, b) = x.rms_norm_backward(g, r, d, cols)?;
                Ok((Storage::Cpu(a), Storage::Cpu(b)))
            }
            Storage::Cuda(x) => {
                let g = as_variant!("rms_norm_backward", Cuda, gamma, dev);
                let r = as_variant!("rms_norm_backward", Cuda, rstd, dev);
                let d = as_variant!("rms_norm_backward", Cuda, dy, dev);
                let (a, b) = x.rms_norm_backward(g, r, d, cols)?;
                Ok((Storage::Cuda(a), Storage::Cuda(b)))
            }
        }
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
        let dev = self.device();
        match self {
            Storage::Cpu(x) => {
                let t = as_variant!("cross_entropy", Cpu, targets, dev);
                let (l, s) = x.cross_entropy(t, cols, ignore_index)?;
                Ok((Storage::Cpu(l), Storage::Cpu(s)))
            }
            Storage::Cuda(x) => {
                let t = as_variant!("cross_entropy", Cuda, targets, dev);
                let (l, s) = x.cross_entropy(t, cols, ignore_index)?;
                Ok((Storage::Cuda(l), Storage::Cuda(s)))
            }
        }
    }
    pub fn cross_entropy_backward(
        &self,
        targets: &Storage,
        lse: &Storage,
        dloss: &Storage,
        cols: usize,
        ignore_index: i32,
    ) -> Result<Storage> {
        let dev = self.device();
        match self {
            Storage::Cpu(x) => {
                let t = as_variant!("cross_entropy_backward", Cpu, targets, dev);
                let l = as_variant!("cross_entropy_backward", Cpu, lse, dev);
                let d = as_variant!("cross_entropy_backward", Cpu, dloss, dev);
                x.cross_entropy_backward(t, l, d, cols, ignore_index)
                    .map(Storage::Cpu)
            }
            Storage::Cuda(x) => {
                let t = as_variant!("cross_entropy_backward", Cuda, targets, dev);
                let l = as_variant!("cross_entropy_backward", Cuda, lse, dev);
                let d = as_variant!("cross_entropy_backward", Cuda, dloss, dev);
                x.cross_entropy_backward(t, l, d, cols, ignore_index)
                    .map(Storage::Cuda)
            }
        }
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
        let dev = self.device();
        match self {
            Storage::Cpu(q) => {
                let k = as_variant!("attention", Cpu, k, dev);
                let v = as_variant!("attention", Cpu, v, dev);
                let m = opt_as!("attention", Cpu, key_mask, dev);
                let b = opt_as!("attention", Cpu, bias, dev);
                let (o, l) = q.attention(k, v, m, b, spec)?;
                Ok((Storage::Cpu(o), Storage::Cpu(l)))
            }
            Storage::Cuda(q) => {
                let k = as_variant!("attention", Cuda, k, dev);
                let v = as_variant!("attention", Cuda, v, dev);
                let m = opt_as!("attention", Cuda, key_mask, dev);
                let b = opt_as!("attention", Cuda, bias, dev);
                let (o, l) = q.attention(k, v, m, b, spec)?;
                Ok((Storage::Cuda(o), Storage::Cuda(l)))
            }
        }
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
        let dev = self.device();
        match self {
            Storage::Cpu(q) => {
                let k = as_variant!("attention_backward", Cpu, k, dev);
                let v = as_variant!("attention_backward", Cpu, v, dev);
                let o = as_variant!("attention_backward", Cpu, out, dev);
                let l = as_variant!("attention_backward", Cpu, lse, dev);
                let d = as_variant!("attention_backward", Cpu, dout, dev);
                let m = opt_as!("attention_backward", Cpu, key_mask, dev);
                let b = opt_as!("attention_backward", Cpu, bias, dev);
                let (dq, dk, dv, db) = q.attention_backward(k, v, o, l, d, m, b, spec)?;
                Ok((
                    Storage::Cpu(dq),
                    Storage::Cpu(dk),
                    Storage::Cpu(dv),
                    db.map(Storage::Cpu),
                ))
            }
            Storage::Cuda(q) => {
                let k = as_variant!("attention_backward", Cuda, k, dev);
                let v = as_variant!("attention_backward", Cuda, v, dev);
                let o = as_variant!("attention_backward", Cuda, out, dev);
                let l = as_variant!("attention_backward", Cuda, lse, dev);
                let d = as_variant!("attention_backward", Cuda, dout, dev);
                let m = opt_as!("attention_backward", Cuda, key_mask, dev);
                let b = opt_as!("attention_backward", Cuda, bias, dev);
                let (dq, dk, dv, db) = q.attention_backward(k, v, o, l, d, m, b, spec)?;
                Ok((
                    Storage::Cuda(dq),
                    Storage::Cuda(dk),
                    Storage::Cuda(dv),
                    db.map(Storage::Cuda),
                ))
            }
        }
    }
    pub fn attention_qkv(
        &self,
        key_mask: Option<&Storage>,
        bias: Option<&Storage>,
        spec: &AttnSpec,
    ) -> Result<(Storage, Storage)> {
        let dev = self.device();
        match self {
            Storage::Cpu(x) => {
                let m = opt_as!("attention_qkv", Cpu, key_mask, dev);
                let b = opt_as!("attention_qkv", Cpu, bias, dev);
                let (o, l) = x.attention_qkv(m, b, spec)?;
                Ok((Storage::Cpu(o), Storage::Cpu(l)))
            }
            Storage::Cuda(x) => {
                let m = opt_as!("attention_qkv", Cuda, key_mask, dev);
                let b = opt_as!("attention_qkv", Cuda, bias, dev);
                let (o, l) = x.attention_qkv(m, b, spec)?;
                Ok((Storage::Cuda(o), Storage::Cuda(l)))
            }
        }
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
        let dev = self.device();
        match self {
            Storage::Cpu(x) => {
                let o = as_variant!("attention_qkv_backward", Cpu, out, dev);
                let l = as_variant!("attention_qkv_backward", Cpu, lse, dev);
                let d = as_variant!("attention_qkv_backward", Cpu, dout, dev);
                let m = opt_as!("attention_qkv_backward", Cpu, key_mask, dev);
                let b = opt_as!("attention_qkv_backward", Cpu, bias, dev);
                let (g, db) = x.attention_qkv_backward(o, l, d, m, b, spec)?;
                Ok((Storage::Cpu(g), db.map(Storage::Cpu)))
            }
            Storage::Cuda(x) => {
                let o = as_variant!("attention_qkv_backward", Cuda, out, dev);
                let l = as_variant!("attention_qkv_backward", Cuda, lse, dev);
                let d = as_variant!("attention_qkv_backward", Cuda, dout, dev);
                let m = opt_as!("attention_qkv_backward", Cuda, key_mask, dev);
                let b = opt_as!("attention_qkv_backward", Cuda, bias, dev);
                let (g, db) = x.attention_qkv_backward(o, l, d, m, b, spec)?;
                Ok((Storage::Cuda(g), db.map(Storage::Cuda)))
            }
        }
    }
    pub fn span_search(
        &self,
        end_logits: &Storage,
        allowed: &Storage,
        cols: usize,
        max_len: usize,
        top_k: usize,
    ) -> Result<Vec<SpanCandidate>> {
        let dev = self.device();
        match self {
            Storage::Cpu(s) => {
                let e = as_variant!("span_search", Cpu, end_logits, dev);
                let a = as_variant!("span_search", Cpu, allowed, dev);
                s.span_search(e, a, cols, max_len, top_k)
            }
            Storage::Cuda(s) => {
                let e = as_variant!("span_search", Cuda, end_logits, dev);
                let a = as_variant!("span_search", Cuda, allowed, dev);
                s.span_search(e, a, cols, max_len, top_k)
            }
        }
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
