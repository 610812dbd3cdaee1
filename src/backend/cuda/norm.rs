//! Host side of kernels/norm.cu: LayerNorm and RMSNorm, forward and backward, and the
//! fused dropout + residual add + LayerNorm of the post-norm encoder layers.
//!
//! Row statistics (mean, rstd) are F32 whatever the activation dtype; gamma/beta share
//! the activation dtype (the f16 working copy in mixed precision). The parameter
//! gradients are column reductions done by a second kernel with a fixed order.

use super::context::{cfg_norm_rows, n64, Arg};
use super::reduce::{cfg_col_chunks, col_chunk, col_finish};
use super::{expect_buf, rows_of, sfx, CudaStorage};
use crate::backend::{BackendStorage, ResidualNorm};
use crate::error::Result;
use crate::shape::DType;

/// Suffix and row count of a norm over `x` in rows of `cols`, with gamma `[cols]` checked.
fn norm_rows(
    x: &CudaStorage,
    gamma: &CudaStorage,
    cols: usize,
    op: &'static str,
) -> Result<(&'static str, usize)> {
    let s = sfx(op, x.dtype())?;
    let rows = rows_of(x, cols, op)?;
    expect_buf(gamma, x, cols, x.dtype(), op)?;
    Ok((s, rows))
}

/// [`norm_rows`] of a backward, which also checks the saved statistics (mean, where the
/// norm has one, and rstd: F32 `[rows]`) and `dy` (like `x`).
fn backward_rows(
    x: &CudaStorage,
    gamma: &CudaStorage,
    (mean, rstd): (Option<&CudaStorage>, &CudaStorage),
    dy: &CudaStorage,
    cols: usize,
    op: &'static str,
) -> Result<(&'static str, usize)> {
    let (s, rows) = norm_rows(x, gamma, cols, op)?;
    for stat in mean.into_iter().chain([rstd]) {
        expect_buf(stat, x, rows, DType::F32, op)?;
    }
    expect_buf(dy, x, x.len(), x.dtype(), op)?;
    Ok((s, rows))
}

/// Launch the one-block-per-row kernel `fb_{kernel}_{s}` with (bufs..., rows, cols,
/// extra...); nothing to do without rows.
fn launch_rows(
    kernel: &str,
    s: &str,
    (rows, cols): (usize, usize),
    bufs: &[&CudaStorage],
    extra: &[Arg],
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let scalars = [&[n64(rows), n64(cols)], extra].concat();
    let name = format!("fb_{kernel}_{s}");
    bufs[0]
        .dev()
        .launch_bufs(&name, cfg_norm_rows(rows, cols), bufs, &scalars)
}

pub fn layer_norm(
    x: &CudaStorage,
    gamma: &CudaStorage,
    beta: &CudaStorage,
    cols: usize,
    eps: f64,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    let op = "layer_norm";
    let (s, rows) = norm_rows(x, gamma, cols, op)?;
    expect_buf(beta, x, cols, x.dtype(), op)?;
    let dev = x.dev();
    let y = CudaStorage::alloc(dev, x.len(), x.dtype())?;
    let mean = CudaStorage::alloc(dev, rows, DType::F32)?;
    let rstd = CudaStorage::alloc(dev, rows, DType::F32)?;
    let bufs = [&y, &mean, &rstd, x, gamma, beta];
    launch_rows(
        "layer_norm_fwd",
        s,
        (rows, cols),
        &bufs,
        &[Arg::F32(eps as f32)],
    )?;
    Ok((y, mean, rstd))
}

pub fn layer_norm_backward(
    x: &CudaStorage,
    gamma: &CudaStorage,
    mean: &CudaStorage,
    rstd: &CudaStorage,
    dy: &CudaStorage,
    cols: usize,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    let op = "layer_norm_backward";
    let (s, rows) = backward_rows(x, gamma, (Some(mean), rstd), dy, cols, op)?;
    let dx = CudaStorage::alloc(x.dev(), x.len(), x.dtype())?;
    let bufs = [&dx, x, gamma, mean, rstd, dy];
    launch_rows("layer_norm_bwd", s, (rows, cols), &bufs, &[])?;
    let (dgamma, dbeta) = ln_param_grads(x, mean, rstd, dy, rows, cols)?;
    Ok((dx, dgamma, dbeta))
}

