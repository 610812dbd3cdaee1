//! `BackendStorage` for `CudaStorage`: each primitive handed to the file of its op family
//! (elementwise.rs, norm.rs, attention_unfused.rs, ...), where the kernels are launched.

use super::{
    adafactor, adamw, adamw_multi, attention_unfused, blas, blaslt, elementwise, embedding, layout,
    norm, reduce, softmax, span, CudaStorage,
};
use crate::backend::cpu::CpuData;
use crate::backend::{composed, AdamWMultiOutcome, AdamWMultiStep, AdamWState, MultiTensor};
use crate::backend::{AdafactorMultiStep, AdafactorMultiTensor, AdafactorOutcome};
use crate::backend::{AdafactorState, AdafactorStep, ResidualNorm};
use crate::backend::{
    AdamWStep, AttnArgs, AttnSaved, BackendStorage, BinaryOp, CpuStorage, LinearDims, MatmulSpec,
    SpanCandidate, UnaryOp,
};
use crate::error::{Error, Result};
use crate::shape::{DType, Device};

/// Trait methods that hand their arguments, `self` first, to a function of the op
/// family's file: each written once, as its signature and that function's path.
macro_rules! forward {
    () => {};
    (fn $name:ident(&self $(, $arg:ident: $t:ty)* $(,)?) -> $ret:ty => $f:path; $($rest:tt)*) => {
        fn $name(&self $(, $arg: $t)*) -> Result<$ret> {
            $f(self $(, $arg)*)
        }
        forward!($($rest)*);
    };
    (fn $name:ident(&mut self $(, $arg:ident: $t:ty)* $(,)?) -> $ret:ty => $f:path; $($rest:tt)*) => {
        fn $name(&mut self $(, $arg: $t)*) -> Result<$ret> {
            $f(self $(, $arg)*)
        }
        forward!($($rest)*);
    };
}

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
    forward! {
        fn binary(&self, rhs: &Self, op: BinaryOp) -> Self => elementwise::binary;
        fn affine(&self, mul: f64, add: f64) -> Self => elementwise::affine;
        fn unary(&self, op: UnaryOp) -> Self => elementwise::unary;
        fn unary_backward(&self, dy: &Self, op: UnaryOp) -> Self => elementwise::unary_backward;
        fn gated(&self, lin: &Self, act: UnaryOp) -> Self => elementwise::gated;
        fn gated_backward(&self, lin: &Self, dy: &Self, act: UnaryOp) -> (Self, Self)
            => elementwise::gated_backward;
        fn dropout(&self, p: f32, seed: u64) -> Self => elementwise::dropout;
        fn add_bias(&self, bias: &Self, cols: usize) -> Self => elementwise::add_bias;
        fn sum_rows(&self, cols: usize) -> Self => reduce::sum_rows;
        fn permute(&self, dims: &[usize], perm: &[usize]) -> Self => layout::permute;
        fn narrow(&self, dims: &[usize], dim: usize, start: usize, len: usize) -> Self
            => layout::narrow;
        fn index_select(&self, ids: &Self, cols: usize) -> Self => embedding::index_select;
        fn index_add(&self, ids: &Self, n: usize, cols: usize, skip: Option<usize>) -> Self
            => embedding::index_add;
        fn axpy_(&mut self, x: &Self, alpha: f64) -> () => elementwise::axpy_;
        fn scale_(&mut self, alpha: f64) -> () => elementwise::scale_;
        fn copy_from_(&mut self, src: &Self) -> () => elementwise::copy_from_;
        fn adamw_(&mut self, grad: &Self, st: AdamWState<'_, Self>, hp: &AdamWStep) -> bool
            => adamw::adamw_;
        fn adafactor_(&mut self, grad: &Self, st: AdafactorState<'_, Self>, hp: &AdafactorStep)
            -> Option<f64> => adafactor::adafactor_;
        fn has_non_finite(&self) -> bool => elementwise::has_non_finite;
        fn clamp_i32(&self, lo: i32, hi: i32) -> Self => elementwise::clamp_i32;
        fn matmul(&self, rhs: &Self, spec: &MatmulSpec) -> Self => blas::matmul;
        fn matmul_out(&self, rhs: &Self, spec: &MatmulSpec, out: DType) -> Self => blas::matmul_out;
        fn layer_norm(&self, gamma: &Self, beta: &Self, cols: usize, eps: f64)
            -> (Self, Self, Self) => norm::layer_norm;
        fn layer_norm_backward(&self, gamma: &Self, mean: &Self, rstd: &Self, dy: &Self,
            cols: usize) -> (Self, Self, Self) => norm::layer_norm_backward;
        fn rms_norm(&self, gamma: &Self, cols: usize, eps: f64) -> (Self, Self) => norm::rms_norm;
        fn rms_norm_backward(&self, gamma: &Self, rstd: &Self, dy: &Self, cols: usize)
            -> (Self, Self) => norm::rms_norm_backward;
        fn softmax_backward(&self, dy: &Self, cols: usize) -> Self => softmax::softmax_backward;
        fn cross_entropy(&self, targets: &Self, cols: usize, ignore_index: i32) -> (Self, Self)
            => softmax::cross_entropy;
        fn cross_entropy_backward(&self, targets: &Self, lse: &Self, dloss: &Self, cols: usize,
            ignore_index: i32) -> Self => softmax::cross_entropy_backward;
        fn argmax_last(&self, cols: usize) -> Self => softmax::argmax_last;
        fn attention(&self, k: &Self, v: &Self, a: AttnArgs<'_, Self>) -> (Self, Self)
            => attention_unfused::attention;
        fn attention_backward(&self, k: &Self, v: &Self, saved: AttnSaved<'_, Self>,
            a: AttnArgs<'_, Self>) -> (Self, Self, Self, Option<Self>)
            => attention_unfused::attention_backward;
        fn attention_qkv(&self, a: AttnArgs<'_, Self>) -> (Self, Self)
            => attention_unfused::attention_qkv;
        fn attention_qkv_backward(&self, saved: AttnSaved<'_, Self>, a: AttnArgs<'_, Self>)
            -> (Self, Option<Self>) => attention_unfused::attention_qkv_backward;
        fn span_search(&self, end_logits: &Self, allowed: &Self, cols: usize, max_len: usize,
            top_k: usize) -> Vec<SpanCandidate> => span::span_search;
        fn dropout_add_layer_norm(&self, res: &Self, gamma: &Self, beta: &Self, rn: ResidualNorm)
            -> (Self, Self, Self, Self) => norm::add_layer_norm;
        fn dropout_add_layer_norm_backward(&self, gamma: &Self, mean: &Self, rstd: &Self,
            dy: &Self, rn: ResidualNorm) -> (Self, Option<Self>, Self, Self)
            => norm::add_layer_norm_backward;
    }
    fn sum_all(&self) -> Result<Self> {
        reduce::sum_all(self, false)
    }
    fn sum_sq(&self) -> Result<Self> {
        reduce::sum_all(self, true)
    }
    fn cat(parts: &[&Self], dims: &[Vec<usize>], dim: usize) -> Result<Self> {
        layout::cat(parts, dims, dim)
    }
    fn softmax(&self, cols: usize) -> Result<Self> {
        softmax::softmax(self, cols, false)
    }
    fn log_softmax(&self, cols: usize) -> Result<Self> {
        softmax::softmax(self, cols, true)
    }

    fn linear_bias(&self, w: &Self, bias: &Self, dims: LinearDims) -> Result<Self> {
        match blaslt::linear_bias(self, w, bias, dims)? {
            Some(y) => Ok(y),
            None => composed::linear_bias(self, w, bias, dims),
        }
    }
    fn linear_wgrad_bgrad(&self, x: &Self, dims: LinearDims) -> Result<(Self, Self)> {
        match blaslt::linear_wgrad_bgrad(self, x, dims)? {
            Some(g) => Ok(g),
            None => composed::linear_wgrad_bgrad(self, x, dims),
        }
    }
    fn adamw_multi(
        tensors: &mut [MultiTensor<'_, Self>],
        hp: &AdamWMultiStep,
    ) -> Result<Option<AdamWMultiOutcome>> {
        adamw_multi::adamw_multi(tensors, hp).map(Some)
    }
    fn adafactor_multi(
        tensors: &mut [AdafactorMultiTensor<'_, Self>],
        hp: &AdafactorMultiStep,
    ) -> Result<Option<AdafactorOutcome>> {
        adafactor::adafactor_multi(tensors, hp).map(Some)
    }
}
