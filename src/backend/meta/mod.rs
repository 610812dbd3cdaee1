//! The meta backend: buffers that hold a length and a dtype, no data, and compute
//! nothing — PyTorch's `meta` device, for the VRAM planner.
//!
//! Why it exists: the planner must know the peak bytes of a training step before the
//! step runs, for any model, optimizer or memory trick. Rather than a second,
//! hand-written copy of every model at byte level (which drifts from the real code), the
//! planner runs the real step (`crate::plan`) on this device. Every primitive here
//! allocates, through the byte tracker, exactly the buffers its *target* backend would
//! allocate for the same call — outputs in the same dtypes, and the scratch the target
//! takes, at the same moment — so the tape, the models and the optimizer are the real
//! ones and only the innermost layer is stood in for. Where a target takes workspace,
//! the size comes from one function of that backend's own code (e.g.
//! `cuda::attention_fused::backward_scratch`, `cuda::reduce::col_chunk`,
//! `cuda::adamw_multi::scratch`, `cuda::adafactor::scratch`), which the backend itself
//! allocates from.
//!
//! The CPU target is held to the byte against the tracker by tests/budget.rs, fp16
//! included: an f16 op on the CPU target runs the CPU's own emulation
//! (`backend/emulate.rs`, one copy for both), so its f32 copies are allocated here as
//! the CPU allocates them (CUDA makes no such copies). Not modelled: on CUDA, whether
//! cuBLASLt finds an algorithm for a shape on a given card (assumed it does, as on every
//! card measured).
//!
//! Host reads are no-ops: `to_vec_*` give zeros of the right length (a loss value, an id
//! range check, the scaler's overflow check all see a clean step), span search finds
//! nothing. Copying a meta buffer to a real device is an error: there is no data.

mod attention;

use crate::backend::{
    composed, cuda, emulate, tracker, AdamWMultiOutcome, AdamWMultiStep, AdamWState, AdamWStep,
    AttnArgs, AttnSaved, BackendStorage, BinaryOp, CpuStorage, LinearDims, MatmulSpec, MultiTensor,
    SpanCandidate, UnaryOp,
};
use crate::backend::{AdafactorMultiStep, AdafactorMultiTensor, AdafactorOutcome};
use crate::backend::{AdafactorState, AdafactorStep, ResidualNorm};
use crate::error::{Error, Result};
use crate::shape::{DType, Device, Target};

/// A buffer of `len` elements of `dtype` as `target` would hold it, counted by the
/// tracker (on `Device::Meta(target)`) from creation to drop.
#[derive(Debug)]
pub struct MetaStorage {
    len: usize,
    dtype: DType,
    target: Target,
}

impl MetaStorage {
    pub fn new(len: usize, dtype: DType, target: Target) -> MetaStorage {
        tracker::on_alloc(Device::Meta(target), len * dtype.size_in_bytes());
        MetaStorage { len, dtype, target }
    }

    /// A new buffer on the same target.
    fn out(&self, len: usize, dtype: DType) -> MetaStorage {
        MetaStorage::new(len, dtype, self.target)
    }

    /// Same length and dtype as `self`.
    fn like(&self) -> MetaStorage {
        self.out(self.len, self.dtype)
    }

    fn cuda(&self) -> bool {
        self.target == Target::Cuda
    }

    /// An f16 buffer on the CPU target, whose ops are the CPU's f16 emulation.
    fn emulates(&self) -> bool {
        !self.cuda() && self.dtype == DType::F16
    }

    /// Buffers allocated in order and released together: a primitive's transient
    /// scratch, alive beside whatever the caller holds at that moment.
    fn scratch(&self, parts: &[(usize, DType)]) {
        let held: Vec<MetaStorage> = parts.iter().map(|&(n, t)| self.out(n, t)).collect();
        drop(held);
    }