/// dgamma of a norm over `x` (its input) from `dy`, and dbeta when `mean` is given
/// (LayerNorm; RMSNorm has neither): per-chunk column partials, then a fixed-order finish.
fn param_grads(
    x: &CudaStorage,
    mean: Option<&CudaStorage>,
    rstd: &CudaStorage,
    dy: &CudaStorage,
    rows: usize,
    cols: usize,
) -> Result<(CudaStorage, Option<CudaStorage>)> {
    let s = sfx("norm_backward", x.dtype())?;
    let dev = x.dev();
    let dgamma = CudaStorage::alloc(dev, cols, x.dtype())?;
    let dbeta = mean
        .map(|_| CudaStorage::alloc(dev, cols, x.dtype()))
        .transpose()?;
    let (chunk, chunks) = col_chunk(rows);
    let pg = CudaStorage::alloc(dev, chunks * cols, DType::F32)?;
    let pb = mean
        .map(|_| CudaStorage::alloc(dev, chunks * cols, DType::F32))
        .transpose()?;
    let or_null = |b: Option<&CudaStorage>| Arg::Ptr(b.map_or(0, |b| b.ptr()));
    dev.launch(
        &format!("fb_norm_dgamma_{s}"),
        cfg_col_chunks(cols, chunks),
        &[
            Arg::Ptr(pg.ptr()),
            or_null(pb.as_ref()),
            Arg::Ptr(x.ptr()),
            or_null(mean),
            Arg::Ptr(rstd.ptr()),
            Arg::Ptr(dy.ptr()),
            n64(rows),
            n64(cols),
            n64(chunk),
        ],
    )?;
    col_finish(&dgamma, &pg, chunks, cols)?;
    if let (Some(db), Some(pb)) = (&dbeta, &pb) {
        col_finish(db, pb, chunks, cols)?;
    }
    Ok((dgamma, dbeta))
}

/// [`param_grads`] of LayerNorm: (dgamma, dbeta).
fn ln_param_grads(
    x: &CudaStorage,
    mean: &CudaStorage,
    rstd: &CudaStorage,
    dy: &CudaStorage,
    rows: usize,
    cols: usize,
) -> Result<(CudaStorage, CudaStorage)> {
    match param_grads(x, Some(mean), rstd, dy, rows, cols)? {
        (dgamma, Some(dbeta)) => Ok((dgamma, dbeta)),
        (_, None) => unreachable!("a mean gives dbeta"),
    }
}

/// The fused kernels' dropout parameters: p, the inverted-dropout scale, the packed key.
fn dropout_args(p: f32, scale: f32, seed: u64) -> [Arg; 3] {
    let key = crate::backend::dropout_key_packed(seed);
    [Arg::F32(p), Arg::F32(scale), Arg::U64(key)]
}

/// The inverted-dropout scale for `p` (as the unfused dropout kernel gets it).
fn dropout_scale(op: &str, p: f32) -> Result<f32> {
    if !(0.0..1.0).contains(&p) {
        return Err(crate::error::Error::msg(format!(
            "{op}: dropout p must be in [0, 1), got {p}"
        )));
    }
    Ok(1.0 / (1.0 - p))
}

