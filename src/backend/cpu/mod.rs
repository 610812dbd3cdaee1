//! The CPU reference backend: every primitive, forward and backward, in plain Rust with
//! rayon for parallel rows and the `gemm` crate for matrix products. F32 is the working
//! type; F64 exists so gradchecks can use central differences without f32 noise; F16
//! is storage only (load, save, cast).

use half::f16;

use crate::backend::{
    AdamWStep, AttnSpec, BackendStorage, BinaryOp, MatmulSpec, SpanCandidate, UnaryOp,
};
use crate::error::{Error, Result};
use crate::memory::tracker;
use crate::shape::{DType, Device};

/// The typed buffer inside a [`CpuStorage`].
#[derive(Clone, Debug)]
pub enum CpuData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    F64(Vec<f64>),
    I32(Vec<i32>),
}

impl CpuData {
    pub fn len(&self) -> usize {
        match self {
            CpuData::F32(v) => v.len(),
            CpuData::F16(v) => v.len(),
            CpuData::F64(v) => v.len(),
            CpuData::I32(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> DType {
        match self {
            CpuData::F32(_) => DType::F32,
            CpuData::F16(_) => DType::F16,
            CpuData::F64(_) => DType::F64,
            CpuData::I32(_) => DType::I32,
        }
    }
    fn bytes(&self) -> usize {
        self.len() * self.dtype().size_in_bytes()
    }
}

/// A host buffer, counted by `memory::tracker` from creation to drop.
#[derive(Debug)]
pub struct CpuStorage {
    data: CpuData,
}

impl CpuStorage {
    pub fn new(data: CpuData) -> CpuStorage {
        tracker::on_alloc(Device::Cpu, data.bytes());
        CpuStorage { data }
    }
    pub fn from_f32(v: Vec<f32>) -> CpuStorage {
        CpuStorage::new(CpuData::F32(v))
    }
    pub fn from_f64(v: Vec<f64>) -> CpuStorage {
        CpuStorage::new(CpuData::F64(v))
    }
    pub fn from_f16(v: Vec<f16>) -> CpuStorage {
        CpuStorage::new(CpuData::F16(v))
    }
    pub fn from_i32(v: Vec<i32>) -> CpuStorage {
        CpuStorage::new(CpuData::I32(v))
    }
    pub fn data(&self) -> &CpuData {
        &self.data
    }
    /// Mutable access for in-place ops. The length and dtype must not change.
    pub fn data_mut(&mut self) -> &mut CpuData {
        &mut self.data
    }
    /// Raw little-endian bytes (for safetensors save).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.data {
            CpuData::F32(v) => bytemuck::cast_slice(v),
            CpuData::F16(v) => bytemuck::cast_slice(v),
            CpuData::F64(v) => bytemuck::cast_slice(v),
            CpuData::I32(v) => bytemuck::cast_slice(v),
        }
    }
}

impl Drop for CpuStorage {
    fn drop(&mut self) {
        tracker::on_free(Device::Cpu, self.data.bytes());
    }
}

fn unimpl(op: &str) -> Error {
    Error::msg(format!("cpu backend: {op} is not implemented yet"))
}

#[allow(unused_variables)]
impl BackendStorage for CpuStorage {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn dtype(&self) -> DType {
        self.data.dtype()
    }
    fn len(&self) -> usize {
        self.data.len()
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