    /// Norm statistics, lse and the CPU's loss: f32, f64 for f64 inputs (the CPU's f16
    /// emulation keeps them f32, as the CUDA kernels do).
    fn stat(&self) -> DType {
        if self.dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        }
    }

    /// CUDA's two-stage column reduction over `rows` keeps one f32 partial per chunk and
    /// column (`cuda::reduce::col_chunk`); the CPU sums in place.
    fn col_partials(&self, rows: usize, cols: usize) -> (usize, DType) {
        let n = if self.cuda() {
            cuda::reduce::col_chunk(rows).1 * cols
        } else {
            0
        };
        (n, DType::F32)
    }

    /// A matmul's result; on the CPU target, after the scratch the CPU takes for some
    /// shapes (`cpu::scratch_len`), which stays alive until the result exists.
    fn product(&self, spec: &MatmulSpec, dtype: DType) -> MetaStorage {
        let len = (!self.cuda()).then(|| crate::backend::cpu::scratch_len(spec));
        let copy = len.filter(|&n| n > 0).map(|n| self.out(n, self.dtype));
        let out = self.out(spec.batch * spec.m * spec.n, dtype);
        drop(copy);
        out
    }

    fn rows(&self, cols: usize) -> usize {
        self.len.checked_div(cols).unwrap_or(0)
    }
}

impl Drop for MetaStorage {
    fn drop(&mut self) {
        tracker::on_free(
            Device::Meta(self.target),
            self.len * self.dtype.size_in_bytes(),
        );
    }
}

/// On the CPU target, an f16 op is the CPU's emulation: `emulate::$f` over meta buffers.
macro_rules! cpu_f16 {
    ($s:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        if $s.emulates() {
            return emulate::$f($($arg),*);
        }
    };
}

fn no_data(op: &'static str) -> Error {
    Error::msg(format!(
        "{op}: a meta tensor holds shapes only, no data (it plans memory)"
    ))
}

