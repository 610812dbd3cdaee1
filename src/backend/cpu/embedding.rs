//! Row gather and its scatter-add backward: embedding lookup, beam reordering and the
//! embedding-table gradient (mirrors kernels/embedding.cu).
//!
//! The gather is pure data movement, so it works on every dtype (an I32 beam of token
//! ids reorders as easily as an F16 cache). Every id is range-checked before anything
//! is read, so a tokenizer/vocabulary mismatch is a clear error, not a panic. The
//! scatter-add buckets positions by id and gives each table row to one task, so
//! repeated ids never race and the sum order is fixed.

use rayon::prelude::*;

use super::{rows_of, CpuData, CpuStorage, Real};
use crate::error::{Error, Result};

fn check_ids(op: &'static str, ids: &[i32], n: usize) -> Result<()> {
    match ids
        .iter()
        .enumerate()
        .find(|(_, &i)| i < 0 || i as usize >= n)
    {
        Some((pos, &id)) => Err(Error::msg(format!(
            "{op}: id {id} at position {pos} is out of range for a table of {n} rows"
        ))),
        None => Ok(()),
    }
}

fn gather<T: Copy + Send + Sync>(table: &[T], ids: &[i32], cols: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(ids.len() * cols);
    for &i in ids {
        let r = i as usize;
        out.extend_from_slice(&table[r * cols..(r + 1) * cols]);
    }
    out
}

pub(super) fn index_select(
    table: &CpuStorage,
    ids: &CpuStorage,
    cols: usize,
) -> Result<CpuStorage> {
    const OP: &str = "index_select";
    let ids = ids.ints(OP)?;
    let n = rows_of(OP, table.data.len(), cols)?;
    check_ids(OP, ids, n)?;
    Ok(CpuStorage::new(match &table.data {
        CpuData::F32(v) => CpuData::F32(gather(v, ids, cols)),
        CpuData::F64(v) => CpuData::F64(gather(v, ids, cols)),
        CpuData::F16(v) => CpuData::F16(gather(v, ids, cols)),
        CpuData::I32(v) => CpuData::I32(gather(v, ids, cols)),
    }))
}

pub(super) fn index_add<T: Real>(
    dy: &CpuStorage,
    ids: &CpuStorage,
    n: usize,
    cols: usize,
    skip: Option<usize>,
) -> Result<CpuStorage> {
    const OP: &str = "index_add";
    let (dy, ids) = (dy.floats::<T>(OP)?, ids.ints(OP)?);
    let rows = rows_of(OP, dy.len(), cols)?;
    if rows != ids.len() {
        return Err(super::len_err(
            OP,
            "dy (one row per id)",
            ids.len() * cols,
            dy.len(),
        ));
    }
    check_ids(OP, ids, n)?;
    let mut out = vec![T::zero(); n * cols];
    if cols == 0 {
        return Ok(CpuStorage::from_real(out));
    }
    // Bucket the positions by id (counting sort, stable), then each table row sums its
    // own positions: rows are independent and the order of addition is fixed.
    let mut start = vec![0usize; n + 1];
    for &id in ids {
        start[id as usize + 1] += 1;
    }
    for r in 0..n {
        start[r + 1] += start[r];
    }
    let mut fill = start.clone();
    let mut order = vec![0usize; ids.len()];
    for (pos, &id) in ids.iter().enumerate() {
        order[fill[id as usize]] = pos;
        fill[id as usize] += 1;
    }
    out.par_chunks_mut(cols)
        .enumerate()
        .with_min_len((4096 / cols).max(1))
        .for_each(|(r, row)| {
            if Some(r) == skip {
                return;
            }
            for &pos in &order[start[r]..start[r + 1]] {
                for (a, &g) in row.iter_mut().zip(&dy[pos * cols..(pos + 1) * cols]) {
                    *a += g;
                }
            }
        });
    Ok(CpuStorage::from_real(out))
}
