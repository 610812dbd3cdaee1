//! Host side of kernels/norm.cu: LayerNorm and RMSNorm, forward and backward.
//!
//! Row statistics (mean, rstd) are F32 whatever the activation dtype; gamma/beta share
//! the activation dtype (the f16 working copy in mixed precision). The parameter
//! gradients are column reductions done by a second kernel with a fixed order.

use super::context::{cfg_rows, Arg};
use super::reduce::{cfg_col_chunks, col_chunk, col_finish};
use super::{expect_buf, rows_of, sfx, CudaStorage};
use crate::backend::BackendStorage;
use crate::error::Result;
use crate::shape::DType;

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
            cfg_rows(rows, cols),
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
    let dgamma = CudaStorage::alloc(dev, cols, x.dtype())?;
    let dbeta = CudaStorage::alloc(dev, cols, x.dtype())?;
    let (r, c) = (Arg::I64(rows as i64), Arg::I64(cols as i64));
    if rows > 0 {
        dev.launch(
            &format!("fb_layer_norm_bwd_{s}"),
            cfg_rows(rows, cols),
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
            r,
            c,
            Arg::I64(chunk as i64),
        ],
    )?;
    col_finish(&dgamma, &pg, chunks, cols)?;
    col_finish(&dbeta, &pb, chunks, cols)?;
    Ok((dx, dgamma, dbeta))
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
            cfg_rows(rows, cols),
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
            cfg_rows(rows, cols),
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
