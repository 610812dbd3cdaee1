//! Matrix products through the `gemm` crate (the CPU stand-in for cuBLAS).
//!
//! `gemm::gemm` takes arbitrary row and column strides, so transposed operands and the
//! strided per-head views that attention needs are passed as strides, never copied.
//! Because that call is `unsafe` (raw pointers), [`gemm_strided`] checks that every
//! element it may touch lies inside the slices before handing them over.
//!
//! Batches are spread over rayon threads when there are enough of them; a single large
//! product lets gemm parallelise internally instead.

use gemm::Parallelism;
use rayon::prelude::*;

use super::{len_err, CpuStorage, Real};
use crate::backend::MatmulSpec;
use crate::error::{Error, Result};

/// A strided `rows × cols` matrix view: element (i, j) is at `off + i·rs + j·cs`.
#[derive(Clone, Copy, Debug)]
pub(super) struct View {
    pub off: usize,
    pub rs: usize,
    pub cs: usize,
}

impl View {
    pub fn row_major(off: usize, ld: usize) -> View {
        View { off, rs: ld, cs: 1 }
    }
    /// Index of the last element of a `rows × cols` matrix (None when empty).
    fn last(&self, rows: usize, cols: usize) -> Option<usize> {
        if rows == 0 || cols == 0 {
            return None;
        }
        Some(self.off + (rows - 1) * self.rs + (cols - 1) * self.cs)
    }
}

fn in_bounds(
    op: &'static str,
    what: &str,
    v: &View,
    rows: usize,
    cols: usize,
    len: usize,
) -> Result<()> {
    match v.last(rows, cols) {
        Some(last) if last >= len => Err(Error::msg(format!(
            "{op}: {what} view of {rows}x{cols} (offset {}, strides {}/{}) reaches element {last} of a buffer of {len}",
            v.off, v.rs, v.cs
        ))),
        _ => Ok(()),
    }
}

/// `dst[m×n] = (accumulate ? dst : 0) + alpha · A[m×k] · B[k×n]` over strided views.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_strided<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    dv: View,
    a: &[T],
    av: View,
    b: &[T],
    bv: View,
    alpha: T,
    accumulate: bool,
    par: Parallelism,
) -> Result<()> {
    const OP: &str = "gemm";
    in_bounds(OP, "dst", &dv, m, n, dst.len())?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        // An empty sum: gemm's behaviour is not documented for k = 0, so do it here.
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[dv.off + i * dv.rs + j * dv.cs] = T::zero();
                }
            }
        }
        return Ok(());
    }
    in_bounds(OP, "lhs", &av, m, k, a.len())?;
    in_bounds(OP, "rhs", &bv, k, n, b.len())?;
    // SAFETY: the three views were checked above to stay inside their slices; dst is a
    // unique borrow, so it does not alias a or b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dv.off),
            dv.cs as isize,
            dv.rs as isize,
            accumulate,
            a.as_ptr().add(av.off),
            av.cs as isize,
            av.rs as isize,
            b.as_ptr().add(bv.off),
            bv.cs as isize,
            bv.rs as isize,
            T::one(),
            alpha,
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}

pub(super) fn matmul<T: Real>(
    a: &CpuStorage,
    b: &CpuStorage,
    s: &MatmulSpec,
) -> Result<CpuStorage> {
    const OP: &str = "matmul";
    let (x, y) = (a.floats::<T>(OP)?, b.floats::<T>(OP)?);
    let (m, n, k) = (s.m, s.n, s.k);
    let need = |stride: usize, size: usize| {
        if s.batch == 0 || size == 0 {
            0
        } else {
            (s.batch - 1) * stride + size
        }
    };
    let (need_a, need_b) = (need(s.stride_a, m * k), need(s.stride_b, k * n));
    if x.len() < need_a {
        return Err(len_err(OP, "lhs of at least", need_a, x.len()));
    }
    if y.len() < need_b {
        return Err(len_err(OP, "rhs of at least", need_b, y.len()));
    }
    // Stored A is m×k (row stride k), or k×m when transposed: element (i, p) at p·m + i.
    let av = |off| {
        if s.trans_a {
            View { off, rs: 1, cs: m }
        } else {
            View::row_major(off, k)
        }
    };
    let bv = |off| {
        if s.trans_b {
            View { off, rs: 1, cs: k }
        } else {
            View::row_major(off, n)
        }
    };
    let mut out = vec![T::zero(); s.batch * m * n];
    if m * n == 0 {
        return Ok(CpuStorage::from_real(out));
    }
    let threads = rayon::current_num_threads();
    let run = |bi: usize, c: &mut [T], par: Parallelism| {
        gemm_strided(
            (m, n, k),
            c,
            View::row_major(0, n),
            x,
            av(bi * s.stride_a),
            y,
            bv(bi * s.stride_b),
            T::one(),
            false,
            par,
        )
    };
    if s.batch >= threads && s.batch > 1 {
        out.par_chunks_mut(m * n)
            .enumerate()
            .try_for_each(|(bi, c)| run(bi, c, Parallelism::None))?;
    } else {
        for (bi, c) in out.chunks_mut(m * n).enumerate() {
            run(bi, c, Parallelism::Rayon(0))?;
        }
    }
    Ok(CpuStorage::from_real(out))
}
