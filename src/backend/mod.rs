//! Storage and the primitive op set, implemented once per backend.
//!
//! `Storage` is the enum the rest of the crate holds; every primitive is a method of
//! [`BackendStorage`], implemented by `cpu::CpuStorage` (the reference) and
//! `cuda::CudaStorage`. The backend never sees a `Tensor` or the tape: it works on flat
//! contiguous row-major buffers plus the dimension sizes passed in each call. Forward and
//! backward of each primitive are both here, so the autograd layer (`ops/`) only orders
//! them.
//!
//! Conventions shared by both backends:
//! - Float ops accept F32, F64 and F16 on the CPU (F16 as an emulation of CUDA's fp16:
//!   f32 math, f16 stores) and F32 and F16 on CUDA; reductions
//!   (norms, softmax, losses) accumulate in f32 (f64 for F64). Auxiliary outputs that
//!   backward needs (mean, rstd, lse) are always F32 (F64 for F64 inputs).
//! - Token ids, labels and masks are I32. Labels equal to `ignore_index` (-100) are
//!   skipped by the loss.
//! - Attention tensors are laid out `[B, L, H, D]` — exactly the output of a linear
//!   layer `[B*L, H*D]` — so no transpose is needed around the kernel. The saved
//!   log-sum-exp is `[B, H, Lq]` F32. A row whose keys are all masked yields zeros and
//!   lse = -inf, and contributes nothing in backward.
//! - Dropout masks come from a counter-based hash of (seed, element index), so the CPU
//!   and CUDA backends draw the same mask and backward re-derives it from the seed.

mod composed;
pub mod cpu;
pub mod cuda;
mod dropout;
mod emulate;
pub mod meta;
mod optim;
mod storage;
mod storage_nn;
pub mod tracker;

use crate::error::Result;
use crate::shape::{DType, Device};

pub use cpu::CpuStorage;
pub use cuda::CudaStorage;
pub use dropout::{dropout_keep, dropout_keep_keyed, dropout_key, dropout_key_packed};
pub use meta::MetaStorage;
pub use optim::*;
pub use storage::Storage;
pub use storage_nn::{adafactor_multi, adamw_multi, AdafactorTensor, AdamWTensor};

/// Is a usable CUDA driver with at least one device present? Never panics.
pub fn cuda_available() -> bool {
    cuda::is_available()
}

impl Device {
    /// Turn `Auto` into a concrete device. No GPU is not an error: it is the CPU.
    pub fn resolve(self) -> Device {
        match self {
            Device::Auto if cuda_available() => Device::Cuda(0),
            Device::Auto => Device::Cpu,
            d => d,
        }
    }
}

/// Wait for the work queued on `device` (CUDA); nothing to wait for elsewhere. What
/// profiling spans call, so the layers above never name a backend.
pub fn synchronize(device: Device) -> Result<()> {
    match device {
        Device::Cuda(_) => cuda::synchronize(device),
        _ => Ok(()),
    }
}

/// Elementwise binary ops on two same-sized buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// Elementwise activations (forward `f(x)`, backward `dy * f'(x)` from the saved input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Relu,
    /// Exact erf GELU (BERT, DistilBERT).
    Gelu,
    /// Tanh-approximated GELU, HF's `gelu_new` (flan-t5's gated-gelu).
    GeluNew,
    /// SiLU / swish, `x · sigmoid(x)` (HF's "silu" and "swish": Marian).
    Silu,
    Tanh,
    Neg,
    Exp,
    Sqr,
}

/// `C[b] = op(A[b]) · op(B[b])` with `op(A)` of size `m×k`, `op(B)` of size `k×n`, `C`
/// `m×n`. A stride of 0 broadcasts that operand over the batch. `trans_*` means the
/// stored matrix is the transpose (A stored `k×m`, B stored `n×k`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulSpec {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    /// Elements between consecutive batch entries of A (0 = broadcast).
    pub stride_a: usize,
    /// Elements between consecutive batch entries of B (0 = broadcast).
    pub stride_b: usize,
}

