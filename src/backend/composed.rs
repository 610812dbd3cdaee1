//! The fused paths of [`BackendStorage`] as compositions of its primitives: the trait's
//! default bodies (what the CPU runs), and what a backend with a fused kernel falls back
//! to where that kernel declines (CUDA when cuBLASLt has no algorithm; the meta device
//! planning for the CPU).

use super::{BackendStorage, BinaryOp, LinearDims, MatmulSpec, ResidualNorm};
use crate::error::Result;

/// GEMM, then the bias added into a new buffer (the GEMM result and the biased copy
/// coexist for a moment).
pub(crate) fn linear_bias<B: BackendStorage>(
    x: &B,
    w: &B,
    bias: &B,
    LinearDims { rows, out_f, in_f }: LinearDims,
) -> Result<B> {
    x.matmul(w, &MatmulSpec::linear(rows, out_f, in_f))?
        .add_bias(bias, out_f)
}

/// `dW = dyᵀ · x` by GEMM, then `db` by a column sum.
pub(crate) fn linear_wgrad_bgrad<B: BackendStorage>(
    dy: &B,
    x: &B,
    LinearDims { rows, out_f, in_f }: LinearDims,
) -> Result<(B, B)> {
    let dw = dy.matmul(x, &MatmulSpec::linear_wgrad(rows, out_f, in_f))?;
    let db = dy.sum_rows(out_f)?;
    Ok((dw, db))
}

/// Dropout, add, LayerNorm in sequence (the fused kernel rounds where these store, so
/// the results are equal bit for bit).
pub(crate) fn dropout_add_layer_norm<B: BackendStorage>(
    a: &B,
    res: &B,
    gamma: &B,
    beta: &B,
    ResidualNorm { cols, eps, p, seed }: ResidualNorm,
) -> Result<(B, B, B, B)> {
    let s = if p > 0.0 {
        a.dropout(p, seed)?.binary(res, BinaryOp::Add)?
    } else {
        a.binary(res, BinaryOp::Add)?
    };
    let (y, m, rs) = s.layer_norm(gamma, beta, cols, eps)?;
    Ok((y, s, m, rs))
}

/// LayerNorm's backward, then dropout's (the same mask from the seed) for `da`.
pub(crate) fn dropout_add_layer_norm_backward<B: BackendStorage>(
    s: &B,
    gamma: &B,
    mean: &B,
    rstd: &B,
    dy: &B,
    ResidualNorm { cols, p, seed, .. }: ResidualNorm,
) -> Result<(B, Option<B>, B, B)> {
    let (ds, dg, db) = s.layer_norm_backward(gamma, mean, rstd, dy, cols)?;
    let da = if p > 0.0 {
        Some(ds.dropout(p, seed)?)
    } else {
        None
    };
    Ok((ds, da, dg, db))
}
