//! Host side of kernels/norm.cu: LayerNorm and RMSNorm, forward and backward, and the
//! fused dropout + residual add + LayerNorm of the post-norm encoder layers.
//!
//! Row statistics (mean, rstd) are F32 whatever the activation dtype; gamma/beta share
//! the activation dtype (the f16 working copy in mixed precision). The parameter
//! gradients are column reductions done by a second kernel with a fixed order.

use super::context::{cfg_norm_rows, Arg, Dev};
use super::reduce::{cfg_col_chunks, col_chunk, col_finish};
use super::{expect_buf, rows_of, sfx, CudaStorage};
use crate::backend::BackendStorage;
use crate::error::Result;
use crate::shape::DType;
use std::sync::Arc;

pub fn layer_norm(
    x: &CudaStorage,
    gamma: &CudaStorage,
    beta: &CudaStorage,
    cols: usize,
    eps: f64,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    let op = "layer_norm";
    let s = sfx(op, x.dtype())?;
    let rows = rows_of(x, cols, op)?;
    expect_buf(gamma, x, cols, x.dtype(), op)?;
    expect_buf(beta, x, cols, x.dtype(), op)?;
    let dev = x.dev();
    let y = CudaStorage::alloc(dev, x.len(), x.dtype())?;
    let mean = CudaStorage::alloc(dev, rows, DType::F32)?;
    let rstd = CudaStorage::alloc(dev, rows, DType::F32)?;
    if rows > 0 {
        dev.launch(
            &format!("fb_layer_norm_fwd_{s}"),
            cfg_norm_rows(rows, cols),
            &[
                Arg::Ptr(y.ptr()),
                Arg::Ptr(mean.ptr()),
                Arg::Ptr(rstd.ptr()),
                Arg::Ptr(x.ptr()),
                Arg::Ptr(gamma.ptr()),
                Arg::Ptr(beta.ptr()),
                Arg::I64(rows as i64),
                Arg::I64(cols as i64),
                Arg::F32(eps as f32),
            ],
        )?;
    }
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
    let s = sfx(op, x.dtype())?;
    let rows = rows_of(x, cols, op)?;
    expect_buf(gamma, x, cols, x.dtype(), op)?;
    expect_buf(mean, x, rows, DType::F32, op)?;
    expect_buf(rstd, x, rows, DType::F32, op)?;
    expect_buf(dy, x, x.len(), x.dtype(), op)?;
    let dev = x.dev();
    let dx = CudaStorage::alloc(dev, x.len(), x.dtype())?;
    let (r, c) = (Arg::I64(rows as i64), Arg::I64(cols as i64));
    if rows > 0 {
        dev.launch(
            &format!("fb_layer_norm_bwd_{s}"),
            cfg_norm_rows(rows, cols),
            &[
                Arg::Ptr(dx.ptr()),
                Arg::Ptr(x.ptr()),
                Arg::Ptr(gamma.ptr()),
                Arg::Ptr(mean.ptr()),
                Arg::Ptr(rstd.ptr()),
                Arg::Ptr(dy.ptr()),
                r,
                c,
            ],
        )?;
    }
    let (dgamma, dbeta) = ln_param_grads(dev, x, mean, rstd, dy, rows, cols)?;
    Ok((dx, dgamma, dbeta))
}