impl BackendStorage for MetaStorage {
    fn device(&self) -> Device {
        Device::Meta(self.target)
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.len
    }
    fn zeros_like_dev(&self, len: usize, dtype: DType) -> Result<Self> {
        Ok(self.out(len, dtype))
    }
    fn full_like_dev(&self, len: usize, dtype: DType, _value: f64) -> Result<Self> {
        Ok(self.out(len, dtype))
    }
    fn to_vec_f32(&self) -> Result<Vec<f32>> {
        Ok(vec![0.0; self.len])
    }
    fn to_vec_f64(&self) -> Result<Vec<f64>> {
        Ok(vec![0.0; self.len])
    }
    fn to_vec_i32(&self) -> Result<Vec<i32>> {
        Ok(vec![0; self.len])
    }
    fn to_cpu(&self) -> Result<CpuStorage> {
        Err(no_data("to_cpu"))
    }
    fn cast(&self, dtype: DType) -> Result<Self> {
        Ok(self.out(self.len, dtype))
    }
    fn duplicate(&self) -> Result<Self> {
        Ok(self.like())
    }
    fn binary(&self, _rhs: &Self, _op: BinaryOp) -> Result<Self> {
        cpu_f16!(self, binary(self, _rhs, _op));
        Ok(self.like())
    }
    fn affine(&self, _mul: f64, _add: f64) -> Result<Self> {
        cpu_f16!(self, affine(self, _mul, _add));
        Ok(self.like())
    }
    fn unary(&self, _op: UnaryOp) -> Result<Self> {
        cpu_f16!(self, unary(self, _op));
        Ok(self.like())
    }
    fn unary_backward(&self, _dy: &Self, _op: UnaryOp) -> Result<Self> {
        cpu_f16!(self, unary_backward(self, _dy, _op));
        Ok(self.like())
    }
    fn gated(&self, _lin: &Self, _act: UnaryOp) -> Result<Self> {
        cpu_f16!(self, gated(self, _lin, _act));
        Ok(self.like())
    }
    fn gated_backward(&self, _lin: &Self, _dy: &Self, _act: UnaryOp) -> Result<(Self, Self)> {
        cpu_f16!(self, gated_backward(self, _lin, _dy, _act));
        Ok((self.like(), self.like()))
    }
    fn dropout(&self, _p: f32, _seed: u64) -> Result<Self> {
        cpu_f16!(self, dropout(self, _p, _seed));
        Ok(self.like())
    }
    fn add_bias(&self, _bias: &Self, _cols: usize) -> Result<Self> {
        cpu_f16!(self, add_bias(self, _bias, _cols));
        Ok(self.like())
    }
    fn sum_rows(&self, cols: usize) -> Result<Self> {
        cpu_f16!(self, sum_rows(self, cols));
        let out = self.out(cols, self.dtype);
        self.scratch(&[self.col_partials(self.rows(cols), cols)]);
        Ok(out)
    }
    fn sum_all(&self) -> Result<Self> {
        cpu_f16!(self, sum_all(self));
        self.sum_of(false)
    }
    fn sum_sq(&self) -> Result<Self> {
        cpu_f16!(self, sum_sq(self));
        self.sum_of(true)
    }
    fn permute(&self, _dims: &[usize], _perm: &[usize]) -> Result<Self> {
        Ok(self.like())
    }
    fn narrow(&self, dims: &[usize], dim: usize, _start: usize, len: usize) -> Result<Self> {
        let full = dims.get(dim).copied().unwrap_or(0);
        let part = self.len.checked_div(full).unwrap_or(0) * len;
        Ok(self.out(part, self.dtype))
    }
    fn cat(parts: &[&Self], _dims: &[Vec<usize>], _dim: usize) -> Result<Self> {
        let first = parts.first().ok_or_else(|| Error::msg("cat: no tensors"))?;
        Ok(first.out(parts.iter().map(|p| p.len).sum(), first.dtype))
    }
    fn index_select(&self, ids: &Self, cols: usize) -> Result<Self> {
        Ok(self.out(ids.len * cols, self.dtype))
    }
    fn index_add(
        &self, /*dy*/
        _ids: &Self,
        n: usize,
        cols: usize,
        _skip: Option<usize>,
    ) -> Result<Self> {
        cpu_f16!(self, index_add(self, _ids, n, cols, _skip));
        // CUDA scatters into an f32 accumulator, which is the result for f32 and is
        // cast (a second buffer) otherwise.
        if self.cuda() && self.dtype != DType::F32 {
            let acc = self.out(n * cols, DType::F32);
            let out = self.out(n * cols, self.dtype);
            drop(acc);
            return Ok(out);
        }
        Ok(self.out(n * cols, self.dtype))
    }
    fn axpy_(&mut self, x: &Self, alpha: f64) -> Result<()> {
        // The CPU widens an f16 `x` (and an f16 `self`, in place) to f32 copies.
        let wide_x = !self.cuda() && x.dtype == DType::F16 && self.dtype == DType::F32;
        if self.emulates() || wide_x {
            return emulate::axpy_(self, x, alpha);
        }
        Ok(())
    }
    fn scale_(&mut self, _alpha: f64) -> Result<()> {
        cpu_f16!(self, scale_(self, _alpha));
        Ok(())
    }
    fn copy_from_(&mut self, _src: &Self) -> Result<()> {
        Ok(())
    }
    fn adamw_(&mut self, grad: &Self, st: AdamWState<'_, Self>, hp: &AdamWStep) -> Result<bool> {
        if grad.emulates() {
            return emulate::adamw_(self, grad, st, hp);
        }
        // CUDA's per-tensor check keeps a one-word flag while the step runs.
        if self.cuda() && hp.check_finite {
            self.scratch(&[(1, DType::I32)]);
        }
        Ok(false)
    }
    fn adafactor_(
        &mut self,
        grad: &Self,
        st: AdafactorState<'_, Self>,
        hp: &AdafactorStep,
    ) -> Result<Option<f64>> {
        if grad.emulates() {
            return emulate::adafactor_(self, grad, st, hp);
        }
        // CUDA's per-tensor step: the uploaded decision words, then its scratch.
        if self.cuda() {
            self.adafactor_scratch(&[(self.len, st.rows_cols)], false)?;
        }
        Ok(hp.report_lr.then_some(0.0))
    }
    fn has_non_finite(&self) -> Result<bool> {
        if self.cuda() {
            self.scratch(&[(1, DType::I32)]);
        }
        Ok(false)
    }
    fn clamp_i32(&self, _lo: i32, _hi: i32) -> Result<Self> {
        Ok(self.out(self.len, DType::I32))
    }
    fn matmul(&self, _rhs: &Self, spec: &MatmulSpec) -> Result<Self> {
        cpu_f16!(self, matmul(self, _rhs, spec));
        Ok(self.product(spec, self.dtype))
    }
    fn matmul_out(&self, rhs: &Self, spec: &MatmulSpec, out: DType) -> Result<Self> {
        if self.emulates() && out == DType::F32 {
            return emulate::matmul_f32_out(self, rhs, spec);
        }
        cpu_f16!(self, matmul(self, rhs, spec));
        Ok(self.product(spec, out))
    }
    fn layer_norm(
        &self,
        _gamma: &Self,
        _beta: &Self,
        cols: usize,
        _eps: f64,
    ) -> Result<(Self, Self, Self)> {
        cpu_f16!(self, layer_norm(self, _gamma, _beta, cols, _eps));
        let rows = self.rows(cols);
        Ok((
            self.like(),
            self.out(rows, self.stat()),
            self.out(rows, self.stat()),
        ))
    }
    fn layer_norm_backward(
        &self, /*x*/
        _gamma: &Self,
        _mean: &Self,
        _rstd: &Self,
        _dy: &Self,
        cols: usize,
    ) -> Result<(Self, Self, Self)> {
        cpu_f16!(
            self,
            layer_norm_backward(self, _gamma, _mean, _rstd, _dy, cols)
        );
        let dx = self.like();
        let (dg, db) = (self.out(cols, self.dtype), self.out(cols, self.dtype));
        let part = self.col_partials(self.rows(cols), cols);
        self.scratch(&[part, part]);
        Ok((dx, dg, db))
    }
    fn rms_norm(&self, _gamma: &Self, cols: usize, _eps: f64) -> Result<(Self, Self)> {
        cpu_f16!(self, rms_norm(self, _gamma, cols, _eps));
        Ok((self.like(), self.out(self.rows(cols), self.stat())))
    }
    fn rms_norm_backward(
        &self, /*x*/
        _gamma: &Self,
        _rstd: &Self,
        _dy: &Self,
        cols: usize,
    ) -> Result<(Self, Self)> {
        cpu_f16!(self, rms_norm_backward(self, _gamma, _rstd, _dy, cols));
        let (dx, dg) = (self.like(), self.out(cols, self.dtype));
        self.scratch(&[self.col_partials(self.rows(cols), cols)]);
        Ok((dx, dg))
    }
    fn softmax(&self, _cols: usize) -> Result<Self> {
        cpu_f16!(self, softmax(self, _cols));
        Ok(self.like())
    }
    fn softmax_backward(&self, _dy: &Self, _cols: usize) -> Result<Self> {
        cpu_f16!(self, softmax_backward(self, _dy, _cols));
        Ok(self.like())
    }
    fn log_softmax(&self, _cols: usize) -> Result<Self> {
        cpu_f16!(self, log_softmax(self, _cols));
        Ok(self.like())
    }
    fn cross_entropy(
        &self,
        _targets: &Self,
        cols: usize,
        _ignore_index: i32,
    ) -> Result<(Self, Self)> {
        cpu_f16!(self, cross_entropy(self, _targets, cols, _ignore_index));
        let rows = self.rows(cols);
        if !self.cuda() {
            // The CPU: the loss in the logits' float type (f32 for f16), the lse.
            return Ok((self.out(1, self.stat()), self.out(rows, self.stat())));
        }
        // backend/cuda/softmax.rs: per-row losses and the lse, then the f32 mean and the
        // count of non-ignored rows; the per-row losses and the count are dropped.
        let row_loss = self.out(rows, DType::F32);
        let lse = self.out(rows, DType::F32);
        let loss = self.out(1, DType::F32);
        let count = self.out(1, DType::F32);
        drop((row_loss, count));
        Ok((loss, lse))
    }
    fn cross_entropy_backward(
        &self, /*logits*/
        _targets: &Self,
        _lse: &Self,
        _dloss: &Self,
        cols: usize,
        _ignore_index: i32,
    ) -> Result<Self> {
        cpu_f16!(
            self,
            cross_entropy_backward(self, _targets, _lse, _dloss, cols, _ignore_index)
        );
        if !self.cuda() {
            return Ok(self.like());
        }
        // CUDA recounts the non-ignored rows from a zeroed per-row buffer (a mean and a
        // count beside it) before the gradient.
        let rows = self.rows(cols);
        let held =
            [(rows, DType::F32), (1, DType::F32), (1, DType::F32)].map(|(n, t)| self.out(n, t));
        let dx = self.like();
        drop(held);
        Ok(dx)
    }
    fn argmax_last(&self, cols: usize) -> Result<Self> {
        cpu_f16!(self, argmax_last(self, cols));
        Ok(self.out(self.rows(cols), DType::I32))
    }
    fn attention(&self, k: &Self, v: &Self, a: AttnArgs<'_, Self>) -> Result<(Self, Self)> {
        cpu_f16!(self, attention(self, k, v, a));
        attention::forward(self, k, v, a.bias.is_some(), &a.spec)
    }
    fn attention_backward(
        &self, /*q*/
        k: &Self,
        v: &Self,
        _saved: AttnSaved<'_, Self>,
        a: AttnArgs<'_, Self>,
    ) -> Result<(Self, Self, Self, Option<Self>)> {
        cpu_f16!(self, attention_backward(self, k, v, _saved, a));
        attention::backward(self, k, v, a.bias.is_some(), &a.spec)
    }
    fn attention_qkv(&self, a: AttnArgs<'_, Self>) -> Result<(Self, Self)> {
        cpu_f16!(self, attention_qkv(self, a));
        attention::forward_packed(self, a.bias.is_some(), &a.spec)
    }
    fn attention_qkv_backward(
        &self,
        _saved: AttnSaved<'_, Self>,
        a: AttnArgs<'_, Self>,
    ) -> Result<(Self, Option<Self>)> {
        cpu_f16!(self, attention_qkv_backward(self, _saved, a));
        attention::backward_packed(self, a.bias.is_some(), &a.spec)
    }
    fn span_search(
        &self,
        _end_logits: &Self,
        _allowed: &Self,
        _cols: usize,
        _max_len: usize,
        _top_k: usize,
    ) -> Result<Vec<SpanCandidate>> {
        cpu_f16!(
            self,
            span_search(self, _end_logits, _allowed, _cols, _max_len, _top_k)
        );
        Ok(Vec::new())
    }

