//! What each profiled op costs, from its shapes: the FLOPs it executes and the bytes it
//! must move, forward and backward, and the category it is summed under. This file is
//! the one table of both; the ops call these formulas through `Span::cost` (evaluated
//! only while profiling), and `bench` turns them into a roofline per op.
//!
//! Bytes are the compulsory traffic: each input read once, each output written once
//! (intermediates a fused kernel keeps on chip, or an unfused path writes and reads back,
//! are not counted: the gap between the two is what a kernel could still win). FLOPs
//! count a multiply-add as 2 and an exp, erf, tanh or sqrt as 1, and include the work an
//! op recomputes: the attention backward's recomputed scores (FlashAttention-2, Dao
//! 2023, §3.1.2: five GEMMs backward against two forward), `act_linear`'s recomputed
//! activation. Checkpointing's recomputed forward is not folded into a formula: the
//! profiler times each recomputed op under its own name (`linear.recompute`, ...), with
//! its forward cost. A backward that needs a gradient only for some inputs costs only
//! what those gradients take (`tracks`, per input, in the op's input order).

use crate::backend::{BinaryOp, UnaryOp};
use crate::shape::DType;

/// FLOPs and bytes of one call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Work {
    pub flops: f64,
    pub bytes: f64,
}

impl std::ops::Add for Work {
    type Output = Work;
    fn add(self, o: Work) -> Work {
        Work {
            flops: self.flops + o.flops,
            bytes: self.bytes + o.bytes,
        }
    }
}

impl std::ops::AddAssign for Work {
    fn add_assign(&mut self, o: Work) {
        *self = *self + o;
    }
}

/// A call's forward work and the work of its backward node.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OpCost {
    pub fwd: Work,
    pub bwd: Work,
}

fn w(flops: f64, bytes: f64) -> Work {
    Work { flops, bytes }
}

/// `n` elements of `dt` in bytes.
fn by(n: usize, dt: DType) -> f64 {
    (n * dt.size_in_bytes()) as f64
}

/// 1.0 when the flag is set.
fn on(b: bool) -> f64 {
    f64::from(u8::from(b))
}

/// The summing categories of the roofline and of the comparison with PyTorch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    Gemm,
    Attention,
    Norm,
    Elementwise,
    Loss,
    Optimizer,
    Copies,
}

impl Category {
    pub const ALL: [Category; 7] = [
        Category::Gemm,
        Category::Attention,
        Category::Norm,
        Category::Elementwise,
        Category::Loss,
        Category::Optimizer,
        Category::Copies,
    ];

    /// The name in the printed table and the JSON (`tools/torch_baseline.py` writes the
    /// same names).
    pub fn name(self) -> &'static str {
        match self {
            Category::Gemm => "gemm",
            Category::Attention => "attention",
            Category::Norm => "norm",
            Category::Elementwise => "elementwise",
            Category::Loss => "loss",
            Category::Optimizer => "optimizer",
            Category::Copies => "copies",
        }
    }

    /// Whether the op runs on the tensor cores in fp16 (its FLOP peak is then the fp16
    /// tensor peak; every other op's is the fp32 peak).
    pub fn tensor_cores(self) -> bool {
        matches!(self, Category::Gemm | Category::Attention)
    }
}

/// Every op name the engine profiles (forward spans and tape nodes; backward and
/// recompute rows take their op's category), with its category.
pub const CATEGORIES: &[(&str, Category)] = &[
    ("linear", Category::Gemm),
    ("linear_into", Category::Gemm),
    ("act_linear", Category::Gemm),
    ("matmul", Category::Gemm),
    ("attention", Category::Attention),
    // Only the unfused attention path and tests take a softmax alone.
    ("softmax", Category::Attention),
    ("layer_norm", Category::Norm),
    ("dropout_add_layer_norm", Category::Norm),
    ("rms_norm", Category::Norm),
    ("cross_entropy", Category::Loss),
    ("log_softmax_infer", Category::Loss),
    ("argmax_last", Category::Elementwise),
    ("add", Category::Elementwise),
    ("sub", Category::Elementwise),
    ("mul", Category::Elementwise),
    ("div", Category::Elementwise),
    ("affine", Category::Elementwise),
    ("scale", Category::Elementwise),
    ("unary", Category::Elementwise),
    ("relu", Category::Elementwise),
    ("gelu", Category::Elementwise),
    ("gelu_new", Category::Elementwise),
    ("silu", Category::Elementwise),
    ("gated", Category::Elementwise),
    ("dropout", Category::Elementwise),
    ("clamp_i32", Category::Elementwise),
    ("add_bias", Category::Elementwise),
    ("sum_all", Category::Elementwise),
    ("mean_all", Category::Elementwise),
    ("adamw", Category::Optimizer),
    ("adafactor", Category::Optimizer),
    ("embedding", Category::Copies),
    ("index_select", Category::Copies),
    ("to_dtype", Category::Copies),
    ("reshape", Category::Copies),
    ("permute", Category::Copies),
    ("transpose_last2", Category::Copies),
    ("narrow", Category::Copies),
    ("cat", Category::Copies),
];

