//! The CPU's fp16 path: an emulation of the CUDA backend's fp16 contract, written once
//! over any storage, so the CPU runs it on data and the meta device runs it for the CPU
//! target (the f32 copies it makes are in the CPU plan to the byte; tests/budget.rs).
//!
//! The CUDA kernels load f16, compute in f32 and store f16 (`fb_ld`/`fb_st` in
//! kernels/common.cuh; cuBLAS with CUBLAS_COMPUTE_32F). The emulation does the same at op
//! granularity: each f16 operand is widened to an f32 copy (`up`, exact, in argument
//! order), the op's f32 body runs unchanged (the storage's own f32 method), and each
//! output the CUDA op stores as f16 is rounded back (`down`: round to nearest even,
//! overflow to ±inf like `cvt.rn.f16.f32`; the f32 output freed once the f16 one
//! exists). Outputs CUDA keeps in f32 stay f32: norm statistics, softmax lse, the
//! cross-entropy loss, `sum_sq`, `matmul_out`'s f32 result. So an activation past 65504
//! becomes inf exactly where it would on the GPU, and an fp16 model (T5's overflow guard
//! included) trains without one. The widened operands live until the op returns.
//!
//! Not emulated: rounding *inside* an op (the unfused CUDA attention fallback stores its
//! scores in f16; the fused kernel, what runs by default, keeps them in f32), and the
//! order of f32 accumulation: a few f16 ulps, well inside the 1e-2 relative tolerance
//! fp16 results are held to. CUDA makes none of the f32 copies, so the CPU's peak in f16
//! is higher than the GPU's would be.
//!
//! A float operand of an f16 op that is not f16 is the dtype error CUDA gives for it, so
//! a mixed-dtype call the GPU would refuse fails here too.

use crate::backend::{
    AdafactorState, AdafactorStep, AdamWState, AdamWStep, AttnArgs, AttnSaved, BackendStorage,
    BinaryOp, MatmulSpec, SpanCandidate, UnaryOp,
};
use crate::error::{Error, Result};
use crate::shape::DType;

/// An f16 operand widened to an f32 copy; any other dtype is `op`'s dtype error.
fn up<S: BackendStorage>(op: &'static str, s: &S) -> Result<S> {
    if s.dtype() != DType::F16 {
        return Err(Error::DType {
            op,
            expected: "f16 (every float operand of an f16 op)",
            got: s.dtype(),
        });
    }
    s.cast(DType::F32)
}

fn up_opt<S: BackendStorage>(op: &'static str, s: Option<&S>) -> Result<Option<S>> {
    s.map(|s| up(op, s)).transpose()
}

/// An f32 result rounded to f16; the f32 buffer is freed after the f16 one exists.
fn down<S: BackendStorage>(s: S) -> Result<S> {
    s.cast(DType::F16)
}

fn down2<S: BackendStorage>((a, b): (S, S)) -> Result<(S, S)> {
    Ok((down(a)?, down(b)?))
}

/// An operand of an op whose CUDA kernel takes f32 or f16 (axpy's `x`, AdamW's
/// gradient) as an f32 buffer: f16 widened, anything else copied.
fn widen<S: BackendStorage>(s: &S) -> Result<S> {
    match s.dtype() {
        DType::F16 => s.cast(DType::F32),
        _ => s.duplicate(),
    }
}

/// An in-place f32 op on an f16 buffer: widen, apply, round back into `dst`.
fn in_place<S: BackendStorage>(dst: &mut S, f: impl FnOnce(&mut S) -> Result<()>) -> Result<()> {
    let mut wide = dst.cast(DType::F32)?;
    f(&mut wide)?;
    dst.copy_from_(&wide)
}

pub(crate) fn binary<S: BackendStorage>(a: &S, b: &S, op: BinaryOp) -> Result<S> {
    down(up("binary", a)?.binary(&up("binary", b)?, op)?)
}