impl MatmulSpec {
    /// A linear layer's product `x [rows, in] · Wᵀ` for `W` stored `[out, in]`.
    pub fn linear(rows: usize, out_f: usize, in_f: usize) -> MatmulSpec {
        MatmulSpec {
            batch: 1,
            m: rows,
            n: out_f,
            k: in_f,
            trans_a: false,
            trans_b: true,
            stride_a: 0,
            stride_b: 0,
        }
    }

    /// A linear layer's weight gradient `dW [out, in] = dyᵀ [out, rows] · x [rows, in]`.
    pub fn linear_wgrad(rows: usize, out_f: usize, in_f: usize) -> MatmulSpec {
        MatmulSpec {
            batch: 1,
            m: out_f,
            n: in_f,
            k: rows,
            trans_a: true,
            trans_b: false,
            stride_a: 0,
            stride_b: 0,
        }
    }

    /// `batch` products `m×k · k×n` of contiguous operands as stored (no transpose);
    /// `broadcast_b`: one B for every batch entry.
    pub fn batched(batch: usize, m: usize, k: usize, n: usize, broadcast_b: bool) -> MatmulSpec {
        MatmulSpec {
            batch,
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            stride_a: m * k,
            stride_b: if broadcast_b { 0 } else { k * n },
        }
    }

    /// A plain (unbatched) `m×k · k×n` product.
    pub fn plain(m: usize, k: usize, n: usize) -> MatmulSpec {
        MatmulSpec::batched(1, m, k, n, false)
    }
}

/// The shape of a linear layer's GEMM: `rows` inputs of `in_f` features to `out_f`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearDims {
    pub rows: usize,
    pub out_f: usize,
    pub in_f: usize,
}

/// A residual LayerNorm block's settings (`dropout_add_layer_norm` and its backward):
/// the row length, LayerNorm's eps, and the dropout on the branch (probability, seed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResidualNorm {
    pub cols: usize,
    pub eps: f64,
    pub p: f32,
    pub seed: u64,
}

/// Shape and options of one attention call. q is `[b, lq, h, d]`, k and v `[b, lk, h, d]`,
/// the output `[b, lq, h, d]`, lse `[b, h, lq]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnSpec {
    pub b: usize,
    pub h: usize,
    pub lq: usize,
    pub lk: usize,
    pub d: usize,
    /// Multiplies q·kᵀ before the bias is added: 1/√d for BERT, 1.0 for T5.
    pub scale: f32,
    /// Query i sees keys j ≤ i + (lk − lq) (aligned at the end, as for a KV cache).
    pub causal: bool,
    /// Dropout on the probabilities (HF's attention dropout), 0 for none. The mask of
    /// (b, h, i, j) is `dropout_keep(seed, ((b·h_count + h)·lq + i)·lk + j, p)`, so
    /// backward re-derives it and the CPU and CUDA backends draw the same one. lse is
    /// the softmax's, before dropout.
    pub dropout: f32,
    pub seed: u64,
}

/// What an attention call takes besides q, k and v: the key padding mask (I32 `[b, lk]`,
/// nonzero = keep), the additive bias (`[h, lq, lk]` in q's dtype, broadcast over the
/// batch) and the shape and options. `S` is the buffer type (a backend's, or `Storage`).
#[derive(Debug)]
pub struct AttnArgs<'a, S> {
    pub key_mask: Option<&'a S>,
    pub bias: Option<&'a S>,
    pub spec: AttnSpec,
}

/// What attention backward reads besides q, k, v and [`AttnArgs`]: the forward's `out`
/// `[b, lq, h, d]` and `lse` `[b, h, lq]`, and the upstream gradient `dout` (as `out`).
#[derive(Debug)]
pub struct AttnSaved<'a, S> {
    pub out: &'a S,
    pub lse: &'a S,
    pub dout: &'a S,
}