/// The category of a profiled op (`linear`, `linear.bwd`, `linear.recompute`).
pub fn category(op: &str) -> Option<Category> {
    let base = op
        .strip_suffix(".bwd")
        .or_else(|| op.strip_suffix(".recompute"))
        .unwrap_or(op);
    CATEGORIES.iter().find(|(n, _)| *n == base).map(|(_, c)| *c)
}

/// FLOPs per element of an activation, forward and backward (`dy · f'(x)` from x).
fn act_flops(op: UnaryOp) -> (f64, f64) {
    match op {
        UnaryOp::Relu | UnaryOp::Neg => (1.0, 1.0),
        // 0.5·x·(1 + erf(x/√2)); backward adds the density: exp, 4 more.
        UnaryOp::Gelu => (5.0, 10.0),
        // 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))); backward the tanh's derivative.
        UnaryOp::GeluNew => (9.0, 16.0),
        // x·σ(x): exp, add, div, mul; backward σ(1 + x(1 − σ)).
        UnaryOp::Silu => (4.0, 8.0),
        UnaryOp::Tanh | UnaryOp::Exp => (1.0, 3.0),
        UnaryOp::Sqr => (1.0, 2.0),
    }
}

/// `x [rows, in] · Wᵀ [in, out] (+ b)`, output in `out_dt`; `tracks` = [x, W, b].
/// `x_read` says whether the backward reads x for another reason than dW
/// (`act_linear`'s recompute).
fn linear_parts(
    [rows, out_f, in_f]: [usize; 3],
    bias: bool,
    (dt, out_dt): (DType, DType),
    [tx, tw, tb]: [bool; 3],
    x_read: bool,
) -> OpCost {
    let gemm = 2.0 * (rows * out_f * in_f) as f64;
    let (x, wt, y) = (rows * in_f, out_f * in_f, rows * out_f);
    let fwd = w(
        gemm + on(bias) * y as f64,
        by(x + wt, dt) + on(bias) * by(out_f, dt) + by(y, out_dt),
    );
    let bwd = w(
        (on(tx) + on(tw)) * gemm + on(tb) * y as f64,
        by(y, out_dt)
            + on(tx) * by(wt + x, dt)
            + on(tw || x_read) * by(x, dt)
            + on(tw) * by(wt, dt)
            + on(tb) * by(out_f, dt),
    );
    OpCost { fwd, bwd }
}

/// `linear` (and `linear_into`, whose output is `out_dt`): dims `[rows, out, in]`,
/// `tracks` = [x, W, b].
pub fn linear(dims: [usize; 3], bias: bool, dt: DType, out_dt: DType, tracks: [bool; 3]) -> OpCost {
    linear_parts(dims, bias, (dt, out_dt), tracks, false)
}

/// `act_linear`: `act(x)` then `linear`; the backward recomputes `act(x)` and applies
/// its derivative.
pub fn act_linear(
    act: UnaryOp,
    dims: [usize; 3],
    bias: bool,
    dt: DType,
    tracks: [bool; 3],
) -> OpCost {
    let n = (dims[0] * dims[2]) as f64;
    let (af, ab) = act_flops(act);
    let mut c = linear_parts(dims, bias, (dt, dt), tracks, tracks[0]);
    c.fwd.flops += af * n;
    c.bwd.flops += af * n + on(tracks[0]) * ab * n;
    c
}