pub(crate) fn affine<S: BackendStorage>(a: &S, mul: f64, add: f64) -> Result<S> {
    down(up("affine", a)?.affine(mul, add)?)
}

pub(crate) fn unary<S: BackendStorage>(a: &S, op: UnaryOp) -> Result<S> {
    down(up("unary", a)?.unary(op)?)
}

pub(crate) fn unary_backward<S: BackendStorage>(x: &S, dy: &S, op: UnaryOp) -> Result<S> {
    const OP: &str = "unary_backward";
    down(up(OP, x)?.unary_backward(&up(OP, dy)?, op)?)
}

pub(crate) fn gated<S: BackendStorage>(a: &S, lin: &S, act: UnaryOp) -> Result<S> {
    down(up("gated", a)?.gated(&up("gated", lin)?, act)?)
}

pub(crate) fn gated_backward<S: BackendStorage>(
    a: &S,
    lin: &S,
    dy: &S,
    act: UnaryOp,
) -> Result<(S, S)> {
    const OP: &str = "gated_backward";
    down2(up(OP, a)?.gated_backward(&up(OP, lin)?, &up(OP, dy)?, act)?)
}

pub(crate) fn dropout<S: BackendStorage>(a: &S, p: f32, seed: u64) -> Result<S> {
    down(up("dropout", a)?.dropout(p, seed)?)
}

pub(crate) fn add_bias<S: BackendStorage>(a: &S, bias: &S, cols: usize) -> Result<S> {
    down(up("add_bias", a)?.add_bias(&up("add_bias", bias)?, cols)?)
}

pub(crate) fn sum_rows<S: BackendStorage>(a: &S, cols: usize) -> Result<S> {
    down(up("sum_rows", a)?.sum_rows(cols)?)
}

/// CUDA keeps the sum in the input's dtype.
pub(crate) fn sum_all<S: BackendStorage>(a: &S) -> Result<S> {
    down(up("sum_all", a)?.sum_all()?)
}

/// Always f32, as on CUDA: it feeds gradient-norm clipping, where f16 overflows.
pub(crate) fn sum_sq<S: BackendStorage>(a: &S) -> Result<S> {
    up("sum_sq", a)?.sum_sq()
}

pub(crate) fn index_add<S: BackendStorage>(
    dy: &S,
    ids: &S,
    n: usize,
    cols: usize,
    skip: Option<usize>,
) -> Result<S> {
    down(up("index_add", dy)?.index_add(ids, n, cols, skip)?)
}

/// `y += alpha · x` for an f16 `y` (any float `x`), or an f16 `x` into an f32 `y` (f16
/// gradients accumulating into f32): CUDA has every such pair.
pub(crate) fn axpy_<S: BackendStorage>(y: &mut S, x: &S, alpha: f64) -> Result<()> {
    let x = widen(x)?;
    if y.dtype() == DType::F16 {
        in_place(y, |w| w.axpy_(&x, alpha))
    } else {
        y.axpy_(&x, alpha)
    }
}

pub(crate) fn scale_<S: BackendStorage>(y: &mut S, alpha: f64) -> Result<()> {
    in_place(y, |w| w.scale_(alpha))
}

/// AdamW on an f32 master with an f16 gradient, read as f32 (exact), as on CUDA.
pub(crate) fn adamw_<S: BackendStorage>(
    master: &mut S,
    grad: &S,
    st: AdamWState<'_, S>,
    hp: &AdamWStep,
) -> Result<bool> {
    master.adamw_(&widen(grad)?, st, hp)
}

/// Adafactor on an f32 master with an f16 gradient, read as f32 (exact), as on CUDA.
pub(crate) fn adafactor_<S: BackendStorage>(
    master: &mut S,
    grad: &S,
    st: AdafactorState<'_, S>,
    hp: &AdafactorStep,
) -> Result<Option<f64>> {
    master.adafactor_(&widen(grad)?, st, hp)
}

