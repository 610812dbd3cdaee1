//! Host side of kernels/softmax.cu: softmax, log-softmax, fused cross-entropy, argmax.
//!
//! Cross-entropy keeps only the per-row lse (F32) between forward and backward; the
//! backward recomputes probabilities from it. Targets outside [0, cols) that are not
//! ignore_index go to the device error record and are reported at the next read from
//! the device (context.rs, `Dev::check_errors`): no sync per loss call.

use super::context::{cfg_blocks, cfg_rows, n64, Arg};
use super::{expect_buf, rows_of, sfx, CudaStorage};
use crate::backend::BackendStorage;
use crate::error::Result;
use crate::shape::DType;

pub fn softmax(x: &CudaStorage, cols: usize, log: bool) -> Result<CudaStorage> {
    let op = if log { "log_softmax" } else { "softmax" };
    let s = sfx(op, x.dtype())?;
    let rows = rows_of(x, cols, op)?;
    let y = CudaStorage::alloc(x.dev(), x.len(), x.dtype())?;
    if rows > 0 {
        x.dev().launch_bufs(
            &format!("fb_softmax_fwd_{s}"),
            cfg_rows(rows, cols),
            &[&y, x],
            &[n64(rows), n64(cols), Arg::I32(log as i32)],
        )?;
    }
    Ok(y)
}

pub fn softmax_backward(y: &CudaStorage, dy: &CudaStorage, cols: usize) -> Result<CudaStorage> {
    let op = "softmax_backward";
    let s = sfx(op, y.dtype())?;
    let rows = rows_of(y, cols, op)?;
    y.check_pair(dy, op)?;
    expect_buf(dy, y, y.len(), y.dtype(), op)?;
    let dx = CudaStorage::alloc(y.dev(), y.len(), y.dtype())?;
    if rows > 0 {
        y.dev().launch_bufs(
            &format!("fb_softmax_bwd_{s}"),
            cfg_rows(rows, cols),
            &[&dx, y, dy],
            &[n64(rows), n64(cols)],
        )?;
    }
    Ok(dx)
}

/// Mean over non-ignored rows of `row_loss` into `loss` (dtype of the logits) and the
/// non-ignored count into `count` (F32, 1 element).
fn ce_mean(
    x: &CudaStorage,
    s: &str,
    row_loss: &CudaStorage,
    targets: &CudaStorage,
    rows: usize,
    ignore_index: i32,
) -> Result<(CudaStorage, CudaStorage)> {
    // The mean loss is f32 whatever the logits' dtype: a loss scaled by 2^16 for fp16
    // training must not overflow f16 (max 65504), as in torch where autocast's loss is f32.
    let loss = CudaStorage::alloc(x.dev(), 1, DType::F32)?;
    let count = CudaStorage::alloc(x.dev(), 1, DType::F32)?;
    x.dev().launch_bufs(
        &format!("fb_ce_mean_{s}"),
        cfg_blocks(1, 512),
        &[&loss, &count, row_loss, targets],
        &[n64(rows), Arg::I32(ignore_index)],
    )?;
    Ok((loss, count))
}

pub fn cross_entropy(
    x: &CudaStorage,
    targets: &CudaStorage,
    cols: usize,
    ignore_index: i32,
) -> Result<(CudaStorage, CudaStorage)> {
    let op = "cross_entropy";
    let s = sfx(op, x.dtype())?;
    let rows = rows_of(x, cols, op)?;
    expect_buf(targets, x, rows, DType::I32, op)?;
    let dev = x.dev();
    let row_loss = CudaStorage::alloc(dev, rows, DType::F32)?;
    let lse = CudaStorage::alloc(dev, rows, DType::F32)?;
    if rows > 0 {
        let err = dev.err_record();
        dev.launch_bufs(
            &format!("fb_ce_fwd_{s}"),
            cfg_rows(rows, cols),
            &[&row_loss, &lse, x, targets],
            &[n64(rows), n64(cols), Arg::I32(ignore_index), Arg::Ptr(err)],
        )?;
    }
    let (loss, _count) = ce_mean(x, s, &row_loss, targets, rows, ignore_index)?;
    Ok((loss, lse))
}

pub fn cross_entropy_backward(
    x: &CudaStorage,
    targets: &CudaStorage,
    lse: &CudaStorage,
    dloss: &CudaStorage,
    cols: usize,
    ignore_index: i32,
) -> Result<CudaStorage> {
    let op = "cross_entropy_backward";
    let s = sfx(op, x.dtype())?;
    let rows = rows_of(x, cols, op)?;
    expect_buf(targets, x, rows, DType::I32, op)?;
    expect_buf(lse, x, rows, DType::F32, op)?;
    expect_buf(dloss, x, 1, DType::F32, op)?;
    let dev = x.dev();
    // The count of non-ignored rows, by the same fixed-order kernel as the forward.
    let zeros = CudaStorage::zeroed(dev, rows, DType::F32)?;
    let (_unused, count) = ce_mean(x, s, &zeros, targets, rows, ignore_index)?;
    let dx = CudaStorage::alloc(dev, x.len(), x.dtype())?;
    if rows > 0 {
        dev.launch_bufs(
            &format!("fb_ce_bwd_{s}"),
            cfg_rows(rows, cols),
            &[&dx, x, targets, lse, dloss, &count],
            &[n64(rows), n64(cols), Arg::I32(ignore_index)],
        )?;
    }
    Ok(dx)
}

pub fn argmax_last(x: &CudaStorage, cols: usize) -> Result<CudaStorage> {
    let op = "argmax_last";
    let s = sfx(op, x.dtype())?;
    let rows = rows_of(x, cols, op)?;
    let out = CudaStorage::alloc(x.dev(), rows, DType::I32)?;
    if rows > 0 {
        x.dev().launch_bufs(
            &format!("fb_argmax_{s}"),
            cfg_rows(rows, cols),
            &[&out, x],
            &[n64(rows), n64(cols)],
        )?;
    }
    Ok(out)
}