/// Batched `A [batch, m, k] · B [batch or 1, k, n]`; `tracks` = [A, B].
pub fn matmul(
    [batch, m, n, k]: [usize; 4],
    b_broadcast: bool,
    dt: DType,
    [ta, tb]: [bool; 2],
) -> OpCost {
    let gemm = 2.0 * (batch * m * n * k) as f64;
    let (a, b, c) = (
        batch * m * k,
        if b_broadcast { k * n } else { batch * k * n },
        batch * m * n,
    );
    OpCost {
        fwd: w(gemm, by(a + b + c, dt)),
        bwd: w(
            (on(ta) + on(tb)) * gemm,
            by(c, dt) + on(ta) * by(b + a, dt) + on(tb) * by(a + b, dt),
        ),
    }
}

/// Attention's shapes and options, as `ops::attention` checks them.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub b: usize,
    pub h: usize,
    pub lq: usize,
    pub lk: usize,
    pub d: usize,
    pub causal: bool,
    pub key_mask: bool,
    pub bias: bool,
}

/// Fused attention: the score and value GEMMs over the (query, key) pairs the masks
/// leave (a causal mask about halves them); `tracks` = [q, k, v, bias] (any of q, k, v
/// for the packed layout). Softmax arithmetic is not counted (the GEMMs dominate).
pub fn attention(s: AttnShape, dt: DType, [tq, tk, tv, tbias]: [bool; 4]) -> OpCost {
    let AttnShape {
        b,
        h,
        lq,
        lk,
        d,
        causal,
        key_mask,
        bias,
    } = s;
    // Query i sees keys j <= i + (lk - lq) under the causal mask (aligned at the end).
    let pairs: usize = if causal {
        (0..lq)
            .map(|i| (i + 1 + lk.saturating_sub(lq)).min(lk))
            .sum()
    } else {
        lq * lk
    };
    let gemm = 2.0 * (b * h * pairs * d) as f64;
    let (q, kv) = (b * lq * h * d, b * lk * h * d);
    let side = on(key_mask) * by(b * lk, DType::I32) + on(bias) * by(h * lq * lk, dt);
    let lse = by(b * h * lq, DType::F32);
    let any = tq || tk || tv || tbias;
    OpCost {
        fwd: w(2.0 * gemm, by(2 * q + 2 * kv, dt) + side + lse),
        bwd: if any {
            w(
                5.0 * gemm,
                // reads q, k, v, o, dO, lse and the masks; writes dq, dk, dv, dbias.
                by(3 * q + 2 * kv, dt)
                    + side
                    + lse
                    + on(tq) * by(q, dt)
                    + (on(tk) + on(tv)) * by(kv, dt)
                    + on(tbias) * by(h * lq * lk, dt),
            )
        } else {
            Work::default()
        },
    }
}

/// Which norm, for [`norm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// LayerNorm: gamma and beta.
    Layer,
    /// `LayerNorm(dropout(a) + residual)`, with its dropout probability on or off.
    DropoutAddLayer { dropout: bool },
    /// T5's RMSNorm: gamma only.
    Rms,
}

/// A norm over the last dimension of `[rows, cols]`; statistics are f32, one or two per
/// row. The backward writes every parameter's gradient (they are the model's weights).
pub fn norm(kind: NormKind, rows: usize, cols: usize, dt: DType, tracks_x: bool) -> OpCost {
    let n = (rows * cols) as f64;
    let x = by(rows * cols, dt);
    let (params, stats, fwd_flops, bwd_flops) = match kind {
        NormKind::Layer => (2, 2, 8.0 * n, 12.0 * n),
        NormKind::DropoutAddLayer { dropout } => (2, 2, (9.0 + on(dropout)) * n, 12.0 * n),
        NormKind::Rms => (1, 1, 4.0 * n, 8.0 * n),
    };
    let (gamma, p) = (by(cols, dt), by(params * cols, dt));
    let st = by(stats * rows, DType::F32);
    match kind {
        NormKind::DropoutAddLayer { dropout } => OpCost {
            // reads a, residual; writes y and the sum it keeps for backward.
            fwd: w(fwd_flops, 4.0 * x + p + st),
            // reads the sum and dy; writes d(sum) and, under dropout, d(a).
            bwd: w(
                bwd_flops + on(dropout) * n,
                3.0 * x + on(dropout) * x + gamma + p + st,
            ),
        },
        // reads x and dy; writes dx when x tracks.
        _ => OpCost {
            fwd: w(fwd_flops, 2.0 * x + p + st),
            bwd: w(bwd_flops, 2.0 * x + on(tracks_x) * x + gamma + p + st),
        },
    }
}