/// Copy for any `S` (a derive would ask `S: Copy`): they hold references and a spec.
macro_rules! copy_for_any_buffer {
    ($($t:ident),*) => {$(
        impl<S> Clone for $t<'_, S> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<S> Copy for $t<'_, S> {}
    )*};
}

copy_for_any_buffer!(AttnArgs, AttnSaved);

impl<'a, S> AttnSaved<'a, S> {
    pub fn new(out: &'a S, lse: &'a S, dout: &'a S) -> Self {
        AttnSaved { out, lse, dout }
    }
}

impl<'a, S> AttnArgs<'a, S> {
    pub fn new(key_mask: Option<&'a S>, bias: Option<&'a S>, spec: AttnSpec) -> Self {
        AttnArgs {
            key_mask,
            bias,
            spec,
        }
    }
}

/// One QA span candidate from [`BackendStorage::span_search`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpanCandidate {
    /// Row (window) index.
    pub row: usize,
    pub start: usize,
    pub end: usize,
    /// p_start · p_end with the softmax over the whole row (masked logits excluded).
    pub score: f32,
    /// Raw start_logit + end_logit, as HF's run_qa post-processing ranks spans.
    pub logit_sum: f32,
}

/// The primitive op set. All buffers are contiguous; sizes come in as arguments.
/// Methods returning several buffers return them in the documented order.
pub trait BackendStorage: Sized + Send + Sync {
    fn device(&self) -> Device;
    fn dtype(&self) -> DType;
    /// Number of elements.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // ---- creation and transfer --------------------------------------------------
    /// A new buffer of `len` zeros of `dtype` on the same device as `self`.
    fn zeros_like_dev(&self, len: usize, dtype: DType) -> Result<Self>;
    /// A new buffer on the same device filled with `value`.
    fn full_like_dev(&self, len: usize, dtype: DType, value: f64) -> Result<Self>;
    /// Copy out as f32 (any float dtype; I32 converts too).
    fn to_vec_f32(&self) -> Result<Vec<f32>>;
    fn to_vec_f64(&self) -> Result<Vec<f64>>;
    fn to_vec_i32(&self) -> Result<Vec<i32>>;
    /// Copy to the CPU backend keeping the dtype.
    fn to_cpu(&self) -> Result<CpuStorage>;
    fn cast(&self, dtype: DType) -> Result<Self>;
    /// A copy (same device, same dtype).
    fn duplicate(&self) -> Result<Self>;

