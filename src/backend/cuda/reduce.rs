//! Host side of kernels/reduce.cu: column sums (bias gradients) and whole-buffer sums.
//!
//! Whole-buffer sums run as a fixed grid of partial sums followed by one block that
//! adds them in order, so the result does not depend on scheduling.

use cudarc::driver::LaunchConfig;

use super::context::{cfg_1d, cfg_blocks, n64, Arg};
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
    out.dev().launch_bufs(
        &format!("fb_col_finish_{s}"),
        cfg_1d(cols),
        &[out, part],
        &[n64(chunks), n64(cols)],
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
    x.dev().launch_bufs(
        &format!("fb_sum_rows_{s}"),
        cfg_col_chunks(cols, chunks),
        &[&part, x],
        &[n64(rows), n64(cols), n64(chunk)],
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
    x.dev().launch_bufs(
        &format!("fb_partial_sum_{s}"),
        cfg_blocks(blocks, 256),
        &[&partials, x],
        &[n64(x.len()), Arg::I32(square as i32)],
    )?;
    let out_dtype = if square { DType::F32 } else { x.dtype() };
    let out = CudaStorage::alloc(x.dev(), 1, out_dtype)?;
    x.dev().launch_bufs(
        &format!("fb_final_sum_{}", sfx("sum_all", out_dtype)?),
        cfg_blocks(1, 256),
        &[&out, &partials],
        &[Arg::I32(blocks as i32)],
    )?;
    Ok(out)
}
