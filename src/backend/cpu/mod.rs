//! The CPU reference backend: every primitive, forward and backward, in plain Rust with
//! rayon for parallel rows and the `gemm` crate for matrix products. F32 is the working
//! type; F64 exists so gradchecks can use central differences without f32 noise; F16
//! runs as an emulation of the CUDA backend's fp16 path (`backend/emulate.rs`: widen to f32, run
//! the f32 body, round each output CUDA stores as f16), so fp16 models, and their
//! overflows, can be tested without a GPU.
//!
//! The math lives in one file per op family (same names as the CUDA kernels), written
//! once, generic over [`Real`] (f32 and f64); this file only owns the storage type and
//! routes each trait method to the family function for the buffer's dtype, or for F16 to
//! the emulation (`backend/emulate.rs`, shared with the meta device's CPU target).

mod adafactor;
mod adamw;
pub mod alloc;
mod attention;
mod elementwise;
mod embedding;
mod layout;
mod matmul;
mod norm;
pub mod path;
mod real;
mod residual_norm;
mod simd;
mod skinny;
mod softmax;
mod span;

use half::f16;

use crate::backend::composed;
use crate::backend::emulate;
use crate::backend::tracker;
use crate::backend::{
    AdafactorState, AdafactorStep, AdamWState, AdamWStep, AttnArgs, AttnSaved, BackendStorage,
    BinaryOp, LinearDims, MatmulSpec, ResidualNorm, SpanCandidate, UnaryOp,
};
use crate::error::{Error, Result};
use crate::shape::{DType, Device, Shape};
pub use matmul::{scratch_len, transpose_f32};
pub(crate) use real::Real;
pub use skinny::x_wt_f32;

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

/// A host buffer, counted by `backend::tracker` from creation to drop.
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
    fn is_f16(&self) -> bool {
        self.data.dtype() == DType::F16
    }
}

/// Run the generic family function for the dtype of `$dt`: F32 or F64 directly, F16 by
/// the `f16 => ..` emulation (the f32 function on widened operands); any other dtype is
/// a clear error naming the op.
macro_rules! float_op {
    ($op:expr, $dt:expr, $($f:ident)::+ ( $($arg:expr),* $(,)? ), f16 => $emu:expr) => {
        match $dt {
            DType::F32 => $($f)::+::<f32>($($arg),*),
            DType::F64 => $($f)::+::<f64>($($arg),*),
            DType::F16 => $emu,
            d => Err(dtype_err($op, "f32, f64 or f16", d)),
        }
    };
}

/// Attention forward for either q/k/v layout, in the storage's float type (f16 runs in f32).
fn attention_any(
    qkv: attention::Qkv<'_>,
    a: AttnArgs<'_, CpuStorage>,
) -> Result<(CpuStorage, CpuStorage)> {
    const OP: &str = "attention";
    float_op!(OP, qkv.q.dtype(), attention::attention(&qkv, a),
    f16 => if qkv.lay.is_packed() {
        emulate::attention_qkv(qkv.q, a)
    } else {
        emulate::attention(qkv.q, qkv.k, qkv.v, a)
    })
}