    // ---- elementwise --------------------------------------------------------------
    fn binary(&self, rhs: &Self, op: BinaryOp) -> Result<Self>;
    /// `self * mul + add`.
    fn affine(&self, mul: f64, add: f64) -> Result<Self>;
    fn unary(&self, op: UnaryOp) -> Result<Self>;
    /// `dy * f'(x)` where `self` is the saved input x.
    fn unary_backward(&self, dy: &Self, op: UnaryOp) -> Result<Self>;
    /// `act(gate) * lin` (T5 v1.1 gated feed-forward).
    fn gated(&self, lin: &Self, act: UnaryOp) -> Result<Self>;
    /// Backward of [`gated`]: returns (d_gate, d_lin). `self` is the gate input.
    fn gated_backward(&self, lin: &Self, dy: &Self, act: UnaryOp) -> Result<(Self, Self)>;
    /// Inverted dropout: keep with probability 1-p, scale kept values by 1/(1-p). The
    /// mask of element i depends only on (seed, i): applying this to dy with the same
    /// seed is the backward.
    fn dropout(&self, p: f32, seed: u64) -> Result<Self>;
    /// `x[r, c] + bias[c]` with `cols` columns.
    fn add_bias(&self, bias: &Self, cols: usize) -> Result<Self>;
    /// Column sums of a `[rows, cols]` buffer: the bias gradient. Result `[cols]`.
    fn sum_rows(&self, cols: usize) -> Result<Self>;
    /// Sum of all elements, as a 1-element buffer.
    fn sum_all(&self) -> Result<Self>;
    /// Sum of squares of all elements in f32/f64, as a 1-element buffer (grad norms).
    fn sum_sq(&self) -> Result<Self>;
    /// Permute a rank ≤ 4 tensor of `dims` by `perm` (out dim i = in dim perm[i]).
    fn permute(&self, dims: &[usize], perm: &[usize]) -> Result<Self>;
    /// Slice `[start, start+len)` along `dim` of a tensor of `dims`.
    fn narrow(&self, dims: &[usize], dim: usize, start: usize, len: usize) -> Result<Self>;
    /// Concatenate along `dim`; `dims[i]` is the shape of `parts[i]`.
    fn cat(parts: &[&Self], dims: &[Vec<usize>], dim: usize) -> Result<Self>;
    /// Rows `ids[i]` of a `[n, cols]` buffer (embedding lookup, beam reordering).
    /// Ids out of range are an error.
    fn index_select(&self, ids: &Self, cols: usize) -> Result<Self>;
    /// Backward of [`index_select`]: scatter-add `dy` rows into a `[n, cols]` zero buffer.
    /// Positions whose id is `skip` add nothing (`nn.Embedding`'s `padding_idx`: that row
    /// of the table gets no gradient); out-of-range ids are still an error.
    fn index_add(
        &self, /*dy*/
        ids: &Self,
        n: usize,
        cols: usize,
        skip: Option<usize>,
    ) -> Result<Self>;