pub(crate) fn matmul<S: BackendStorage>(a: &S, b: &S, spec: &MatmulSpec) -> Result<S> {
    down(up("matmul", a)?.matmul(&up("matmul", b)?, spec)?)
}

/// cuBLAS GemmEx: f16 A and B, f32 C, f32 accumulation: no f16 rounding of C.
pub(crate) fn matmul_f32_out<S: BackendStorage>(a: &S, b: &S, spec: &MatmulSpec) -> Result<S> {
    up("matmul_out", a)?.matmul(&up("matmul_out", b)?, spec)
}

pub(crate) fn layer_norm<S: BackendStorage>(
    x: &S,
    gamma: &S,
    beta: &S,
    cols: usize,
    eps: f64,
) -> Result<(S, S, S)> {
    const OP: &str = "layer_norm";
    let (y, mean, rstd) = up(OP, x)?.layer_norm(&up(OP, gamma)?, &up(OP, beta)?, cols, eps)?;
    Ok((down(y)?, mean, rstd))
}

pub(crate) fn layer_norm_backward<S: BackendStorage>(
    x: &S,
    gamma: &S,
    mean: &S,
    rstd: &S,
    dy: &S,
    cols: usize,
) -> Result<(S, S, S)> {
    const OP: &str = "layer_norm_backward";
    let (dx, dg, db) =
        up(OP, x)?.layer_norm_backward(&up(OP, gamma)?, mean, rstd, &up(OP, dy)?, cols)?;
    Ok((down(dx)?, down(dg)?, down(db)?))
}

pub(crate) fn rms_norm<S: BackendStorage>(
    x: &S,
    gamma: &S,
    cols: usize,
    eps: f64,
) -> Result<(S, S)> {
    let (y, rstd) = up("rms_norm", x)?.rms_norm(&up("rms_norm", gamma)?, cols, eps)?;
    Ok((down(y)?, rstd))
}

pub(crate) fn rms_norm_backward<S: BackendStorage>(
    x: &S,
    gamma: &S,
    rstd: &S,
    dy: &S,
    cols: usize,
) -> Result<(S, S)> {
    const OP: &str = "rms_norm_backward";
    down2(up(OP, x)?.rms_norm_backward(&up(OP, gamma)?, rstd, &up(OP, dy)?, cols)?)
}

pub(crate) fn softmax<S: BackendStorage>(a: &S, cols: usize) -> Result<S> {
    down(up("softmax", a)?.softmax(cols)?)
}

pub(crate) fn softmax_backward<S: BackendStorage>(y: &S, dy: &S, cols: usize) -> Result<S> {
    const OP: &str = "softmax_backward";
    down(up(OP, y)?.softmax_backward(&up(OP, dy)?, cols)?)
}

pub(crate) fn log_softmax<S: BackendStorage>(a: &S, cols: usize) -> Result<S> {
    down(up("log_softmax", a)?.log_softmax(cols)?)
}

/// Loss and lse stay f32 for f16 logits, as on CUDA (a scaled loss fits in f32).
pub(crate) fn cross_entropy<S: BackendStorage>(
    logits: &S,
    targets: &S,
    cols: usize,
    ignore_index: i32,
) -> Result<(S, S)> {
    up("cross_entropy", logits)?.cross_entropy(targets, cols, ignore_index)
}

pub(crate) fn cross_entropy_backward<S: BackendStorage>(
    logits: &S,
    targets: &S,
    lse: &S,
    dloss: &S,
    cols: usize,
    ignore_index: i32,
) -> Result<S> {
    let wide = up("cross_entropy_backward", logits)?;
    down(wide.cross_entropy_backward(targets, lse, dloss, cols, ignore_index)?)
}

pub(crate) fn argmax_last<S: BackendStorage>(a: &S, cols: usize) -> Result<S> {
    up("argmax_last", a)?.argmax_last(cols)
}

