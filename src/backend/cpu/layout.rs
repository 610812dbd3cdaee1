//! Data movement: permute (rank ≤ 4), narrow and cat on contiguous row-major buffers.
//!
//! These only move elements, so they work on every dtype (I32 token ids and F16
//! storage included), through one generic body per op. Shapes are validated against the
//! buffer lengths first; after that every index is in range by construction.

use rayon::prelude::*;

use super::{dtype_err, CpuData, CpuStorage};
use crate::error::{Error, Result};
use crate::shape::Shape;

/// Apply a generic body to the typed vector inside `CpuData`, rewrapping the result.
macro_rules! with_data {
    ($data:expr, |$v:ident| $body:expr) => {
        match $data {
            CpuData::F32($v) => CpuData::F32($body),
            CpuData::F64($v) => CpuData::F64($body),
            CpuData::F16($v) => CpuData::F16($body),
            CpuData::I32($v) => CpuData::I32($body),
        }
    };
}

fn check_dims(op: &'static str, dims: &[usize], len: usize) -> Result<()> {
    let n: usize = dims.iter().product();
    if n != len {
        return Err(Error::Shape {
            op,
            expected: format!("{n} elements for dims {dims:?}"),
            got: Shape::new(&[len]),
        });
    }
    Ok(())
}

fn permute_vec<T: Copy + Default + Send + Sync>(
    x: &[T],
    d: [usize; 4],
    perm: [usize; 4],
) -> Vec<T> {
    let mut st = [0usize; 4];
    let mut acc = 1;
    for i in (0..4).rev() {
        st[i] = acc;
        acc *= d[i];
    }
    let od = [d[perm[0]], d[perm[1]], d[perm[2]], d[perm[3]]];
    let os = [st[perm[0]], st[perm[1]], st[perm[2]], st[perm[3]]];
    let mut out = vec![T::default(); x.len()];
    if x.is_empty() {
        return out;
    }
    // One contiguous output row (od[3] elements) per task step.
    out.par_chunks_mut(od[3])
        .enumerate()
        .with_min_len((4096 / od[3]).max(1))
        .for_each(|(r, row)| {
            let (i0, i1, i2) = (r / (od[1] * od[2]), (r / od[2]) % od[1], r % od[2]);
            let base = i0 * os[0] + i1 * os[1] + i2 * os[2];
            for (i3, o) in row.iter_mut().enumerate() {
                *o = x[base + i3 * os[3]];
            }
        });
    out
}

pub(super) fn permute(x: &CpuStorage, dims: &[usize], perm: &[usize]) -> Result<CpuStorage> {
    const OP: &str = "permute";
    let r = dims.len();
    if r > 4 || perm.len() != r {
        return Err(Error::msg(format!(
            "permute: dims {dims:?} and perm {perm:?} must have the same rank, at most 4"
        )));
    }
    let mut seen = [false; 4];
    for &p in perm {
        if p >= r || seen[p] {
            return Err(Error::msg(format!(
                "permute: {perm:?} is not a permutation of 0..{r}"
            )));
        }
        seen[p] = true;
    }
    check_dims(OP, dims, x.data.len())?;
    // Pad to rank 4 with leading unit dims.
    let mut d = [1usize; 4];
    let mut pm = [0usize, 1, 2, 3];
    for i in 0..r {
        d[4 - r + i] = dims[i];
        pm[4 - r + i] = perm[i] + 4 - r;
    }
    Ok(CpuStorage::new(with_data!(&x.data, |v| permute_vec(
        v, d, pm
    ))))
}

fn narrow_vec<T: Copy>(
    x: &[T],
    outer: usize,
    full: usize,
    start: usize,
    len: usize,
    inner: usize,
) -> Vec<T> {
    let mut out = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        let b = (o * full + start) * inner;
        out.extend_from_slice(&x[b..b + len * inner]);
    }
    out
}

pub(super) fn narrow(
    x: &CpuStorage,
    dims: &[usize],
    dim: usize,
    start: usize,
    len: usize,
) -> Result<CpuStorage> {
    const OP: &str = "narrow";
    check_dims(OP, dims, x.data.len())?;
    let full = *dims
        .get(dim)
        .ok_or_else(|| Error::msg(format!("narrow: dim {dim} out of range for dims {dims:?}")))?;
    if start.checked_add(len).is_none_or(|e| e > full) {
        return Err(Error::msg(format!(
            "narrow: [{start}, {start}+{len}) is outside dim {dim} of size {full} (dims {dims:?})"
        )));
    }
    let outer: usize = dims[..dim].iter().product();
    let inner: usize = dims[dim + 1..].iter().product();
    Ok(CpuStorage::new(with_data!(&x.data, |v| narrow_vec(
        v, outer, full, start, len, inner
    ))))
}

pub(super) fn cat(parts: &[&CpuStorage], dims: &[Vec<usize>], dim: usize) -> Result<CpuStorage> {
    const OP: &str = "cat";
    let first = parts
        .first()
        .ok_or_else(|| Error::msg("cat: no tensors to concatenate"))?;
    if dims.len() != parts.len() {
        return Err(Error::msg(format!(
            "cat: {} parts but {} shapes",
            parts.len(),
            dims.len()
        )));
    }
    let d0 = &dims[0];
    if dim >= d0.len() {
        return Err(Error::msg(format!(
            "cat: dim {dim} out of range for dims {d0:?}"
        )));
    }
    let dt = first.data.dtype();
    for (p, d) in parts.iter().zip(dims) {
        if p.data.dtype() != dt {
            return Err(dtype_err(OP, dt.as_str(), p.data.dtype()));
        }
        check_dims(OP, d, p.data.len())?;
        let same = d.len() == d0.len()
            && d.iter()
                .zip(d0)
                .enumerate()
                .all(|(i, (a, b))| i == dim || a == b);
        if !same {
            return Err(Error::Shape {
                op: OP,
                expected: format!("dims matching {d0:?} except along dim {dim}"),
                got: Shape::new(d),
            });
        }
    }
    let outer: usize = d0[..dim].iter().product();
    let inner: usize = d0[dim + 1..].iter().product();
    let total: usize = dims.iter().map(|d| d[dim]).sum();
    macro_rules! join {
        ($variant:ident) => {{
            let srcs: Vec<&[_]> = parts
                .iter()
                .map(|p| match &p.data {
                    CpuData::$variant(v) => v.as_slice(),
                    _ => &[],
                })
                .collect();
            let mut out = Vec::with_capacity(outer * total * inner);
            for o in 0..outer {
                for (s, d) in srcs.iter().zip(dims) {
                    let w = d[dim] * inner;
                    out.extend_from_slice(&s[o * w..(o + 1) * w]);
                }
            }
            CpuData::$variant(out)
        }};
    }
    Ok(CpuStorage::new(match dt {
        crate::shape::DType::F32 => join!(F32),
        crate::shape::DType::F64 => join!(F64),
        crate::shape::DType::F16 => join!(F16),
        crate::shape::DType::I32 => join!(I32),
    }))
}
