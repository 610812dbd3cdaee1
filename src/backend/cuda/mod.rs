//! The CUDA backend: context and stream, kernel registry (fatbin or NVRTC), cuBLAS,
//! caching allocator feeding `memory::tracker`. Loaded dynamically: a machine without a
//! driver builds and runs everything else, and `Device::Auto` falls back to the CPU.

use crate::backend::{
    AdamWStep, AttnSpec, BackendStorage, BinaryOp, CpuStorage, MatmulSpec, SpanCandidate, UnaryOp,
};
use crate::error::{Error, Result};
use crate::shape::{DType, Device};

/// Is a CUDA driver loadable and a device present? Never panics.
pub fn is_available() -> bool {
    false
}

/// A device buffer.
#[derive(Debug)]
pub struct CudaStorage {
    ordinal: usize,
    dtype: DType,
    len: usize,
}

impl CudaStorage {
    /// Upload a host buffer to device `ordinal`.
    pub fn from_cpu(_src: &CpuStorage, ordinal: usize) -> Result<CudaStorage> {
        Err(Error::Cuda(format!(
            "cuda:{ordinal}: the CUDA backend is not built yet"
        )))
    }
}

fn unimpl(op: &str) -> Error {
    Error::Cuda(format!("{op} is not implemented yet"))
}

