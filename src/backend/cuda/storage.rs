//! `BackendStorage` for `CudaStorage`: each primitive handed to the file of its op family
//! (elementwise.rs, norm.rs, attention_unfused.rs, ...), where the kernels are launched.

use super::{
    adamw, adamw_multi, attention_unfused, blas, blaslt, elementwise, embedding, layout, norm,
    reduce, softmax, span, CudaStorage,
};
use crate::backend::cpu::CpuData;
use crate::backend::{composed, AdamWMultiOutcome, AdamWMultiStep, MultiTensor};
use crate::backend::{
    AdamWStep, AttnSpec, BackendStorage, BinaryOp, CpuStorage, MatmulSpec, SpanCandidate, UnaryOp,
};
use crate::error::{Error, Result};
use crate::shape::{DType, Device};

impl BackendStorage for CudaStorage {
    fn device(&self) -> Device {
        Device::Cuda(self.dev.ordinal)
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.len
    }
    fn zeros_like_dev(&self, len: usize, dtype: DType) -> Result<Self> {
        Self::zeroed(&self.dev, len, dtype)
    }
    fn full_like_dev(&self, len: usize, dtype: DType, value: f64) -> Result<Self> {
        elementwise::full(&self.dev, len, dtype, value)
    }
    fn to_vec_f32(&self) -> Result<Vec<f32>> {
        Ok(match self.to_cpu()?.data() {
            CpuData::F32(v) => v.clone(),
            CpuData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            CpuData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            CpuData::I32(v) => v.iter().map(|&x| x as f32).collect(),
        })
    }
    fn to_vec_f64(&self) -> Result<Vec<f64>> {
        Ok(self.to_vec_f32()?.into_iter().map(f64::from).collect())
    }
    fn to_vec_i32(&self) -> Result<Vec<i32>> {
        match self.to_cpu()?.data() {
            CpuData::I32(v) => Ok(v.clone()),
            _ => Err(Error::DType {
                op: "to_vec_i32",
                expected: "i32",
                got: self.dtype,
            }),
        }
    }
    fn to_cpu(&self) -> Result<CpuStorage> {
        let bytes = self.to_host_bytes()?;
        Ok(match self.dtype {
            DType::F32 => CpuStorage::from_f32(bytemuck::pod_collect_to_vec(&bytes)),
            DType::F16 => CpuStorage::from_f16(bytemuck::pod_collect_to_vec(&bytes)),
            DType::I32 => CpuStorage::from_i32(bytemuck::pod_collect_to_vec(&bytes)),
            DType::F64 => CpuStorage::from_f64(bytemuck::pod_collect_to_vec(&bytes)),
        })
    }
    fn cast(&self, dtype: DType) -> Result<Self> {
        elementwise::cast(self, dtype)
    }
    fn duplicate(&self) -> Result<Self> {
        let mut out = Self::alloc(&self.dev, self.len, self.dtype)?;
        out.copy_bytes_from(self)?;
        Ok(out)
    }
    fn binary(&self, rhs: &Self, op: BinaryOp) -> Result<Self> {
        elementwise::binary(self, rhs, op)
    }
    fn affine(&self, mul: f64, add: f64) -> Result<Self> {
        elementwise::affine(self, mul, add)
    }
    fn unary(&self, op: UnaryOp) -> Result<Self> {
        elementwise::unary(self, op)
    }
    fn unary_backward(&self, dy: &Self, op: UnaryOp) -> Result<Self> {
        elementwise::unary_backward(self, dy, op)
    }
    fn gated(&self, lin: &Self, act: UnaryOp) -> Result<Self> {
        elementwise::gated(self, lin, act)
    }
    fn gated_backward(&self, lin: &Self, dy: &Self, act: UnaryOp) -> Result<(Self, Self)> {
        elementwise::gated_backward(self, lin, dy, act)
    }
    fn dropout(&self, p: f32, seed: u64) -> Result<Self> {
        elementwise::dropout(self, p, seed)
    }
    fn add_bias(&self, bias: &Self, cols: usize) -> Result<Self> {
        elementwise::add_bias(self, bias, cols)
    }
    fn sum_rows(&self, cols: usize) -> Result<Self> {
        reduce::sum_rows(self, cols)
    }
    fn sum_all(&self) -> Result<Self> {
        reduce::sum_all(self, false)
    }
    fn sum_sq(&self) -> Result<Self> {
        reduce::sum_all(self, true)
    }
    fn permute(&self, dims: &[usize], perm: &[usize]) -> Result<Self> {
        layout::permute(self, dims, perm)
    }
    fn narrow(&self, dims: &[usize], dim: usize, start: usize, len: usize) -> Result<Self> {
        layout::narrow(self, dims, dim, start, len)
    }
    fn cat(parts: &[&Self], dims: &[Vec<usize>], dim: usize) -> Result<Self> {
        layout::cat(parts, dims, dim)
    }
    fn index_select(&self, ids: &Self, cols: usize) -> Result<Self> {
        embedding::index_select(self, ids, cols)
    }
    fn index_add(&self, ids: &Self, n: usize, cols: usize, skip: Option<usize>) -> Result<Self> {
        embedding::index_add(self, ids, n, cols, skip)
    }
    fn axpy_(&mut self, x: &Self, alpha: f64) -> Result<()> {
        elementwise::axpy_(self, x, alpha)
    }
    fn scale_(&mut self, alpha: f64) -> Result<()> {
        elementwise::scale_(self, alpha)
    }
    fn copy_from_(&mut self, src: &Self) -> Result<()> {
        elementwise::copy_from_(self, src)
    }
    fn adamw_(
        &mut self,
        grad: &Self,
        m: &mut Self,
        v: &mut Self,
        working: Option<&mut Self>,
        hp: &AdamWStep,
    ) -> Result<bool> {
        adamw::adamw_(self, grad, m, v, working, hp)
    }
    fn has_non_finite(&self) -> Result<bool> {
        elementwise::has_non_finite(self)
    }
    fn clamp_i32(&self, lo: i32, hi: i32) -> Result<Self> {
        elementwise::clamp_i32(self, lo, hi)
    }
    fn matmul(&self, rhs: &Self, spec: &MatmulSpec) -> Result<Self> {
        blas::matmul(self, rhs, spec)
    }
    fn matmul_out(&self, rhs: &Self, spec: &MatmulSpec, out: DType) -> Result<Self> {
        blas::matmul_out(self, rhs, spec, out)
    }
    fn layer_norm(
        &self,
        gamma: &Self,
        beta: &Self,
        cols: usize,
        eps: f64,
    ) -> Result<(Self, Self, Self)> {
        norm::layer_norm(self, gamma, beta, cols, eps)
    }
    fn layer_norm_backward(
        &self,
        gamma: &Self,
        mean: &Self,
        rstd: &Self,
        dy: &Self,
        cols: usize,
    ) -> Result<(Self, Self, Self)> {
        norm::layer_norm_backward(self, gamma, mean, rstd, dy, cols)
    }
    fn rms_norm(&self, gamma: &Self, cols: usize, eps: f64) -> Result<(Self, Self)> {
        norm::rms_norm(self, gamma, cols, eps)
    }
    fn rms_norm_backward(
        &self,
        gamma: &Self,
        rstd: &Self,
        dy: &Self,
        cols: usize,
    ) -> Result<(Self, Self)> {
        norm::rms_norm_backward(self, gamma, rstd, dy, cols)
    }
    fn softmax(&self, cols: usize) -> Result<Self> {
        softmax::softmax(self, cols, false)
    }
    fn softmax_backward(&self, dy: &Self, cols: usize) -> Result<Self> {
        softmax::softmax_backward(self, dy, cols)
    }
    fn log_softmax(&self, cols: usize) -> Result<Self> {
        softmax::softmax(self, cols, true)
    }
    fn cross_entropy(
        &self,
        targets: &Self,
        cols: usize,
        ignore_index: i32,
    ) -> Result<(Self, Self)> {
        softmax::cross_entropy(self, targets, cols, ignore_index)
    }
    fn cross_entropy_backward(
        &self,
        targets: &Self,
        lse: &Self,
        dloss: &Self,
        cols: usize,
        ignore_index: i32,
    ) -> Result<Self> {
        softmax::cross_entropy_backward(self, targets, lse, dloss, cols, ignore_index)
    }
    fn argmax_last(&self, cols: usize) -> Result<Self> {
        softmax::argmax_last(self, cols)
    }
    fn attention(
        &self,
        k: &Self,
        v: &Self,
        key_mask: Option<&Self>,
        bias: Option<&Self>,
        spec: &AttnSpec,
    ) -> Result<(Self, Self)> {
        attention_unfused::attention(self, k, v, key_mask, bias, spec)
    }
    fn attention_backward(
        &self,
        k: &Self,
        v: &Self,
        out: &Self,
        lse: &Self,
        dout: &Self,
        key_mask: Option<&Self>,
        bias: Option<&Self>,
        spec: &AttnSpec,
    ) -> Result<(Self, Self, Self, Option<Self>)> {
        attention_unfused::attention_backward(self, k, v, out, lse, dout, key_mask, bias, spec)
    }
    fn attention_qkv(
        &self,
        key_mask: Option<&Self>,
        bias: Option<&Self>,
        spec: &AttnSpec,
    ) -> Result<(Self, Self)> {
        attention_unfused::attention_qkv(self, key_mask, bias, spec)
    }
    fn attention_qkv_backward(
        &self,
        out: &Self,
        lse: &Self,
        dout: &Self,
        key_mask: Option<&Self>,
        bias: Option<&Self>,
        spec: &AttnSpec,
    ) -> Result<(Self, Option<Self>)> {
        attention_unfused::attention_qkv_backward(self, out, lse, dout, key_mask, bias, spec)
    }
    fn span_search(
        &self,
        end_logits: &Self,
        allowed: &Self,
        cols: usize,
        max_len: usize,
        top_k: usize,
    ) -> Result<Vec<SpanCandidate>> {
        span::span_search(self, end_logits, allowed, cols, max_len, top_k)
    }

