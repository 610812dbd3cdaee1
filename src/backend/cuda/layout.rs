//! Host side of kernels/layout.cu: permute, narrow and cat as element-width copies.
//!
//! Shapes are collapsed here so the kernels see a fixed form: permute always gets four
//! output dims with the matching input strides, narrow and cat get [outer, mid, inner].

use super::context::{cfg_1d, n64, Arg};
use super::{len_err, CudaStorage};
use crate::backend::BackendStorage;
use crate::error::{Error, Result};
use crate::shape::{DType, Shape};

fn width(op: &'static str, dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 | DType::I32 => Ok("b32"),
        DType::F16 => Ok("b16"),
        got => Err(Error::DType {
            op,
            expected: "f32, f16 or i32",
            got,
        }),
    }
}

fn check_dims(x: &CudaStorage, dims: &[usize], op: &'static str) -> Result<()> {
    let n: usize = dims.iter().product();
    if n != x.len() {
        return Err(Error::Shape {
            op,
            expected: format!("{} elements", x.len()),
            got: Shape::new(dims),
        });
    }
    Ok(())
}

pub fn permute(x: &CudaStorage, dims: &[usize], perm: &[usize]) -> Result<CudaStorage> {
    let op = "permute";
    let w = width(op, x.dtype())?;
    check_dims(x, dims, op)?;
    let r = dims.len();
    let mut seen = [false; 4];
    if r > 4
        || perm.len() != r
        || perm
            .iter()
            .any(|&p| p >= r || std::mem::replace(&mut seen[p], true))
    {
        return Err(Error::msg(format!(
            "permute: {perm:?} is not a permutation of the {r} dims {dims:?} (rank <= 4)"
        )));
    }
    let mut in_strides = vec![1usize; r];
    for i in (0..r.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * dims[i + 1];
    }
    // Pad to four output dims with leading size-1 dims (stride irrelevant).
    let mut o = [1i64; 4];
    let mut s = [0i64; 4];
    for i in 0..r {
        o[4 - r + i] = dims[perm[i]] as i64;
        s[4 - r + i] = in_strides[perm[i]] as i64;
    }
    let out = CudaStorage::alloc(x.dev(), x.len(), x.dtype())?;
    if x.len() > 0 {
        let dims: Vec<Arg> = o.iter().chain(&s).map(|&v| Arg::I64(v)).collect();
        x.dev().launch_bufs(
            &format!("fb_permute_{w}"),
            cfg_1d(x.len()),
            &[&out, x],
            &dims,
        )?;
    }
    Ok(out)
}

/// (outer, mid, inner) of `dims` around `dim`.
fn split(dims: &[usize], dim: usize) -> (usize, usize, usize) {
    let outer = dims[..dim].iter().product();
    let inner = dims[dim + 1..].iter().product();
    (outer, dims[dim], inner)
}

pub fn narrow(
    x: &CudaStorage,
    dims: &[usize],
    dim: usize,
    start: usize,
    len: usize,
) -> Result<CudaStorage> {
    let op = "narrow";
    let w = width(op, x.dtype())?;
    check_dims(x, dims, op)?;
    if dim >= dims.len() || start + len > dims[dim] {
        return Err(Error::msg(format!(
            "narrow: [{start}, {}) along dim {dim} of {dims:?} is out of range",
            start + len
        )));
    }
    let (outer, mid, inner) = split(dims, dim);
    let n = outer * len * inner;
    let out = CudaStorage::alloc(x.dev(), n, x.dtype())?;
    if n > 0 {
        x.dev().launch_bufs(
            &format!("fb_narrow_{w}"),
            cfg_1d(n),
            &[&out, x],
            &[outer, mid, len, inner, start].map(n64),
        )?;
    }
    Ok(out)
}

pub fn cat(parts: &[&CudaStorage], dims: &[Vec<usize>], dim: usize) -> Result<CudaStorage> {
    let op = "cat";
    let first = parts
        .first()
        .ok_or_else(|| Error::msg("cat: no tensors to concatenate"))?;
    if dims.len() != parts.len() {
        return Err(len_err(op, parts.len(), dims.len()));
    }
    let w = width(op, first.dtype())?;
    let d0 = &dims[0];
    if dim >= d0.len() {
        return Err(Error::msg(format!(
            "cat: dim {dim} out of range for {d0:?}"
        )));
    }
    let mut total_mid = 0;
    for (p, d) in parts.iter().zip(dims) {
        check_dims(p, d, op)?;
        let same_rest = d.len() == d0.len()
            && d.iter()
                .zip(d0)
                .enumerate()
                .all(|(i, (a, b))| i == dim || a == b);
        if !same_rest || p.dtype() != first.dtype() || p.device() != first.device() {
            return Err(Error::Shape {
                op,
                expected: format!("{d0:?} except along dim {dim}, {}", first.dtype()),
                got: Shape::new(d),
            });
        }
        total_mid += d[dim];
    }
    let (outer, _, inner) = split(d0, dim);
    let out = CudaStorage::alloc(first.dev(), outer * total_mid * inner, first.dtype())?;
    let mut offset = 0;
    for (p, d) in parts.iter().zip(dims) {
        let mid = d[dim];
        if p.len() > 0 {
            first.dev().launch_bufs(
                &format!("fb_place_{w}"),
                cfg_1d(p.len()),
                &[&out, p],
                &[outer, total_mid, mid, inner, offset].map(n64),
            )?;
        }
        offset += mid;
    }
    Ok(out)
}