/// Softmax over the last dimension of `n` elements in `rows` rows.
pub fn softmax(n: usize, dt: DType) -> OpCost {
    let x = by(n, dt);
    OpCost {
        fwd: w(4.0 * n as f64, 2.0 * x),
        bwd: w(4.0 * n as f64, 3.0 * x),
    }
}

/// Row-wise argmax of `[rows, cols]`: one comparison per element, one i32 per row.
pub fn argmax_last(rows: usize, cols: usize, dt: DType) -> OpCost {
    OpCost {
        fwd: w(
            (rows * cols) as f64,
            by(rows * cols, dt) + by(rows, DType::I32),
        ),
        bwd: Work::default(),
    }
}

/// Softmax cross-entropy of `[rows, vocab]` logits against i32 targets; f32 lse kept.
pub fn cross_entropy(rows: usize, vocab: usize, dt: DType) -> OpCost {
    let n = (rows * vocab) as f64;
    let small = by(rows, DType::I32) + by(rows, DType::F32) + 4.0;
    OpCost {
        fwd: w(4.0 * n, by(rows * vocab, dt) + small),
        bwd: w(3.0 * n, 2.0 * by(rows * vocab, dt) + small),
    }
}

/// Gathering `ids` rows of a `[table_rows, cols]` table: only the gathered rows are
/// read; the backward scatter-adds into a whole zeroed table gradient.
pub fn gather(ids: usize, table_rows: usize, cols: usize, dt: DType) -> OpCost {
    let g = by(ids * cols, dt) + by(ids, DType::I32);
    OpCost {
        fwd: w(0.0, g + by(ids * cols, dt)),
        bwd: w((ids * cols) as f64, g + by(table_rows * cols, dt)),
    }
}

/// `a op b` on `n` elements; `tracks` = [a, b]. Add's gradients are the incoming one
/// itself (no traffic).
pub fn binary(op: BinaryOp, n: usize, dt: DType, [ta, tb]: [bool; 2]) -> OpCost {
    let (x, nf) = (by(n, dt), n as f64);
    let bwd = match op {
        BinaryOp::Add => Work::default(),
        BinaryOp::Sub => w(on(tb) * nf, on(tb) * 2.0 * x),
        // da = g·b, db = g·a.
        BinaryOp::Mul => w((on(ta) + on(tb)) * nf, x + 2.0 * (on(ta) + on(tb)) * x),
        // da = g / b, db = −g·a / b².
        BinaryOp::Div => w(
            (on(ta) + 4.0 * on(tb)) * nf,
            2.0 * x + on(ta) * x + on(tb) * 2.0 * x,
        ),
    };
    OpCost {
        fwd: w(nf, 3.0 * x),
        bwd,
    }
}

/// `x·mul + add` on `n` elements (`scale` too); the backward multiplies only.
pub fn affine(n: usize, dt: DType) -> OpCost {
    OpCost {
        fwd: w(2.0 * n as f64, 2.0 * by(n, dt)),
        bwd: w(n as f64, 2.0 * by(n, dt)),
    }
}

/// An activation on `n` elements; the backward reads x and dy.
pub fn unary(op: UnaryOp, n: usize, dt: DType) -> OpCost {
    let (f, b) = act_flops(op);
    OpCost {
        fwd: w(f * n as f64, 2.0 * by(n, dt)),
        bwd: w(b * n as f64, 3.0 * by(n, dt)),
    }
}

/// `act(gate) ⊙ lin` on `n` elements each; the backward writes both gradients.
pub fn gated(op: UnaryOp, n: usize, dt: DType) -> OpCost {
    let (f, b) = act_flops(op);
    OpCost {
        fwd: w((f + 1.0) * n as f64, 3.0 * by(n, dt)),
        bwd: w((b + 2.0) * n as f64, 5.0 * by(n, dt)),
    }
}

