//! Shape-only and data-movement ops: reshape (free), permute, transpose, narrow, cat.

use crate::autograd::{needs_grad, record};
use crate::backend::Storage;
use crate::error::{Error, Result};
use crate::ops::fresh;
use crate::profile::cost;
use crate::shape::Shape;
use crate::tensor::Tensor;

impl Tensor {
    /// Same data, new shape (no copy).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let _span = crate::profile::Span::new("reshape", self.device()).cost(Default::default);
        let shape = shape.into();
        if shape.elem_count() != self.elem_count() {
            return Err(Error::Shape {
                op: "reshape",
                expected: format!("{} elements (from {})", self.elem_count(), self.shape()),
                got: shape,
            });
        }
        if !needs_grad(&[self]) {
            return Ok(self.share(shape, false));
        }
        let orig = self.shape().clone();
        let out = self.share(shape, false);
        Ok(record(
            "reshape",
            &[self],
            out,
            Box::new(move |g| Ok(vec![Some(g.share(orig, false))])),
        ))
    }

    /// Out dim i = in dim `perm[i]` (rank ≤ 4).
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let _span = crate::profile::Span::new("permute", self.device())
            .cost(|| cost::copy(self.elem_count(), self.elem_count(), self.dtype()));
        let dims = self.dims().to_vec();
        let mut seen = vec![false; dims.len()];
        if perm.len() != dims.len()
            || perm
                .iter()
                .any(|&p| p >= dims.len() || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::msg(format!(
                "permute: {perm:?} is not a permutation of the {} dims of {}",
                dims.len(),
                self.shape()
            )));
        }
        let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
        let out = fresh(self.storage().permute(&dims, perm)?, out_dims.clone());
        let mut inv = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        Ok(record(
            "permute",
            &[self],
            out,
            Box::new(move |g| {
                let s = g.storage().permute(&out_dims, &inv)?;
                Ok(vec![Some(fresh(s, dims))])
            }),
        ))
    }

    /// Swap the last two dimensions.
    pub fn transpose_last2(&self) -> Result<Tensor> {
        let _span = crate::profile::Span::new("transpose_last2", self.device())
            .cost(|| cost::copy(self.elem_count(), self.elem_count(), self.dtype()));
        let r = self.shape().rank();
        if r < 2 {
            return Err(Error::msg(format!("transpose_last2: rank {r} < 2")));
        }
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 1, r - 2);
        self.permute(&perm)
    }

    /// `[start, start+len)` along `dim`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        let _span = crate::profile::Span::new("narrow", self.device()).cost(|| {
            let n_out = self.elem_count() / self.dims().get(dim).copied().unwrap_or(1).max(1) * len;
            cost::copy(self.elem_count(), n_out, self.dtype())
        });
        let dims = self.dims().to_vec();
        let size = self.shape().dim(dim)?;
        if start + len > size {
            return Err(Error::msg(format!(
                "narrow: [{start}, {}) is outside dim {dim} of size {size} in {}",
                start + len,
                self.shape()
            )));
        }
        let mut out_dims = dims.clone();
        out_dims[dim] = len;
        let out = fresh(
            self.storage().narrow(&dims, dim, start, len)?,
            out_dims.clone(),
        );
        Ok(record(
            "narrow",
            &[self],
            out,
            Box::new(move |g| {
                // Pad the gradient back with zeros on both sides of the slice.
                let gs = g.storage();
                let mut parts: Vec<Storage> = Vec::new();
                let mut part_dims = Vec::new();
                let dtype = g.dtype();
                let mut push_zeros = |n: usize| -> Result<()> {
                    if n > 0 {
                        let mut d = dims.clone();
                        d[dim] = n;
                        parts.push(gs.zeros_like_dev(d.iter().product(), dtype)?);
                        part_dims.push(d);
                    }
                    Ok(())
                };
                push_zeros(start)?;
                let after = size - start - len;
                let mut refs: Vec<&Storage> = Vec::new();
                let mut all_dims = Vec::new();
                let before = parts.len();
                let tail_zero = if after > 0 {
                    let mut d = dims.clone();
                    d[dim] = after;
                    Some((gs.zeros_like_dev(d.iter().product(), dtype)?, d))
                } else {
                    None
                };
                for (p, d) in parts.iter().zip(part_dims.iter()).take(before) {
                    refs.push(p);
                    all_dims.push(d.clone());
                }
                refs.push(&gs);
                all_dims.push(out_dims.clone());
                if let Some((z, d)) = tail_zero.as_ref() {
                    refs.push(z);
                    all_dims.push(d.clone());
                }
                let s = Storage::cat(&refs, &all_dims, dim)?;
                Ok(vec![Some(fresh(s, dims))])
            }),
        ))
    }

    /// Concatenate along `dim`; all other dimensions must agree.
    pub fn cat(parts: &[&Tensor], dim: usize) -> Result<Tensor> {
        let first = parts
            .first()
            .ok_or_else(|| Error::msg("cat: no tensors to concatenate"))?;
        let _span = crate::profile::Span::new("cat", first.device()).cost(|| {
            let n = parts.iter().map(|p| p.elem_count()).sum();
            cost::copy(n, n, first.dtype())
        });
        let rank = first.shape().rank();
        let mut total = 0;
        for p in parts {
            let ok = p.shape().rank() == rank
                && dim < rank
                && p.dims()
                    .iter()
                    .zip(first.dims())
                    .enumerate()
                    .all(|(i, (a, b))| i == dim || a == b);
            if !ok {
                return Err(Error::Shape {
                    op: "cat",
                    expected: format!("dims equal to {} except along dim {dim}", first.shape()),
                    got: p.shape().clone(),
                });
            }
            total += p.dims()[dim];
        }
        let dims: Vec<Vec<usize>> = parts.iter().map(|p| p.dims().to_vec()).collect();
        let guards: Vec<_> = parts.iter().map(|p| p.storage()).collect();
        let refs: Vec<&Storage> = guards.iter().map(|g| &**g).collect();
        let s = Storage::cat(&refs, &dims, dim)?;
        drop(guards);
        let mut out_dims = first.dims().to_vec();
        out_dims[dim] = total;
        let out = fresh(s, out_dims);
        let sizes: Vec<usize> = parts.iter().map(|p| p.dims()[dim]).collect();
        let tracks: Vec<bool> = parts.iter().map(|p| p.tracks()).collect();
        Ok(record(
            "cat",
            parts,
            out,
            Box::new(move |g| {
                let mut res = Vec::with_capacity(sizes.len());
                let mut off = 0;
                let gd = g.dims().to_vec();
                for (sz, t) in sizes.iter().zip(tracks) {
                    if t {
                        let s = g.storage().narrow(&gd, dim, off, *sz)?;
                        let mut d = gd.clone();
                        d[dim] = *sz;
                        res.push(Some(fresh(s, d)));
                    } else {
                        res.push(None);
                    }
                    off += sz;
                }
                Ok(res)
            }),
        ))
    }
}
