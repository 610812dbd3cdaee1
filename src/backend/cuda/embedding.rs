//! Host side of kernels/embedding.cu: row gather and its scatter-add backward.
//!
//! Out-of-range ids are an error: the kernels record them in the device error record
//! (context.rs, `Dev::check_errors`), which the host reads at its next device-to-host
//! copy, so an embedding lookup costs no sync. The error names the op, the id and the
//! valid range.

use cudarc::driver::LaunchConfig;

use super::context::{cfg_blocks, n64, Arg};
use super::elementwise::cast;
use super::{len_err, sfx, CudaStorage};
use crate::backend::BackendStorage;
use crate::error::{Error, Result};
use crate::shape::DType;

fn cfg_ids(n_ids: usize, cols: usize) -> LaunchConfig {
    let threads = cols.div_ceil(32).clamp(1, 8) * 32;
    cfg_blocks(n_ids.clamp(1, 16384), threads)
}

fn check_ids(ids: &CudaStorage, op: &'static str) -> Result<()> {
    if ids.dtype() != DType::I32 {
        return Err(Error::DType {
            op,
            expected: "i32 ids",
            got: ids.dtype(),
        });
    }
    Ok(())
}

pub fn index_select(table: &CudaStorage, ids: &CudaStorage, cols: usize) -> Result<CudaStorage> {
    let op = "index_select";
    check_ids(ids, op)?;
    if cols == 0 || !table.len().is_multiple_of(cols) {
        return Err(len_err(op, cols, table.len()));
    }
    let width = match table.dtype() {
        DType::F32 | DType::I32 => "b32",
        DType::F16 => "b16",
        got => {
            return Err(Error::DType {
                op,
                expected: "f32, f16 or i32",
                got,
            })
        }
    };
    let n_rows = table.len() / cols;
    let out = CudaStorage::alloc(table.dev(), ids.len() * cols, table.dtype())?;
    if ids.is_empty() {
        return Ok(out);
    }
    let err = table.dev().err_record();
    table.dev().launch_bufs(
        &format!("fb_index_select_{width}"),
        cfg_ids(ids.len(), cols),
        &[&out, table, ids],
        &[n64(ids.len()), n64(n_rows), n64(cols), Arg::Ptr(err)],
    )?;
    Ok(out)
}

pub fn index_add(
    dy: &CudaStorage,
    ids: &CudaStorage,
    n: usize,
    cols: usize,
    skip: Option<usize>,
) -> Result<CudaStorage> {
    let op = "index_add";
    check_ids(ids, op)?;
    let s = sfx(op, dy.dtype())?;
    if dy.len() != ids.len() * cols {
        return Err(len_err(op, ids.len() * cols, dy.len()));
    }
    let acc = CudaStorage::zeroed(dy.dev(), n * cols, DType::F32)?;
    if !ids.is_empty() && cols > 0 {
        let err = dy.dev().err_record();
        let skip = Arg::I64(skip.map_or(-1, |s| s as i64));
        dy.dev().launch_bufs(
            &format!("fb_index_add_{s}"),
            cfg_ids(ids.len(), cols),
            &[&acc, dy, ids],
            &[n64(ids.len()), n64(n), n64(cols), skip, Arg::Ptr(err)],
        )?;
    }
    if dy.dtype() == DType::F32 {
        Ok(acc)
    } else {
        cast(&acc, dy.dtype())
    }
}
