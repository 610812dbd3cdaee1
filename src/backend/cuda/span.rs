//! Host side of kernels/span.cu: QA span search on the device, top-k copied back.
//!
//! Only rows × top_k candidates (start, end, score, logit sum) cross to the host; empty
//! slots (fewer legal spans than top_k) come back with score -1 and are dropped.

use super::context::{cfg_blocks, n64, Arg};
use super::{len_err, sfx, CudaStorage};
use crate::backend::{BackendStorage, SpanCandidate};
use crate::error::{Error, Result};
use crate::shape::DType;

/// Per-thread candidate list length in the kernel (FB_SPAN_MAX_K).
const MAX_TOP_K: usize = 32;

pub fn span_search(
    start: &CudaStorage,
    end: &CudaStorage,
    allowed: &CudaStorage,
    cols: usize,
    max_len: usize,
    top_k: usize,
) -> Result<Vec<SpanCandidate>> {
    let op = "span_search";
    let s = sfx(op, start.dtype())?;
    start.check_pair(end, op)?;
    start.check_pair(allowed, op)?;
    start.check_dtype(end, op)?;
    if allowed.dtype() != DType::I32 {
        return Err(Error::DType {
            op,
            expected: "i32 allowed mask",
            got: allowed.dtype(),
        });
    }
    if cols == 0 || !start.len().is_multiple_of(cols) {
        return Err(len_err(op, cols, start.len()));
    }
    if top_k > MAX_TOP_K {
        return Err(Error::msg(format!(
            "span_search: top_k {top_k} > {MAX_TOP_K} is not supported on CUDA"
        )));
    }
    if cols > 46_000 {
        return Err(Error::msg(format!(
            "span_search: {cols} columns is more than the kernel indexes"
        )));
    }
    let rows = start.len() / cols;
    if rows == 0 || top_k == 0 || max_len == 0 {
        return Ok(Vec::new());
    }
    let dev = start.dev();
    let n = rows * top_k;
    let o_start = CudaStorage::alloc(dev, n, DType::I32)?;
    let o_end = CudaStorage::alloc(dev, n, DType::I32)?;
    let o_score = CudaStorage::alloc(dev, n, DType::F32)?;
    let o_sum = CudaStorage::alloc(dev, n, DType::F32)?;
    let span = [Arg::I32(max_len.min(cols) as i32), Arg::I32(top_k as i32)];
    dev.launch_bufs(
        &format!("fb_span_search_{s}"),
        cfg_blocks(rows, 128),
        &[&o_start, &o_end, &o_score, &o_sum, start, end, allowed],
        &[&[n64(rows), n64(cols)][..], &span].concat(),
    )?;
    let (st, en) = (o_start.to_vec_i32()?, o_end.to_vec_i32()?);
    let (sc, ls) = (o_score.to_vec_f32()?, o_sum.to_vec_f32()?);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if sc[i] < 0.0 || st[i] < 0 || en[i] < 0 {
            continue;
        }
        out.push(SpanCandidate {
            row: i / top_k,
            start: st[i] as usize,
            end: en[i] as usize,
            score: sc[i],
            logit_sum: ls[i],
        });
    }
    Ok(out)
}
