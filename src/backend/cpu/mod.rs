//! The CPU reference backend: every primitive, forward and backward, in plain Rust with
//! rayon for parallel rows and the `gemm` crate for matrix products. F32 is the working
//! type; F64 exists so gradchecks can use central differences without f32 noise; F16
//! is storage only (load, save, cast, pure data movement).
//!
//! The math lives in one file per op family (same names as the CUDA kernels), written
//! once, generic over [`Real`] (f32 and f64); this file only owns the storage type and
//! routes each trait method to the family function for the buffer's dtype.

mod adamw;
mod attention;
mod elementwise;
mod embedding;
mod layout;
mod matmul;
mod norm;
mod softmax;
mod span;

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{AddAssign, MulAssign, SubAssign};

use half::f16;

use crate::backend::{
    AdamWStep, AttnSpec, BackendStorage, BinaryOp, MatmulSpec, SpanCandidate, UnaryOp,
};
use crate::error::{Error, Result};
use crate::memory::tracker;
use crate::shape::{DType, Device, Shape};

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

/// The float types the CPU backend computes in. One generic body per op keeps the f32
/// path (what users train on) and the f64 path (what gradchecks use) identical.
pub(crate) trait Real:
    num_traits::Float
    + Send
    + Sync
    + Debug
    + Default
    + Sum
    + AddAssign
    + SubAssign
    + MulAssign
    + 'static
{
    const DTYPE: DType;
    fn of(x: f64) -> Self;
    fn f64(self) -> f64;
    fn erf(self) -> Self;
    fn slice(d: &CpuData) -> Option<&[Self]>;
    fn slice_mut(d: &mut CpuData) -> Option<&mut [Self]>;
    fn wrap(v: Vec<Self>) -> CpuData;
}

impl Real for f32 {
    const DTYPE: DType = DType::F32;
    fn of(x: f64) -> f32 {
        x as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
    fn erf(self) -> f32 {
        libm::erff(self)
    }
    fn slice(d: &CpuData) -> Option<&[f32]> {
        match d {
            CpuData::F32(v) => Some(v),
            _ => None,
        }
    }
    fn slice_mut(d: &mut CpuData) -> Option<&mut [f32]> {
        match d {
            CpuData::F32(v) => Some(v),
            _ => None,
        }
    }
    fn wrap(v: Vec<f32>) -> CpuData {
        CpuData::F32(v)
    }
}

impl Real for f64 {
    const DTYPE: DType = DType::F64;
    fn of(x: f64) -> f64 {
        x
    }
    fn f64(self) -> f64 {
        self
    }
    fn erf(self) -> f64 {
        libm::erf(self)
    }
    fn slice(d: &CpuData) -> Option<&[f64]> {
        match d {
            CpuData::F64(v) => Some(v),
            _ => None,
        }
    }
    fn slice_mut(d: &mut CpuData) -> Option<&mut [f64]> {
        match d {
            CpuData::F64(v) => Some(v),
            _ => None,
        }
    }
    fn wrap(v: Vec<f64>) -> CpuData {
        CpuData::F64(v)
    }
}

/// Below this many elements an elementwise loop is not worth splitting across threads.
pub(crate) const PAR_MIN: usize = 1 << 14;

pub(crate) fn dtype_err(op: &'static str, expected: &'static str, got: DType) -> Error {
    Error::DType { op, expected, got }
}

/// A length mismatch, reported as the shape we got against what the op needed.
pub(crate) fn len_err(op: &'static str, what: &str, expected: usize, got: usize) -> Error {
    Error::Shape {
        op,
        expected: format!("{what} of {expected} elements"),
        got: Shape::new(&[got]),
    }
}

pub(crate) fn check_len(op: &'static str, what: &str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(len_err(op, what, expected, got))
    }
}

/// `len` must be a whole number of rows of `cols`; returns the row count.
pub(crate) fn rows_of(op: &'static str, len: usize, cols: usize) -> Result<usize> {
    if cols == 0 {
        return if len == 0 {
            Ok(0)
        } else {
            Err(Error::msg(format!(
                "{op}: cols is 0 for a buffer of {len} elements"
            )))
        };
    }
    if !len.is_multiple_of(cols) {
        return Err(Error::Shape {
            op,
            expected: format!("a multiple of {cols} elements (rows of {cols})"),
            got: Shape::new(&[len]),
        });
    }
    Ok(len / cols)
}

