//! Host side of kernels/reduce.cu: column sums (bias gradients) and whole-buffer sums.
//!
//! Whole-buffer sums run as a fixed grid of partial sums followed by one block that
//! adds them in order, so the result does not depend on scheduling.

use cudarc::driver::LaunchConfig;

use super::context::Arg;
use super::{len_err, sfx, CudaStorage};
use crate::backend::BackendStorage;
use crate::error::Result;
use crate::shape::DType;

/// Rows per chunk of a two-stage column reduction over `rows`: enough chunks to fill the
/// GPU (a [12288, 768] reduction gets 48 × 24 blocks), each at least 64 rows.
pub(crate) fn col_chunk(rows: usize) -> (usize, usize) {
    let chunk = rows.div_ceil(64).max(64).min(rows.max(1));
    (chunk, rows.div_ceil(chunk).max(1))
}

/// Launch config of a chunked column reduction: 32 columns × 8 row lanes per block.
pub(crate) fn cfg_col_chunks(cols: usize, chunks: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (cols.div_ceil(32).max(1) as u32, chunks as u32, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    }
}

/// `out[c] = Σ_k part[k, c]` in fixed order, cast to `out`'s dtype.
pub(crate) fn col_finish(
    out: &CudaStorage,
    part: &CudaStorage,
    chunks: usize,
    cols: usize,
) -> Result<()> {
    let s = sfx("col_finish", out.dtype())?;
    out.dev().launch(
        &format!("fb_col_finish_{s}"),
        super::context::cfg_1d(cols),
        &[
            Arg::Ptr(out.ptr()),
            Arg::Ptr(part.ptr()),
            Arg::I64(chunks as i64),
            Arg::I64(cols as i64),
        ],
    )
}

pub fn sum_rows(x: &CudaStorage, cols: usize) -> Result<CudaStorage> {
    let s = sfx("sum_rows", x.dtype())?;
    if cols == 0 || !x.len().is_multiple_of(cols) {
        return Err(len_err("sum_rows", cols, x.len()));
    }
    let rows = x.len() / cols;
    let out = CudaStorage::alloc(x.dev(), cols, x.dtype())?;
    let (chunk, chunks) = col_chunk(rows);
    let part = CudaStorage::alloc(x.dev(), chunks * cols, DType::F32)?;
    x.dev().launch(
        &format!("fb_sum_rows_{s}"),
        cfg_col_chunks(cols, chunks),
        &[
            Arg::Ptr(part.ptr()),
            Arg::Ptr(x.ptr()),
            Arg::I64(rows as i64),
            Arg::I64(cols as i64),
            Arg::I64(chunk as i64),
        ],
    )?;
    col_finish(&out, &part, chunks, cols)?;
    Ok(out)
}

/// f32 partial sums (one per block of 256 threads, at most 1024) of a whole-buffer sum
/// over `len` elements.
pub(crate) fn sum_partials(len: usize) -> usize {
    len.div_ceil(256).clamp(1, 1024)
}

/// Sum (or sum of squares) of every element. The sum keeps the input dtype; the sum
/// of squares is always F32 (it feeds gradient-norm clipping, where f16 overflows).
pub fn sum_all(x: &CudaStorage, square: bool) -> Result<CudaStorage> {
    let s = sfx(if square { "sum_sq" } else { "sum_all" }, x.dtype())?;
    let blocks = sum_partials(x.len());
    let partials = CudaStorage::alloc(x.dev(), blocks, DType::F32)?;
    x.dev().launch(
        &format!("fb_partial_sum_{s}"),
        LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        },
        &[
            Arg::Ptr(partials.ptr()),
            Arg::Ptr(x.ptr()),
            Arg::I64(x.len() as i64),
            Arg::I32(square as i32),
        ],
    )?;
    let out_dtype = if square { DType::F32 } else { x.dtype() };
    let out = CudaStorage::alloc(x.dev(), 1, out_dtype)?;
    x.dev().launch(
        &format!("fb_final_sum_{}", sfx("sum_all", out_dtype)?),
        LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        },
        &[
            Arg::Ptr(out.ptr()),
            Arg::Ptr(partials.ptr()),
            Arg::I32(blocks as i32),
        ],
    )?;
    Ok(out)
}