#[allow(unused_variables)]
impl BackendStorage for CudaStorage {
    fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.len
    }
    fn zeros_like_dev(&self, len: usize, dtype: DType) -> Result<Self> {
        Err(unimpl("zeros_like_dev"))
    }
    fn full_like_dev(&self, len: usize, dtype: DType, value: f64) -> Result<Self> {
        Err(unimpl("full_like_dev"))
    }
    fn to_vec_f32(&self) -> Result<Vec<f32>> {
        Err(unimpl("to_vec_f32"))
    }
    fn to_vec_f64(&self) -> Result<Vec<f64>> {
        Err(unimpl("to_vec_f64"))
    }
    fn to_vec_i32(&self) -> Result<Vec<i32>> {
        Err(unimpl("to_vec_i32"))
    }
    fn to_cpu(&self) -> Result<CpuStorage> {
        Err(unimpl("to_cpu"))
    }
    fn cast(&self, dtype: DType) -> Result<Self> {
        Err(unimpl("cast"))
    }
    fn duplicate(&self) -> Result<Self> {
        Err(unimpl("duplicate"))
    }
    fn binary(&self, rhs: &Self, op: BinaryOp) -> Result<Self> {
        Err(unimpl("binary"))
    }
    fn affine(&self, mul: f64, add: f64) -> Result<Self> {
        Err(unimpl("affine"))
    }
    fn unary(&self, op: UnaryOp) -> Result<Self> {
        Err(unimpl("unary"))
    }
    fn unary_backward(&self, dy: &Self, op: UnaryOp) -> Result<Self> {
        Err(unimpl("unary_backward"))
    }
    fn gated(&self, lin: &Self, act: UnaryOp) -> Result<Self> {
        Err(unimpl("gated"))
    }
    fn gated_backward(&self, lin: &Self, dy: &Self, act: UnaryOp) -> Result<(Self, Self)> {
        Err(unimpl("gated_backward"))
    }
    fn dropout(&self, p: f32, seed: u64) -> Result<Self> {
        Err(unimpl("dropout"))
    }
    fn add_bias(&self, bias: &Self, cols: usize) -> Result<Self> {
        Err(unimpl("add_bias"))
    }
    fn sum_rows(&self, cols: usize) -> Result<Self> {
        Err(unimpl("sum_rows"))
    }
    fn sum_all(&self) -> Result<Self> {
        Err(unimpl("sum_all"))
    }
    fn sum_sq(&self) -> Result<Self> {
        Err(unimpl("sum_sq"))
    }
    fn permute(&self, dims: &[usize], perm: &[usize]) -> Result<Self> {
        Err(unimpl("permute"))
    }
    fn narrow(&self, dims: &[usize], dim: usize, start: usize, len: usize) -> Result<Self> {
        Err(unimpl("narrow"))
    }
    fn cat(parts: &[&Self], dims: &[Vec<usize>], dim: usize) -> Result<Self> {
        Err(unimpl("cat"))
    }
    fn index_select(&self, ids: &Self, cols: usize) -> Result<Self> {
        Err(unimpl("index_select"))
    }
    fn index_add(&self /*dy*/, ids: &Self, n: usize, cols: usize) -> Result<Self> {
        Err(unimpl("index_add"))
    }
    fn axpy_(&mut self, x: &Self, alpha: f64) -> Result<()> {
        Err(unimpl("axpy_"))
    }
    fn scale_(&mut self, alpha: f64) -> Result<()> {
        Err(unimpl("scale_"))
    }
    fn copy_from_(&mut self, src: &Self) -> Result<()> {
        Err(unimpl("copy_from_"))
    }
    fn adamw_(
        &mut self,
        grad: &Self,
        m: &mut Self,
        v: &mut Self,
        working: Option<&mut Self>,
        hp: &AdamWStep,
    ) -> Result<bool> {
        Err(unimpl("adamw_"))
    }
    fn has_non_finite(&self) -> Result<bool> {
        Err(unimpl("has_non_finite"))
    }
    fn matmul(&self, rhs: &Self, spec: &MatmulSpec) -> Result<Self> {
        Err(unimpl("matmul"))
    }
    fn layer_norm(
        &self,
        gamma: &Self,
        beta: &Self,
        cols: usize,
        eps: f64,
    ) -> Result<(Self, Self, Self)> {
        Err(unimpl("layer_norm"))
    }
    fn layer_norm_backward(
        &self, /*x*/
        gamma: &Self,
        mean: &Self,
        rstd: &Self,
        dy: &Self,
        cols: usize,
    ) -> Result<(Self, Self, Self)> {
        Err(unimpl("layer_norm_backward"))
    }
    fn rms_norm(&self, gamma: &Self, cols: usize, eps: f64) -> Result<(Self, Self)> {
        Err(unimpl("rms_norm"))
    }
    fn rms_norm_backward(
        &self, /*x*/
        gamma: &Self,
        rstd: &Self,
        dy: &Self,
        cols: usize,
    ) -> Result<(Self, Self)> {
        Err(unimpl("rms_norm_backward"))
    }
    fn softmax(&self, cols: usize) -> Result<Self> {
        Err(unimpl("softmax"))
    }
    fn softmax_backward(&self, dy: &Self, cols: usize) -> Result<Self> {
        Err(unimpl("softmax_backward"))
    }
    fn log_softmax(&self, cols: usize) -> Result<Self> {
        Err(unimpl("log_softmax"))
    }
    fn cross_entropy(
        &self,
        targets: &Self,
        cols: usize,
        ignore_index: i32,
    ) -> Result<(Self, Self)> {
        Err(unimpl("cross_entropy"))
    }
    fn cross_entropy_backward(
        &self, /*logits*/
        targets: &Self,
        lse: &Self,
        dloss: &Self,
        cols: usize,
        ignore_index: i32,
    ) -> Result<Self> {
        Err(unimpl("cross_entropy_backward"))
    }
    fn argmax_last(&self, cols: usize) -> Result<Self> {
        Err(unimpl("argmax_last"))
    }
    fn attention(
        &self, /*q*/
        k: &Self,
        v: &Self,
        key_mask: Option<&Self>,
        bias: Option<&Self>,
        spec: &AttnSpec,
    ) -> Result<(Self, Self)> {
        Err(unimpl("attention"))
    }
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self, /*q*/
        k: &Self,
        v: &Self,
        out: &Self,
        lse: &Self,
        dout: &Self,
        key_mask: Option<&Self>,
        bias: Option<&Self>,
        spec: &AttnSpec,
    ) -> Result<(Self, Self, Self, Option<Self>)> {
        Err(unimpl("attention_backward"))
    }
    fn span_search(
        &self, /*start logits*/
        end_logits: &Self,
        allowed: &Self,
        cols: usize,
        max_len: usize,
        top_k: usize,
    ) -> Result<Vec<SpanCandidate>> {
        Err(unimpl("span_search"))
    }
}

/// Wait for all work queued on `device` (profiling, timing).
pub fn synchronize(_device: Device) -> Result<()> {
    Ok(())
}