/// `y = LayerNorm(dropout(a, p, seed) + res)` in one pass: returns (y, s, mean, rstd)
/// with `s` the sum LayerNorm normalised (its saved input). Equal bit for bit to
/// dropout, add and [`layer_norm`] in sequence.
pub fn add_layer_norm(
    a: &CudaStorage,
    res: &CudaStorage,
    gamma: &CudaStorage,
    beta: &CudaStorage,
    ResidualNorm { cols, eps, p, seed }: ResidualNorm,
) -> Result<(CudaStorage, CudaStorage, CudaStorage, CudaStorage)> {
    let op = "dropout_add_layer_norm";
    let (s, rows) = norm_rows(a, gamma, cols, op)?;
    expect_buf(res, a, a.len(), a.dtype(), op)?;
    expect_buf(beta, a, cols, a.dtype(), op)?;
    let scale = dropout_scale(op, p)?;
    let dev = a.dev();
    let y = CudaStorage::alloc(dev, a.len(), a.dtype())?;
    let sum = CudaStorage::alloc(dev, a.len(), a.dtype())?;
    let mean = CudaStorage::alloc(dev, rows, DType::F32)?;
    let rstd = CudaStorage::alloc(dev, rows, DType::F32)?;
    let bufs = [&y, &sum, &mean, &rstd, a, res, gamma, beta];
    let extra = [&[Arg::F32(eps as f32)][..], &dropout_args(p, scale, seed)].concat();
    launch_rows("add_layer_norm_fwd", s, (rows, cols), &bufs, &extra)?;
    Ok((y, sum, mean, rstd))
}

/// Backward of [`add_layer_norm`] from its saved sum `s`: returns (ds, da, dgamma,
/// dbeta) where ds is the residual's gradient and da the dropout input's (`None` when
/// p = 0: it is ds itself).
pub fn add_layer_norm_backward(
    s: &CudaStorage,
    gamma: &CudaStorage,
    mean: &CudaStorage,
    rstd: &CudaStorage,
    dy: &CudaStorage,
    ResidualNorm { cols, p, seed, .. }: ResidualNorm,
) -> Result<(CudaStorage, Option<CudaStorage>, CudaStorage, CudaStorage)> {
    let op = "dropout_add_layer_norm_backward";
    if p == 0.0 {
        let (ds, dg, db) = layer_norm_backward(s, gamma, mean, rstd, dy, cols)?;
        return Ok((ds, None, dg, db));
    }
    let (sf, rows) = backward_rows(s, gamma, (Some(mean), rstd), dy, cols, op)?;
    let scale = dropout_scale(op, p)?;
    let dev = s.dev();
    let ds = CudaStorage::alloc(dev, s.len(), s.dtype())?;
    let da = CudaStorage::alloc(dev, s.len(), s.dtype())?;
    let bufs = [&ds, &da, s, gamma, mean, rstd, dy];
    let drop = dropout_args(p, scale, seed);
    launch_rows("add_layer_norm_bwd", sf, (rows, cols), &bufs, &drop)?;
    let (dg, db) = ln_param_grads(s, mean, rstd, dy, rows, cols)?;
    Ok((ds, Some(da), dg, db))
}

pub fn rms_norm(
    x: &CudaStorage,
    gamma: &CudaStorage,
    cols: usize,
    eps: f64,
) -> Result<(CudaStorage, CudaStorage)> {
    let (s, rows) = norm_rows(x, gamma, cols, "rms_norm")?;
    let y = CudaStorage::alloc(x.dev(), x.len(), x.dtype())?;
    let rstd = CudaStorage::alloc(x.dev(), rows, DType::F32)?;
    let eps = Arg::F32(eps as f32);
    launch_rows(
        "rms_norm_fwd",
        s,
        (rows, cols),
        &[&y, &rstd, x, gamma],
        &[eps],
    )?;
    Ok((y, rstd))
}

pub fn rms_norm_backward(
    x: &CudaStorage,
    gamma: &CudaStorage,
    rstd: &CudaStorage,
    dy: &CudaStorage,
    cols: usize,
) -> Result<(CudaStorage, CudaStorage)> {
    let op = "rms_norm_backward";
    let (s, rows) = backward_rows(x, gamma, (None, rstd), dy, cols, op)?;
    let dx = CudaStorage::alloc(x.dev(), x.len(), x.dtype())?;
    launch_rows(
        "rms_norm_bwd",
        s,
        (rows, cols),
        &[&dx, x, gamma, rstd, dy],
        &[],
    )?;
    let (dgamma, _) = param_grads(x, None, rstd, dy, rows, cols)?;
    Ok((dx, dgamma))
}