    fn linear_bias(
        &self,
        w: &Self,
        bias: &Self,
        rows: usize,
        out_f: usize,
        in_f: usize,
    ) -> Result<Self> {
        match blaslt::linear_bias(self, w, bias, rows, out_f, in_f)? {
            Some(y) => Ok(y),
            None => composed::linear_bias(self, w, bias, rows, out_f, in_f),
        }
    }
    fn linear_wgrad_bgrad(
        &self,
        x: &Self,
        rows: usize,
        out_f: usize,
        in_f: usize,
    ) -> Result<(Self, Self)> {
        match blaslt::linear_wgrad_bgrad(self, x, rows, out_f, in_f)? {
            Some(g) => Ok(g),
            None => composed::linear_wgrad_bgrad(self, x, rows, out_f, in_f),
        }
    }
    fn dropout_add_layer_norm(
        &self,
        res: &Self,
        gamma: &Self,
        beta: &Self,
        cols: usize,
        eps: f64,
        p: f32,
        seed: u64,
    ) -> Result<(Self, Self, Self, Self)> {
        norm::add_layer_norm(self, res, gamma, beta, cols, eps, p, seed)
    }
    fn dropout_add_layer_norm_backward(
        &self,
        gamma: &Self,
        mean: &Self,
        rstd: &Self,
        dy: &Self,
        cols: usize,
        p: f32,
        seed: u64,
    ) -> Result<(Self, Option<Self>, Self, Self)> {
        norm::add_layer_norm_backward(self, gamma, mean, rstd, dy, cols, p, seed)
    }
    fn adamw_multi(
        tensors: &mut [MultiTensor<'_, Self>],
        hp: &AdamWMultiStep,
    ) -> Result<Option<AdamWMultiOutcome>> {
        adamw_multi::adamw_multi(tensors, hp).map(Some)
    }
}