/// Dropout on `n` elements (the mask a hash of the index: nothing kept); free at p = 0.
pub fn dropout(n: usize, p: f32, dt: DType) -> OpCost {
    if p <= 0.0 {
        return OpCost::default();
    }
    let c = w(n as f64, 2.0 * by(n, dt));
    OpCost { fwd: c, bwd: c }
}

/// Clamping `n` i32 values (integer work: no FLOPs).
pub fn clamp_i32(n: usize) -> OpCost {
    OpCost {
        fwd: w(0.0, 2.0 * by(n, DType::I32)),
        bwd: Work::default(),
    }
}

/// `x [rows, cols] + b [cols]`; the backward sums dy's rows for the bias (x's gradient
/// is dy itself).
pub fn add_bias(rows: usize, cols: usize, dt: DType, tracks_bias: bool) -> OpCost {
    let n = rows * cols;
    OpCost {
        fwd: w(n as f64, by(2 * n + cols, dt)),
        bwd: w(
            on(tracks_bias) * n as f64,
            on(tracks_bias) * by(n + cols, dt),
        ),
    }
}

/// Sum (or mean) of `n` elements to one; the backward fills `n`.
pub fn sum_all(n: usize, dt: DType) -> OpCost {
    OpCost {
        fwd: w(n as f64, by(n + 1, dt)),
        bwd: w(0.0, by(n + 1, dt)),
    }
}

/// A cast of `n` elements; the gradient is cast back. Free when the dtype is unchanged.
pub fn cast(n: usize, from: DType, to: DType) -> OpCost {
    if from == to {
        return OpCost::default();
    }
    let c = w(0.0, by(n, from) + by(n, to));
    OpCost { fwd: c, bwd: c }
}

/// A copy of `n_out` elements out of `n_in` (permute, narrow, cat); the backward writes
/// the whole input gradient (narrow pads with zeros) from dy.
pub fn copy(n_in: usize, n_out: usize, dt: DType) -> OpCost {
    OpCost {
        fwd: w(0.0, by(n_out, dt) * 2.0),
        bwd: w(0.0, by(n_out, dt) + by(n_in, dt)),
    }
}

/// The weights an optimizer step reads and writes: the f32 master and the working copy
/// where there is a master (read and written, written), else the parameter itself.
fn step_weights(n: usize, param: DType, master: bool) -> f64 {
    if master {
        2.0 * by(n, DType::F32) + by(n, param)
    } else {
        2.0 * by(n, param)
    }
}

/// One AdamW step over `n` parameters with a gradient: the global norm (2 FLOPs per
/// element) and the update (about 14: two moment updates, bias corrections, sqrt, the
/// division, weight decay, the step). Reads each gradient, both f32 moments and the
/// weights (the f32 master where there is one); writes the moments and the weights
/// (the master and the working copy).
pub fn adamw(n: usize, param: DType, grad: DType, master: bool) -> OpCost {
    let moments = 2.0 * by(n, DType::F32);
    OpCost {
        fwd: w(
            16.0 * n as f64,
            by(n, grad) + 2.0 * moments + step_weights(n, param, master),
        ),
        bwd: Work::default(),
    }
}

/// One Adafactor step over `n` parameters with a gradient and `state` f32 state
/// elements (the row and column means of a factored tensor, the full second moment of a
/// 1-D one, the first moment with `beta1`). FLOPs per element: the global norm (2),
/// g² + eps1 into the running means (3), the parameter's RMS (2), the update g/√v̂
/// formed twice, once for its RMS and once to apply it (2 × 4, plus 2 for the RMS), its
/// clip and scale (1), weight decay and the step (3); 3 more for the first moment's
/// average. Reads each gradient, the state and the weights once; writes the state and
/// the weights (compulsory traffic: the second pass over the gradient is not counted).
pub fn adafactor(
    n: usize,
    state: usize,
    param: DType,
    grad: DType,
    master: bool,
    beta1: bool,
) -> OpCost {
    OpCost {
        fwd: w(
            (21.0 + 3.0 * on(beta1)) * n as f64,
            by(n, grad) + 2.0 * by(state, DType::F32) + step_weights(n, param, master),
        ),
        bwd: Work::default(),
    }
}

#[cfg(test)]
#[path = "cost_tests.rs"]
mod tests;