    // ---- in place (optimizer, gradient accumulation) ---------------------------------
    /// `self += alpha * x`.
    fn axpy_(&mut self, x: &Self, alpha: f64) -> Result<()>;
    /// `self *= alpha`.
    fn scale_(&mut self, alpha: f64) -> Result<()>;
    /// Overwrite with the values of `src` (same len; casts between float dtypes).
    fn copy_from_(&mut self, src: &Self) -> Result<()>;
    /// One AdamW step on a master parameter (F32/F64) with its moments `st.m`, `st.v`
    /// (same dtype as the master). `grad` may be F16. If `st.working` is given, it
    /// receives the updated parameter cast to its dtype. Returns `true` (and changes
    /// nothing) if the scaled gradient holds an inf or NaN.
    fn adamw_(&mut self, grad: &Self, st: AdamWState<'_, Self>, hp: &AdamWStep) -> Result<bool>;
    /// One Adafactor step (transformers' `Adafactor`) on a master parameter (F32/F64)
    /// with its state `st` (the master's dtype); `grad` may be F16; `st.working`, if
    /// given, receives the updated parameter. No inf/NaN check: the caller checked every
    /// gradient at once. Returns the step size applied when `hp.report_lr`.
    fn adafactor_(
        &mut self,
        grad: &Self,
        st: AdafactorState<'_, Self>,
        hp: &AdafactorStep,
    ) -> Result<Option<f64>>;
    /// True if any element is inf or NaN.
    fn has_non_finite(&self) -> Result<bool>;
    /// An I32 buffer with every value clamped to [lo, hi] (QA positions to [0, S]).
    fn clamp_i32(&self, lo: i32, hi: i32) -> Result<Self>;

    // ---- matrix products --------------------------------------------------------
    fn matmul(&self, rhs: &Self, spec: &MatmulSpec) -> Result<Self>;

    /// [`matmul`](Self::matmul) with the product stored in `out`: F16 operands with an
    /// F32 result (f32 accumulation, C never rounded to f16) keep an fp16 GEMM's speed
    /// where the product may pass 65504 (T5's output projections in fp16). `out` equal
    /// to the operands' dtype is `matmul`; any other pair is a dtype error.
    fn matmul_out(&self, rhs: &Self, spec: &MatmulSpec, out: DType) -> Result<Self>;

    // ---- normalisation -------------------------------------------------------------
    /// LayerNorm over the last `cols`: returns (y, mean [rows], rstd [rows]).
    fn layer_norm(
        &self,
        gamma: &Self,
        beta: &Self,
        cols: usize,
        eps: f64,
    ) -> Result<(Self, Self, Self)>;
    /// Returns (dx, dgamma, dbeta).
    fn layer_norm_backward(
        &self, /*x*/
        gamma: &Self,
        mean: &Self,
        rstd: &Self,
        dy: &Self,
        cols: usize,
    ) -> Result<(Self, Self, Self)>;
    /// T5 RMSNorm (no mean, no bias; variance in f32): returns (y, rstd [rows]).
    fn rms_norm(&self, gamma: &Self, cols: usize, eps: f64) -> Result<(Self, Self)>;
    /// Returns (dx, dgamma).
    fn rms_norm_backward(
        &self, /*x*/
        gamma: &Self,
        rstd: &Self,
        dy: &Self,
        cols: usize,
    ) -> Result<(Self, Self)>;

    // ---- softmax and loss ---------------------------------------------------------
    /// Softmax over the last `cols`.
    fn softmax(&self, cols: usize) -> Result<Self>;
    /// `self` is the softmax output y: dx = y ⊙ (dy − Σ dy⊙y).
    fn softmax_backward(&self, dy: &Self, cols: usize) -> Result<Self>;
    /// Log-softmax over the last `cols` (inference: beam search scores).
    fn log_softmax(&self, cols: usize) -> Result<Self>;
    /// Mean cross-entropy of `[rows, cols]` logits against I32 `targets [rows]`,
    /// skipping `ignore_index`. Returns (loss [1], lse [rows]); loss is 0 when every
    /// target is ignored. The loss (and `dloss` in backward) is F32 for F16 logits, so
    /// a loss-scaled fp16 run does not overflow f16 at the loss.
    fn cross_entropy(&self, targets: &Self, cols: usize, ignore_index: i32)
        -> Result<(Self, Self)>;
    /// d logits, given the upstream gradient `dloss` of the mean loss (1 element).
    fn cross_entropy_backward(
        &self, /*logits*/
        targets: &Self,
        lse: &Self,
        dloss: &Self,
        cols: usize,
        ignore_index: i32,
    ) -> Result<Self>;
    /// Index of the maximum of each row of `[rows, cols]` (inference only), as I32.
    fn argmax_last(&self, cols: usize) -> Result<Self>;

    // ---- attention ------------------------------------------------------------------
    /// softmax(scale·q·kᵀ + bias + masks)·v, with the mask, bias and spec of `a`.
    /// Returns (out, lse).
    fn attention(
        &self,
        /*q*/ k: &Self,
        v: &Self,
        a: AttnArgs<'_, Self>,
    ) -> Result<(Self, Self)>;
    /// Returns (dq, dk, dv, dbias) — dbias `[h, lq, lk]` summed over the batch, present
    /// when `a.bias` was given.
    fn attention_backward(
        &self, /*q*/
        k: &Self,
        v: &Self,
        saved: AttnSaved<'_, Self>,
        a: AttnArgs<'_, Self>,
    ) -> Result<(Self, Self, Self, Option<Self>)>;
    /// [`attention`](Self::attention) with q, k and v the columns of one fused QKV
    /// projection: `self` is `[b, l, 3, h, d]` (q, k, v per token, `spec.lq == spec.lk`).
    /// Returns (out `[b, l, h, d]`, lse).
    fn attention_qkv(&self, /*qkv*/ a: AttnArgs<'_, Self>) -> Result<(Self, Self)>;
    /// Backward of [`attention_qkv`](Self::attention_qkv): (dqkv in the same packed
    /// layout, so one GEMM gives the input gradient; dbias as in `attention_backward`).
    fn attention_qkv_backward(
        &self, /*qkv*/
        saved: AttnSaved<'_, Self>,
        a: AttnArgs<'_, Self>,
    ) -> Result<(Self, Option<Self>)>;

    // ---- QA decoding (inference only) ------------------------------------------------
    /// For each of `rows` windows of `cols` tokens: softmax over start and end logits
    /// (positions with `allowed` = 0 excluded, except that the CLS position 0 stays in the
    /// softmax's denominator), then the `top_k` spans start ≤ end < start + max_len over
    /// allowed positions, by p_start·p_end. `allowed` is I32 `[rows, cols]`.
    fn span_search(
        &self, /*start logits*/
        end_logits: &Self,
        allowed: &Self,
        cols: usize,
        max_len: usize,
        top_k: usize,
    ) -> Result<Vec<SpanCandidate>>;

    // ---- fused paths: the defaults compose the primitives above (the CPU takes them;
    // ---- CUDA overrides them with one kernel or a GEMM epilogue where it can) -------
    /// `self [rows, in] · wᵀ + bias` (`w` stored `[out, in]`).
    fn linear_bias(&self, w: &Self, bias: &Self, dims: LinearDims) -> Result<Self> {
        composed::linear_bias(self, w, bias, dims)
    }
    /// A linear layer's weight and bias gradients from `self` = dy `[rows, out]` and x
    /// `[rows, in]`: (`dW [out, in] = dyᵀ · x`, `db [out] = Σ_rows dy`).
    fn linear_wgrad_bgrad(&self, /*dy*/ x: &Self, dims: LinearDims) -> Result<(Self, Self)> {
        composed::linear_wgrad_bgrad(self, x, dims)
    }
    /// `LayerNorm(dropout(self, p, seed) + res)` (a post-norm encoder's residual block):
    /// (y, s, mean, rstd) with `s` the normalised sum.
    fn dropout_add_layer_norm(
        &self,
        res: &Self,
        gamma: &Self,
        beta: &Self,
        rn: ResidualNorm,
    ) -> Result<(Self, Self, Self, Self)> {
        composed::dropout_add_layer_norm(self, res, gamma, beta, rn)
    }
    /// Backward of [`dropout_add_layer_norm`](Self::dropout_add_layer_norm) from the
    /// saved sum `self`: (ds, da, dgamma, dbeta); `da` is `None` when p = 0 (it is ds).
    fn dropout_add_layer_norm_backward(
        &self, /*s*/
        gamma: &Self,
        mean: &Self,
        rstd: &Self,
        dy: &Self,
        rn: ResidualNorm,
    ) -> Result<(Self, Option<Self>, Self, Self)> {
        composed::dropout_add_layer_norm_backward(self, gamma, mean, rstd, dy, rn)
    }
    /// One AdamW step over many parameters at once (global-norm clip and the inf/NaN
    /// skip decided on the device). `Ok(None)`: this backend has no such path, and the
    /// caller steps each tensor with [`adamw_`](Self::adamw_).
    fn adamw_multi(
        tensors: &mut [MultiTensor<'_, Self>],
        hp: &AdamWMultiStep,
    ) -> Result<Option<AdamWMultiOutcome>> {
        let _ = (tensors, hp);
        Ok(None)
    }
    /// One Adafactor step over many parameters at once, the clip and the inf/NaN skip
    /// decided on the device as [`adamw_multi`](Self::adamw_multi) does. `Ok(None)`: no
    /// such path here, and the caller steps each tensor with
    /// [`adafactor_`](Self::adafactor_).
    fn adafactor_multi(
        tensors: &mut [AdafactorMultiTensor<'_, Self>],
        hp: &AdafactorMultiStep,
    ) -> Result<Option<AdafactorOutcome>> {
        let _ = (tensors, hp);
        Ok(None)
    }
}