/// dgamma, dbeta of LayerNorm over `x` (the normalised input) from `dy`: per-chunk
/// column partials, then a fixed-order finish.
fn ln_param_grads(
    dev: &Arc<Dev>,
    x: &CudaStorage,
    mean: &CudaStorage,
    rstd: &CudaStorage,
    dy: &CudaStorage,
    rows: usize,
    cols: usize,
) -> Result<(CudaStorage, CudaStorage)> {
    let s = sfx("layer_norm_backward", x.dtype())?;
    let dgamma = CudaStorage::alloc(dev, cols, x.dtype())?;
    let dbeta = CudaStorage::alloc(dev, cols, x.dtype())?;
    let (chunk, chunks) = col_chunk(rows);
    let pg = CudaStorage::alloc(dev, chunks * cols, DType::F32)?;
    let pb = CudaStorage::alloc(dev, chunks * cols, DType::F32)?;
    dev.launch(
        &format!("fb_norm_dgamma_{s}"),
        cfg_col_chunks(cols, chunks),
        &[
            Arg::Ptr(pg.ptr()),
            Arg::Ptr(pb.ptr()),
            Arg::Ptr(x.ptr()),
            Arg::Ptr(mean.ptr()),
            Arg::Ptr(rstd.ptr()),
            Arg::Ptr(dy.ptr()),
            Arg::I64(rows as i64),
            Arg::I64(cols as i64),
            Arg::I64(chunk as i64),
        ],
    )?;
    col_finish(&dgamma, &pg, chunks, cols)?;
    col_finish(&dbeta, &pb, chunks, cols)?;
    Ok((dgamma, dbeta))
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
#[allow(clippy::too_many_arguments)]
pub fn add_layer_norm(
    a: &CudaStorage,
    res: &CudaStorage,
    gamma: &CudaStorage,
    beta: &CudaStorage,
    cols: usize,
    eps: f64,
    p: f32,
    seed: u64,
) -> Result<(CudaStorage, CudaStorage, CudaStorage, CudaStorage)> {
    let op = "dropout_add_layer_norm";
    let s = sfx(op, a.dtype())?;
    let rows = rows_of(a, cols, op)?;
    expect_buf(res, a, a.len(), a.dtype(), op)?;
    expect_buf(gamma, a, cols, a.dtype(), op)?;
    expect_buf(beta, a, cols, a.dtype(), op)?;
    let scale = dropout_scale(op, p)?;
    let dev = a.dev();
    let y = CudaStorage::alloc(dev, a.len(), a.dtype())?;
    let sum = CudaStorage::alloc(dev, a.len(), a.dtype())?;
    let mean = CudaStorage::alloc(dev, rows, DType::F32)?;
    let rstd = CudaStorage::alloc(dev, rows, DType::F32)?;
    if rows > 0 {
        dev.launch(
            &format!("fb_add_layer_norm_fwd_{s}"),
            cfg_norm_rows(rows, cols),
            &[
                Arg::Ptr(y.ptr()),
                Arg::Ptr(sum.ptr()),
                Arg::Ptr(mean.ptr()),
                Arg::Ptr(rstd.ptr()),
                Arg::Ptr(a.ptr()),
                Arg::Ptr(res.ptr()),
                Arg::Ptr(gamma.ptr()),
                Arg::Ptr(beta.ptr()),
                Arg::I64(rows as i64),
                Arg::I64(cols as i64),
                Arg::F32(eps as f32),
                Arg::F32(p),
                Arg::F32(scale),
                Arg::U64(crate::backend::dropout_key_packed(seed)),
            ],
        )?;
    }
    Ok((y, sum, mean, rstd))
}

/// Backward of [`add_layer_norm`] from its saved sum `s`: returns (ds, da, dgamma,
/// dbeta) where ds is the residual's gradient and da the dropout input's (`None` when
/// p = 0: it is ds itself).
#[allow(clippy::too_many_arguments)]
pub fn add_layer_norm_backward(
    s: &CudaStorage,
    gamma: &CudaStorage,
    mean: &CudaStorage,
    rstd: &CudaStorage,
    dy: &CudaStorage,
    cols: usize,
    p: f32,
    seed: u64,
) -> Result<(CudaStorage, Option<CudaStorage>, CudaStorage, CudaStorage)> {
    let op = "dropout_add_layer_norm_backward";
    if p == 0.0 {
        let (ds, dg, db) = layer_norm_backward(s, gamma, mean, rstd, dy, cols)?;
        return Ok((ds, None, dg, db));
    }
    let sf = sfx(op, s.dtype())?;
    let rows = rows_of(s, cols, op)?;
    expect_buf(gamma, s, cols, s.dtype(), op)?;
    expect_buf(mean, s, rows, DType::F32, op)?;
    expect_buf(rstd, s, rows, DType::F32, op)?;
    expect_buf(dy, s, s.len(), s.dtype(), op)?;
    let scale = dropout_scale(op, p)?;
    let dev = s.dev();
    let ds = CudaStorage::alloc(dev, s.len(), s.dtype())?;
    let da = CudaStorage::alloc(dev, s.len(), s.dtype())?;
    if rows > 0 {
        dev.launch(
            &format!("fb_add_layer_norm_bwd_{sf}"),
            cfg_norm_rows(rows, cols),
            &[
                Arg::Ptr(ds.ptr()),
                Arg::Ptr(da.ptr()),
                Arg::Ptr(s.ptr()),
                Arg::Ptr(gamma.ptr()),
                Arg::Ptr(mean.ptr()),
                Arg::Ptr(rstd.ptr()),
                Arg::Ptr(dy.ptr()),
                Arg::I64(rows as i64),
                Arg::I64(cols as i64),
                Arg::F32(p),
                Arg::F32(scale),
                Arg::U64(crate::backend::dropout_key_packed(seed)),
            ],
        )?;
    }
    let (dg, db) = ln_param_grads(dev, s, mean, rstd, dy, rows, cols)?;
    Ok((ds, Some(da), dg, db))
}

pub fn rms_norm(
    x: &CudaStorage,
    gamma: &CudaStorage,
    cols: usize,
    eps: f64,
) -> Result<(CudaStorage, CudaStorage)> {
    let op = "rms_norm";
    let s = sfx(op, x.dtype())?;
    let rows = rows_of(x, cols, op)?;
    expect_buf(gamma, x, cols, x.dtype(), op)?;
    let dev = x.dev();
    let y = CudaStorage::alloc(dev, x.len(), x.dtype())?;
    let rstd = CudaStorage::alloc(dev, rows, DType::F32)?;
    if rows > 0 {
        dev.launch(
            &format!("fb_rms_norm_fwd_{s}"),
            cfg_norm_rows(rows, cols),
            &[
                Arg::Ptr(y.ptr()),
                Arg::Ptr(rstd.ptr()),
                Arg::Ptr(x.ptr()),
                Arg::Ptr(gamma.ptr()),
                Arg::I64(rows as i64),
                Arg::I64(cols as i64),
                Arg::F32(eps as f32),
            ],
        )?;
    }
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
    let s = sfx(op, x.dtype())?;
    let rows = rows_of(x, cols, op)?;
    expect_buf(gamma, x, cols, x.dtype(), op)?;
    expect_buf(rstd, x, rows, DType::F32, op)?;
    expect_buf(dy, x, x.len(), x.dtype(), op)?;
    let dev = x.dev();
    let dx = CudaStorage::alloc(dev, x.len(), x.dtype())?;
    let dgamma = CudaStorage::alloc(dev, cols, x.dtype())?;
    let (r, c) = (Arg::I64(rows as i64), Arg::I64(cols as i64));
    if rows > 0 {
        dev.launch(
            &format!("fb_rms_norm_bwd_{s}"),
            cfg_norm_rows(rows, cols),
            &[
                Arg::Ptr(dx.ptr()),
                Arg::Ptr(x.ptr()),
                Arg::Ptr(gamma.ptr()),
                Arg::Ptr(rstd.ptr()),
                Arg::Ptr(dy.ptr()),
                r,
                c,
            ],
        )?;
    }
    let (chunk, chunks) = col_chunk(rows);
    let pg = CudaStorage::alloc(dev, chunks * cols, DType::F32)?;
    dev.launch(
        &format!("fb_norm_dgamma_{s}"),
        cfg_col_chunks(cols, chunks),
        &[
            Arg::Ptr(pg.ptr()),
            Arg::Ptr(0),
            Arg::Ptr(x.ptr()),
            Arg::Ptr(0),
            Arg::Ptr(rstd.ptr()),
            Arg::Ptr(dy.ptr()),
            r,
            c,
            Arg::I64(chunk as i64),
        ],
    )?;
    col_finish(&dgamma, &pg, chunks, cols)?;
    Ok((dx, dgamma))
}