    fn linear_bias(&self, w: &Self, bias: &Self, dims: LinearDims) -> Result<Self> {
        if self.lt_epilogue(dims) {
            return Ok(self.out(dims.rows * dims.out_f, self.dtype));
        }
        if !self.cuda() && !self.emulates() {
            // The CPU's GEMM adds into the bias rows (cpu/matmul.rs): a matmul's buffers.
            let spec = MatmulSpec::linear(dims.rows, dims.out_f, dims.in_f);
            return Ok(self.product(&spec, self.dtype));
        }
        composed::linear_bias(self, w, bias, dims)
    }
    fn linear_wgrad_bgrad(&self, /*dy*/ x: &Self, dims: LinearDims) -> Result<(Self, Self)> {
        if self.lt_epilogue(dims) {
            return Ok((
                self.out(dims.out_f * dims.in_f, self.dtype),
                self.out(dims.out_f, self.dtype),
            ));
        }
        composed::linear_wgrad_bgrad(self, x, dims)
    }
    fn dropout_add_layer_norm(
        &self,
        res: &Self,
        gamma: &Self,
        beta: &Self,
        rn: ResidualNorm,
    ) -> Result<(Self, Self, Self, Self)> {
        if self.emulates() {
            return composed::dropout_add_layer_norm(self, res, gamma, beta, rn);
        }
        // One pass: y, the sum, mean and rstd (backend/cuda/norm.rs, cpu/residual_norm.rs);
        // the statistics in f32 on CUDA, in the input's type on the CPU.
        let rows = self.rows(rn.cols);
        let stat = if self.cuda() { DType::F32 } else { self.dtype };
        let (y, s) = (self.like(), self.like());
        let (m, r) = (self.out(rows, stat), self.out(rows, stat));
        Ok((y, s, m, r))
    }
    fn dropout_add_layer_norm_backward(
        &self, /*s*/
        gamma: &Self,
        mean: &Self,
        rstd: &Self,
        dy: &Self,
        rn: ResidualNorm,
    ) -> Result<(Self, Option<Self>, Self, Self)> {
        if !self.cuda() || rn.p == 0.0 {
            // CUDA without dropout is LayerNorm's backward, as composed.
            return composed::dropout_add_layer_norm_backward(self, gamma, mean, rstd, dy, rn);
        }
        let cols = rn.cols;
        let (ds, da) = (self.like(), self.like());
        let (dg, db) = (self.out(cols, self.dtype), self.out(cols, self.dtype));
        let part = self.col_partials(self.rows(cols), cols);
        self.scratch(&[part, part]);
        Ok((ds, Some(da), dg, db))
    }
    fn adamw_multi(
        tensors: &mut [MultiTensor<'_, Self>],
        _hp: &AdamWMultiStep,
    ) -> Result<Option<AdamWMultiOutcome>> {
        let Some(first) = cuda_first(tensors.first().map(|t| &*t.param)) else {
            return Ok(None);
        };
        let lens: Vec<usize> = tensors.iter().map(|t| t.param.len).collect();
        first.scratch(&cuda::adamw_multi::scratch(&lens)?);
        Ok(Some(PLANNED_STEP))
    }
    fn adafactor_multi(
        tensors: &mut [AdafactorMultiTensor<'_, Self>],
        hp: &AdafactorMultiStep,
    ) -> Result<Option<AdafactorOutcome>> {
        let Some(first) = cuda_first(tensors.first().map(|t| &*t.param)) else {
            return Ok(None);
        };
        let shapes: Vec<_> = tensors
            .iter()
            .map(|t| (t.param.len, t.st.rows_cols))
            .collect();
        first.adafactor_scratch(&shapes, true)?;
        Ok(Some(AdafactorOutcome {
            multi: PLANNED_STEP,
            lr: hp.report.map(|_| 0.0),
        }))
    }
}

/// What a planned multi-tensor step reports: not skipped (a plan reads no gradient).
const PLANNED_STEP: AdamWMultiOutcome = AdamWMultiOutcome {
    skipped: false,
    sum_sq: 0.0,
};

/// A multi-tensor step's first parameter when the plan is for CUDA (the backend with
/// that path); `None`, as the CPU answers, otherwise or for no parameters.
fn cuda_first(first: Option<&MetaStorage>) -> Option<&MetaStorage> {
    first.filter(|p| p.cuda())
}

impl MetaStorage {
    /// CUDA's Adafactor scratch (`cuda::adafactor::scratch`): the decision words held
    /// through the step, and each phase's buffer in turn.
    fn adafactor_scratch(
        &self,
        shapes: &[(usize, Option<(usize, usize)>)],
        multi: bool,
    ) -> Result<()> {
        if let Some((decision, phases)) = cuda::adafactor::scratch(shapes, multi)? {
            let held = self.out(decision, DType::F32);
            for n in phases {
                self.scratch(&[(n, DType::F32)]);
            }
            drop(held);
        }
        Ok(())
    }

    /// `sum_all` / `sum_sq`: one element (the sum of squares always f32, f64 for f64);
    /// CUDA reduces through one f32 partial per block first
    /// (`cuda::reduce::sum_partials`), the CPU directly.
    fn sum_of(&self, square: bool) -> Result<MetaStorage> {
        let dtype = if square { self.stat() } else { self.dtype };
        if !self.cuda() {
            return Ok(self.out(1, dtype));
        }
        let partials = self.out(cuda::reduce::sum_partials(self.len), DType::F32);
        let out = self.out(1, dtype);
        drop(partials);
        Ok(out)
    }

    /// Does a CUDA linear layer take the cuBLASLt epilogue (bias in the GEMM, its
    /// gradient from the weight-gradient GEMM)? The sizes and the switch decide; whether
    /// the card's cuBLASLt has an algorithm is assumed (it had on every card measured).
    fn lt_epilogue(&self, LinearDims { rows, out_f, in_f }: LinearDims) -> bool {
        self.cuda() && !cuda::blaslt::disabled() && cuda::blaslt::sizes_ok(&[rows, out_f, in_f])
    }
}