impl CpuStorage {
    /// The buffer as `&[T]`, or a dtype error naming `op`.
    pub(crate) fn floats<T: Real>(&self, op: &'static str) -> Result<&[T]> {
        T::slice(&self.data).ok_or_else(|| dtype_err(op, T::DTYPE.as_str(), self.dtype()))
    }
    pub(crate) fn floats_mut<T: Real>(&mut self, op: &'static str) -> Result<&mut [T]> {
        let got = self.dtype();
        T::slice_mut(&mut self.data).ok_or_else(|| dtype_err(op, T::DTYPE.as_str(), got))
    }
    pub(crate) fn ints(&self, op: &'static str) -> Result<&[i32]> {
        match &self.data {
            CpuData::I32(v) => Ok(v),
            d => Err(dtype_err(op, "i32", d.dtype())),
        }
    }
    pub(crate) fn from_real<T: Real>(v: Vec<T>) -> CpuStorage {
        CpuStorage::new(T::wrap(v))
    }
}

/// Run the generic family function for the dtype of `$dt` (F32 or F64); any other
/// dtype is a clear error naming the op.
macro_rules! float_op {
    ($op:literal, $dt:expr, $($f:ident)::+ ( $($arg:expr),* $(,)? )) => {
        match $dt {
            DType::F32 => $($f)::+::<f32>($($arg),*),
            DType::F64 => $($f)::+::<f64>($($arg),*),
            d => Err(dtype_err($op, "f32 or f64 (f16 is storage-only on the CPU)", d)),
        }
    };
}

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
        Ok(elementwise::full(len, dtype, 0.0))
    }
    fn full_like_dev(&self, len: usize, dtype: DType, value: f64) -> Result<Self> {
        Ok(elementwise::full(len, dtype, value))
    }
    fn to_vec_f32(&self) -> Result<Vec<f32>> {
        Ok(elementwise::to_vec_f32(&self.data))
    }
    fn to_vec_f64(&self) -> Result<Vec<f64>> {
        Ok(elementwise::to_vec_f64(&self.data))
    }
    fn to_vec_i32(&self) -> Result<Vec<i32>> {
        Ok(self.ints("to_vec_i32")?.to_vec())
    }
    fn to_cpu(&self) -> Result<CpuStorage> {
        self.duplicate()
    }
    fn cast(&self, dtype: DType) -> Result<Self> {
        Ok(CpuStorage::new(elementwise::cast(&self.data, dtype)))
    }
    fn duplicate(&self) -> Result<Self> {
        Ok(CpuStorage::new(self.data.clone()))
    }
    fn binary(&self, rhs: &Self, op: BinaryOp) -> Result<Self> {
        float_op!("binary", self.dtype(), elementwise::binary(self, rhs, op))
    }
    fn affine(&self, mul: f64, add: f64) -> Result<Self> {
        float_op!("affine", self.dtype(), elementwise::affine(self, mul, add))
    }
    fn unary(&self, op: UnaryOp) -> Result<Self> {
        float_op!("unary", self.dtype(), elementwise::unary(self, op))
    }
    fn unary_backward(&self, dy: &Self, op: UnaryOp) -> Result<Self> {
        float_op!(
            "unary_backward",
            self.dtype(),
            elementwise::unary_backward(self, dy, op)
        )
    }
    fn gated(&self, lin: &Self, act: UnaryOp) -> Result<Self> {
        float_op!("gated", self.dtype(), elementwise::gated(self, lin, act))
    }
    fn gated_backward(&self, lin: &Self, dy: &Self, act: UnaryOp) -> Result<(Self, Self)> {
        float_op!(
            "gated_backward",
            self.dtype(),
            elementwise::gated_backward(self, lin, dy, act)
        )
    }
    fn dropout(&self, p: f32, seed: u64) -> Result<Self> {
        float_op!("dropout", self.dtype(), elementwise::dropout(self, p, seed))
    }
    fn add_bias(&self, bias: &Self, cols: usize) -> Result<Self> {
        float_op!(
            "add_bias",
            self.dtype(),
            elementwise::add_bias(self, bias, cols)
        )
    }
    fn sum_rows(&self, cols: usize) -> Result<Self> {
        float_op!("sum_rows", self.dtype(), elementwise::sum_rows(self, cols))
    }
    fn sum_all(&self) -> Result<Self> {
        float_op!("sum_all", self.dtype(), elementwise::sum_all(self, false))
    }
    fn sum_sq(&self) -> Result<Self> {
        float_op!("sum_sq", self.dtype(), elementwise::sum_all(self, true))
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
    fn index_add(&self /*dy*/, ids: &Self, n: usize, cols: usize) -> Result<Self> {
        float_op!(
            "index_add",
            self.dtype(),
            embedding::index_add(self, ids, n, cols)
        )
    }
    fn axpy_(&mut self, x: &Self, alpha: f64) -> Result<()> {
        float_op!("axpy_", self.dtype(), elementwise::axpy_(self, x, alpha))
    }
    fn scale_(&mut self, alpha: f64) -> Result<()> {
        float_op!("scale_", self.dtype(), elementwise::scale_(self, alpha))
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
        float_op!(
            "adamw_",
            self.dtype(),
            adamw::adamw_(self, grad, m, v, working, hp)
        )
    }
    fn has_non_finite(&self) -> Result<bool> {
        Ok(elementwise::has_non_finite(&self.data))
    }
    fn matmul(&self, rhs: &Self, spec: &MatmulSpec) -> Result<Self> {
        float_op!("matmul", self.dtype(), matmul::matmul(self, rhs, spec))
    }
    fn layer_norm(
        &self,
        gamma: &Self,
        beta: &Self,
        cols: usize,
        eps: f64,
    ) -> Result<(Self, Self, Self)> {
        float_op!(
            "layer_norm",
            self.dtype(),
            norm::layer_norm(self, gamma, beta, cols, eps)
        )
    }
    fn layer_norm_backward(
        &self, /*x*/
        gamma: &Self,
        mean: &Self,
        rstd: &Self,
        dy: &Self,
        cols: usize,
    ) -> Result<(Self, Self, Self)> {
        float_op!(
            "layer_norm_backward",
            self.dtype(),
            norm::layer_norm_backward(self, gamma, mean, rstd, dy, cols)
        )
    }
    fn rms_norm(&self, gamma: &Self, cols: usize, eps: f64) -> Result<(Self, Self)> {
        float_op!(
            "rms_norm",
            self.dtype(),
            norm::rms_norm(self, gamma, cols, eps)
        )
    }
    fn rms_norm_backward(
        &self, /*x*/
        gamma: &Self,
        rstd: &Self,
        dy: &Self,
        cols: usize,
    ) -> Result<(Self, Self)> {
        float_op!(
            "rms_norm_backward",
            self.dtype(),
            norm::rms_norm_backward(self, gamma, rstd, dy, cols)
        )
    }
    fn softmax(&self, cols: usize) -> Result<Self> {
        float_op!("softmax", self.dtype(), softmax::softmax(self, cols, false))
    }
    fn softmax_backward(&self, dy: &Self, cols: usize) -> Result<Self> {
        float_op!(
            "softmax_backward",
            self.dtype(),
            softmax::softmax_backward(self, dy, cols)
        )
    }
    fn log_softmax(&self, cols: usize) -> Result<Self> {
        float_op!(
            "log_softmax",
            self.dtype(),
            softmax::softmax(self, cols, true)
        )
    }
    fn cross_entropy(
        &self,
        targets: &Self,
        cols: usize,
        ignore_index: i32,
    ) -> Result<(Self, Self)> {
        float_op!(
            "cross_entropy",
            self.dtype(),
            softmax::cross_entropy(self, targets, cols, ignore_index)
        )
    }
    fn cross_entropy_backward(
        &self, /*logits*/
        targets: &Self,
        lse: &Self,
        dloss: &Self,
        cols: usize,
        ignore_index: i32,
    ) -> Result<Self> {
        float_op!(
            "cross_entropy_backward",
            self.dtype(),
            softmax::cross_entropy_backward(self, targets, lse, dloss, cols, ignore_index)
        )
    }
    fn argmax_last(&self, cols: usize) -> Result<Self> {
        float_op!(
            "argmax_last",
            self.dtype(),
            softmax::argmax_last(self, cols)
        )
    }
    fn attention(
        &self, /*q*/
        k: &Self,
        v: &Self,
        key_mask: Option<&Self>,
        bias: Option<&Self>,
        spec: &AttnSpec,
    ) -> Result<(Self, Self)> {
        float_op!(
            "attention",
            self.dtype(),
            attention::attention(self, k, v, key_mask, bias, spec)
        )
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
        float_op!(
            "attention_backward",
            self.dtype(),
            attention::attention_backward(self, k, v, out, lse, dout, key_mask, bias, spec)
        )
    }
    fn span_search(
        &self, /*start logits*/
        end_logits: &Self,
        allowed: &Self,
        cols: usize,
        max_len: usize,
        top_k: usize,
    ) -> Result<Vec<SpanCandidate>> {
        float_op!(
            "span_search",
            self.dtype(),
            span::span_search(self, end_logits, allowed, cols, max_len, top_k)
        )
    }
}