/// Attention backward for either layout (f16 runs in f32).
fn attention_backward_any(
    qkv: attention::Qkv<'_>,
    saved: AttnSaved<'_, CpuStorage>,
    a: AttnArgs<'_, CpuStorage>,
) -> Result<(attention::QkvGrads, Option<CpuStorage>)> {
    const OP: &str = "attention_backward";
    float_op!(OP, qkv.q.dtype(), attention::attention_backward(&qkv, saved, a),
    f16 => if qkv.lay.is_packed() {
        let (d, db) = emulate::attention_qkv_backward(qkv.q, saved, a)?;
        Ok((attention::QkvGrads::Packed(d), db))
    } else {
        let (dq, dk, dv, db) = emulate::attention_backward(qkv.q, qkv.k, qkv.v, saved, a)?;
        Ok((attention::QkvGrads::Separate(dq, dk, dv), db))
    })
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
        const OP: &str = "binary";
        float_op!(OP, self.dtype(), elementwise::binary(self, rhs, op),
            f16 => emulate::binary(self, rhs, op))
    }
    fn affine(&self, mul: f64, add: f64) -> Result<Self> {
        float_op!("affine", self.dtype(), elementwise::affine(self, mul, add),
            f16 => emulate::affine(self, mul, add))
    }
    fn unary(&self, op: UnaryOp) -> Result<Self> {
        float_op!("unary", self.dtype(), elementwise::unary(self, op),
            f16 => emulate::unary(self, op))
    }
    fn unary_backward(&self, dy: &Self, op: UnaryOp) -> Result<Self> {
        const OP: &str = "unary_backward";
        float_op!(OP, self.dtype(), elementwise::unary_backward(self, dy, op),
            f16 => emulate::unary_backward(self, dy, op))
    }
    fn gated(&self, lin: &Self, act: UnaryOp) -> Result<Self> {
        const OP: &str = "gated";
        float_op!(OP, self.dtype(), elementwise::gated(self, lin, act),
            f16 => emulate::gated(self, lin, act))
    }
    fn gated_backward(&self, lin: &Self, dy: &Self, act: UnaryOp) -> Result<(Self, Self)> {
        const OP: &str = "gated_backward";
        float_op!(OP, self.dtype(), elementwise::gated_backward(self, lin, dy, act),
            f16 => emulate::gated_backward(self, lin, dy, act))
    }
    fn dropout(&self, p: f32, seed: u64) -> Result<Self> {
        float_op!("dropout", self.dtype(), elementwise::dropout(self, p, seed),
            f16 => emulate::dropout(self, p, seed))
    }
    fn add_bias(&self, bias: &Self, cols: usize) -> Result<Self> {
        const OP: &str = "add_bias";
        float_op!(OP, self.dtype(), elementwise::add_bias(self, bias, cols),
            f16 => emulate::add_bias(self, bias, cols))
    }
    fn sum_rows(&self, cols: usize) -> Result<Self> {
        float_op!("sum_rows", self.dtype(), elementwise::sum_rows(self, cols),
            f16 => emulate::sum_rows(self, cols))
    }
    fn sum_all(&self) -> Result<Self> {
        // CUDA keeps the sum in the input's dtype.
        float_op!("sum_all", self.dtype(), elementwise::sum_all(self, false),
            f16 => emulate::sum_all(self))
    }
    fn sum_sq(&self) -> Result<Self> {
        // Always f32 on CUDA: it feeds gradient-norm clipping, where f16 overflows.
        float_op!("sum_sq", self.dtype(), elementwise::sum_all(self, true),
            f16 => emulate::sum_sq(self))
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
    fn index_add(
        &self, /*dy*/
        ids: &Self,
        n: usize,
        cols: usize,
        skip: Option<usize>,
    ) -> Result<Self> {
        float_op!("index_add", self.dtype(), embedding::index_add(self, ids, n, cols, skip),
            f16 => emulate::index_add(self, ids, n, cols, skip))
    }
    fn axpy_(&mut self, x: &Self, alpha: f64) -> Result<()> {
        // CUDA has every (y, x) pair of f32 and f16: f16 gradients accumulate into f32.
        if x.is_f16() && self.dtype() == DType::F32 {
            return emulate::axpy_(self, x, alpha);
        }
        float_op!("axpy_", self.dtype(), elementwise::axpy_(self, x, alpha),
            f16 => emulate::axpy_(self, x, alpha))
    }
    fn scale_(&mut self, alpha: f64) -> Result<()> {
        float_op!("scale_", self.dtype(), elementwise::scale_(self, alpha),
            f16 => emulate::scale_(self, alpha))
    }
    fn copy_from_(&mut self, src: &Self) -> Result<()> {
        elementwise::copy_from_(self, src)
    }
    fn adamw_(&mut self, grad: &Self, st: AdamWState<'_, Self>, hp: &AdamWStep) -> Result<bool> {
        // As on CUDA: the master (and moments) are never f16; an f16 gradient is read as
        // f32 (exact), and `working` may be the f16 copy the model computes with.
        if grad.is_f16() {
            return emulate::adamw_(self, grad, st, hp);
        }
        float_op!("adamw_", self.dtype(), adamw::adamw_(self, grad, st, hp),
            f16 => Err(dtype_err("adamw_", "f32 or f64 master weights", DType::F16)))
    }
    fn adafactor_(
        &mut self,
        grad: &Self,
        st: AdafactorState<'_, Self>,
        hp: &AdafactorStep,
    ) -> Result<Option<f64>> {
        // As adamw_: f32/f64 masters and state, an f16 gradient read as f32.
        if grad.is_f16() {
            return emulate::adafactor_(self, grad, st, hp);
        }
        float_op!("adafactor_", self.dtype(), adafactor::adafactor_(self, grad, st, hp),
            f16 => Err(dtype_err("adafactor_", "f32 or f64 master weights", DType::F16)))
    }
    fn has_non_finite(&self) -> Result<bool> {
        Ok(elementwise::has_non_finite(&self.data))
    }
    fn clamp_i32(&self, lo: i32, hi: i32) -> Result<Self> {
        match &self.data {
            CpuData::I32(v) => Ok(CpuStorage::new(CpuData::I32(
                v.iter().map(|&x| x.clamp(lo, hi)).collect(),
            ))),
            _ => Err(dtype_err("clamp_i32", "i32", self.dtype())),
        }
    }
    fn matmul(&self, rhs: &Self, spec: &MatmulSpec) -> Result<Self> {
        float_op!("matmul", self.dtype(), matmul::matmul(self, rhs, spec),
            f16 => emulate::matmul(self, rhs, spec))
    }
    fn linear_bias(&self, w: &Self, bias: &Self, dims: LinearDims) -> Result<Self> {
        float_op!("linear_bias", self.dtype(), matmul::linear_bias(self, w, bias, dims),
            f16 => crate::backend::composed::linear_bias(self, w, bias, dims))
    }
    fn matmul_out(&self, rhs: &Self, spec: &MatmulSpec, out: DType) -> Result<Self> {
        const OP: &str = "matmul_out";
        match (self.dtype(), out) {
            (a, o) if a == o => self.matmul(rhs, spec),
            // cuBLAS GemmEx: f16 A and B, f32 C, f32 accumulation: no f16 rounding of C.
            (DType::F16, DType::F32) => emulate::matmul_f32_out(self, rhs, spec),
            (_, o) => Err(dtype_err(
                OP,
                "the operands' dtype, or f32 for f16 operands",
                o,
            )),
        }
    }
    fn layer_norm(
        &self,
        gamma: &Self,
        beta: &Self,
        cols: usize,
        eps: f64,
    ) -> Result<(Self, Self, Self)> {
        const OP: &str = "layer_norm";
        float_op!(OP, self.dtype(), norm::layer_norm(self, gamma, beta, cols, eps),
        f16 => emulate::layer_norm(self, gamma, beta, cols, eps))
    }
    fn layer_norm_backward(
        &self, /*x*/
        gamma: &Self,
        mean: &Self,
        rstd: &Self,
        dy: &Self,
        cols: usize,
    ) -> Result<(Self, Self, Self)> {
        const OP: &str = "layer_norm_backward";
        float_op!(OP, self.dtype(), norm::layer_norm_backward(self, gamma, mean, rstd, dy, cols),
        f16 => emulate::layer_norm_backward(self, gamma, mean, rstd, dy, cols))
    }
    #[rustfmt::skip]
    fn dropout_add_layer_norm(&self, res: &Self, gamma: &Self, beta: &Self, rn: ResidualNorm)
        -> Result<(Self, Self, Self, Self)> {
        const OP: &str = "dropout_add_layer_norm";
        float_op!(OP, self.dtype(), residual_norm::dropout_add_layer_norm(self, res, gamma, beta, rn),
        f16 => composed::dropout_add_layer_norm(self, res, gamma, beta, rn))
    }
    fn rms_norm(&self, gamma: &Self, cols: usize, eps: f64) -> Result<(Self, Self)> {
        const OP: &str = "rms_norm";
        float_op!(OP, self.dtype(), norm::rms_norm(self, gamma, cols, eps),
        f16 => emulate::rms_norm(self, gamma, cols, eps))
    }
    fn rms_norm_backward(
        &self, /*x*/
        gamma: &Self,
        rstd: &Self,
        dy: &Self,
        cols: usize,
    ) -> Result<(Self, Self)> {
        const OP: &str = "rms_norm_backward";
        float_op!(OP, self.dtype(), norm::rms_norm_backward(self, gamma, rstd, dy, cols),
            f16 => emulate::rms_norm_backward(self, gamma, rstd, dy, cols))
    }
    fn softmax(&self, cols: usize) -> Result<Self> {
        float_op!("softmax", self.dtype(), softmax::softmax(self, cols, false),
            f16 => emulate::softmax(self, cols))
    }
    fn softmax_backward(&self, dy: &Self, cols: usize) -> Result<Self> {
        const OP: &str = "softmax_backward";
        float_op!(OP, self.dtype(), softmax::softmax_backward(self, dy, cols),
            f16 => emulate::softmax_backward(self, dy, cols))
    }
    fn log_softmax(&self, cols: usize) -> Result<Self> {
        float_op!("log_softmax", self.dtype(), softmax::softmax(self, cols, true),
            f16 => emulate::log_softmax(self, cols))
    }
    fn cross_entropy(
        &self,
        targets: &Self,
        cols: usize,
        ignore_index: i32,
    ) -> Result<(Self, Self)> {
        // Loss and lse stay f32 for f16 logits, as on CUDA (a scaled loss fits in f32).
        float_op!("cross_entropy", self.dtype(),
            softmax::cross_entropy(self, targets, cols, ignore_index),
            f16 => emulate::cross_entropy(self, targets, cols, ignore_index))
    }
    fn cross_entropy_backward(
        &self, /*logits*/
        targets: &Self,
        lse: &Self,
        dloss: &Self,
        cols: usize,
        ignore_index: i32,
    ) -> Result<Self> {
        const OP: &str = "cross_entropy_backward";
        float_op!(OP, self.dtype(),
            softmax::cross_entropy_backward(self, targets, lse, dloss, cols, ignore_index),
            f16 => emulate::cross_entropy_backward(self, targets, lse, dloss, cols, ignore_index))
    }
    fn argmax_last(&self, cols: usize) -> Result<Self> {
        float_op!("argmax_last", self.dtype(), softmax::argmax_last(self, cols),
            f16 => emulate::argmax_last(self, cols))
    }
    fn attention(&self, k: &Self, v: &Self, a: AttnArgs<'_, Self>) -> Result<(Self, Self)> {
        let lay = attention::Layout::separate(&a.spec);
        attention_any(attention::Qkv { q: self, k, v, lay }, a)
    }
    fn attention_backward(
        &self, /*q*/
        k: &Self,
        v: &Self,
        saved: AttnSaved<'_, Self>,
        a: AttnArgs<'_, Self>,
    ) -> Result<(Self, Self, Self, Option<Self>)> {
        let lay = attention::Layout::separate(&a.spec);
        match attention_backward_any(attention::Qkv { q: self, k, v, lay }, saved, a)? {
            (attention::QkvGrads::Separate(dq, dk, dv), db) => Ok((dq, dk, dv, db)),
            (attention::QkvGrads::Packed(_), _) => Err(Error::msg(
                "attention_backward: packed gradients for separate q, k, v",
            )),
        }
    }
    fn attention_qkv(&self, a: AttnArgs<'_, Self>) -> Result<(Self, Self)> {
        attention_any(attention::Qkv::packed(self, &a.spec), a)
    }
    fn attention_qkv_backward(
        &self,
        saved: AttnSaved<'_, Self>,
        a: AttnArgs<'_, Self>,
    ) -> Result<(Self, Option<Self>)> {
        match attention_backward_any(attention::Qkv::packed(self, &a.spec), saved, a)? {
            (attention::QkvGrads::Packed(dqkv), db) => Ok((dqkv, db)),
            (attention::QkvGrads::Separate(..), _) => Err(Error::msg(
                "attention_qkv_backward: separate gradients for packed q, k, v",
            )),
        }
    }
    fn span_search(
        &self, /*start logits*/
        end_logits: &Self,
        allowed: &Self,
        cols: usize,
        max_len: usize,
        top_k: usize,
    ) -> Result<Vec<SpanCandidate>> {
        const OP: &str = "span_search";
        float_op!(OP, self.dtype(),
            span::span_search(self, end_logits, allowed, cols, max_len, top_k),
            f16 => emulate::span_search(self, end_logits, allowed, cols, max_len, top_k))
    }
}

/// The F16 emulation (`backend/emulate.rs`) on the CPU against its definition.
#[cfg(test)]
#[path = "emulate_tests.rs"]
mod emulate_tests;