pub(crate) fn span_search<S: BackendStorage>(
    start: &S,
    end: &S,
    allowed: &S,
    cols: usize,
    max_len: usize,
    top_k: usize,
) -> Result<Vec<SpanCandidate>> {
    const OP: &str = "span_search";
    up(OP, start)?.span_search(&up(OP, end)?, allowed, cols, max_len, top_k)
}

/// An attention call's widened bias and, in backward, its widened saved output and
/// output gradient (the lse is f32 already), put in place of the f16 ones.
struct Wide<S> {
    bias: Option<S>,
    saved: Option<(S, S)>,
}

impl<S: BackendStorage> Wide<S> {
    fn new(
        op: &'static str,
        a: &AttnArgs<'_, S>,
        saved: Option<&AttnSaved<'_, S>>,
    ) -> Result<Self> {
        Ok(Wide {
            bias: up_opt(op, a.bias)?,
            saved: saved
                .map(|s| Ok::<_, Error>((up(op, s.out)?, up(op, s.dout)?)))
                .transpose()?,
        })
    }
    fn args<'a>(&'a self, a: AttnArgs<'a, S>) -> AttnArgs<'a, S> {
        AttnArgs {
            bias: self.bias.as_ref(),
            ..a
        }
    }
    fn saved<'a>(&'a self, s: AttnSaved<'a, S>) -> AttnSaved<'a, S> {
        match &self.saved {
            Some((out, dout)) => AttnSaved { out, dout, ..s },
            None => s,
        }
    }
}

/// Attention forward, separate q, k, v: the output rounded, the lse f32.
pub(crate) fn attention<S: BackendStorage>(
    q: &S,
    k: &S,
    v: &S,
    a: AttnArgs<'_, S>,
) -> Result<(S, S)> {
    const OP: &str = "attention";
    let w = Wide::new(OP, &a, None)?;
    let (q, k, v) = (up(OP, q)?, up(OP, k)?, up(OP, v)?);
    let (out, lse) = q.attention(&k, &v, w.args(a))?;
    Ok((down(out)?, lse))
}

/// Attention forward on one packed q/k/v buffer (widened once).
pub(crate) fn attention_qkv<S: BackendStorage>(qkv: &S, a: AttnArgs<'_, S>) -> Result<(S, S)> {
    const OP: &str = "attention";
    let w = Wide::new(OP, &a, None)?;
    let (out, lse) = up(OP, qkv)?.attention_qkv(w.args(a))?;
    Ok((down(out)?, lse))
}

pub(crate) type AttnGrads<S> = (S, S, S, Option<S>);

/// Attention backward, separate q, k, v: (dq, dk, dv, dbias), each rounded.
pub(crate) fn attention_backward<S: BackendStorage>(
    q: &S,
    k: &S,
    v: &S,
    saved: AttnSaved<'_, S>,
    a: AttnArgs<'_, S>,
) -> Result<AttnGrads<S>> {
    const OP: &str = "attention_backward";
    let w = Wide::new(OP, &a, Some(&saved))?;
    let (q, k, v) = (up(OP, q)?, up(OP, k)?, up(OP, v)?);
    let (dq, dk, dv, db) = q.attention_backward(&k, &v, w.saved(saved), w.args(a))?;
    Ok((down(dq)?, down(dk)?, down(dv)?, db.map(down).transpose()?))
}

/// Attention backward on one packed buffer: (dqkv, dbias), each rounded.
pub(crate) fn attention_qkv_backward<S: BackendStorage>(
    qkv: &S,
    saved: AttnSaved<'_, S>,
    a: AttnArgs<'_, S>,
) -> Result<(S, Option<S>)> {
    const OP: &str = "attention_backward";
    let w = Wide::new(OP, &a, Some(&saved))?;
    let (d, db) = up(OP, qkv)?.attention_qkv_backward(w.saved(saved), w.args(a))?;
    Ok((down(d)?, db.map(down).transpose()?))
}
