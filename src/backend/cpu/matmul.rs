//! Matrix products through the `gemm` crate (the CPU stand-in for cuBLAS).
//!
//! `gemm::gemm` takes arbitrary row and column strides, so transposed operands and the
//! strided per-head views that attention needs are passed as strides, never copied.
//! Because that call is `unsafe` (raw pointers), [`gemm_strided`] checks that every
//! element it may touch lies inside the slices before handing them over.
//!
//! Batches are spread over rayon threads when there are enough of them; a single large
//! product lets gemm parallelise internally instead.
//!
//! One exception to "never copied": gemm 0.19 runs `x · Wᵀ` (a transposed right operand,
//! the linear layer's forward) 7–60 % slower than the same product with W row-major when
//! the output is narrow (n ≤ 1024) or the reduction is long (k ≥ n) — DistilBERT's and
//! T5's FFN-out projections, the attention output projection. There W is transposed once
//! into scratch (about 0.6 ms for 768 × 3072, at memory speed); copy included, such a
//! product takes 1–5 ms less (`cargo bench --bench gemm_layouts`, benches/RESULTS.md,
//! session 11). With few rows (generation steps, small batches) `x · Wᵀ` takes the
//! routes of `skinny.rs` instead, one of which also has a scratch (`Wᵀ`'s product
//! transposed). [`scratch_len`] says how long the scratch is; it is a tracked buffer,
//! alive beside the output, and the meta device allocates the same for the CPU target.

use std::marker::PhantomData;

use gemm::Parallelism;
use rayon::prelude::*;

use super::{len_err, skinny, CpuStorage, Real};
use crate::backend::{LinearDims, MatmulSpec};
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
    /// The transpose of a row-major matrix with rows of `ld` elements stored from `off`.
    pub fn transposed(off: usize, ld: usize) -> View {
        View { off, rs: 1, cs: ld }
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
    dims: (usize, usize, usize),
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
    let dst = SharedDst::new(dst);
    // SAFETY: dst is a unique borrow for this call, so nothing else writes it.
    unsafe { dst.gemm(dims, dv, (a, av), (b, bv), alpha, accumulate, par) }
}

/// A buffer that several threads write, each its own disjoint elements (attention's
/// per-(batch, head) blocks of one output): a pointer and a length, with every write
/// bounds-checked. It holds the buffer's unique borrow for `'a`, so nothing else reads or
/// writes the buffer meanwhile; that writers do not overlap is the callers' `unsafe`
/// promise.
#[derive(Clone, Copy)]
pub(super) struct SharedDst<'a, T> {
    ptr: *mut T,
    len: usize,
    borrow: PhantomData<&'a [T]>,
}

// SAFETY: a SharedDst is only written through its `unsafe` methods, whose callers promise
// that concurrent writes touch disjoint elements; the buffer is borrowed for 'a.
unsafe impl<T: Send> Send for SharedDst<'_, T> {}
unsafe impl<T: Send> Sync for SharedDst<'_, T> {}

impl<'a, T: Real> SharedDst<'a, T> {
    pub fn new(v: &'a mut [T]) -> SharedDst<'a, T> {
        SharedDst {
            ptr: v.as_mut_ptr(),
            len: v.len(),
            borrow: PhantomData,
        }
    }

    /// `src` copied to elements `off..off + src.len()`.
    ///
    /// # Safety
    /// No other thread reads or writes those elements meanwhile.
    pub unsafe fn copy_at(&self, off: usize, src: &[T]) -> Result<()> {
        check_range(off, src.len(), self.len)?;
        std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(off), src.len());
        Ok(())
    }

    /// `src` added element by element to elements `off..off + src.len()`.
    ///
    /// # Safety
    /// As [`SharedDst::copy_at`].
    pub unsafe fn add_at(&self, off: usize, src: &[T]) -> Result<()> {
        check_range(off, src.len(), self.len)?;
        let dst = std::slice::from_raw_parts_mut(self.ptr.add(off), src.len());
        dst.iter_mut().zip(src).for_each(|(x, &g)| *x += g);
        Ok(())
    }

    /// [`gemm_strided`] into the view `dv` of this buffer.
    ///
    /// # Safety
    /// No other thread reads or writes the elements `dv` covers meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm(
        &self,
        (m, n, k): (usize, usize, usize),
        dv: View,
        (a, av): (&[T], View),
        (b, bv): (&[T], View),
        alpha: T,
        accumulate: bool,
        par: Parallelism,
    ) -> Result<()> {
        const OP: &str = "gemm";
        in_bounds(OP, "dst", &dv, m, n, self.len)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            // An empty sum: gemm's behaviour is not documented for k = 0, so do it here.
            if !accumulate {
                for i in 0..m {
                    for j in 0..n {
                        *self.ptr.add(dv.off + i * dv.rs + j * dv.cs) = T::zero();
                    }
                }
            }
            return Ok(());
        }
        in_bounds(OP, "lhs", &av, m, k, a.len())?;
        in_bounds(OP, "rhs", &bv, k, n, b.len())?;
        // The three views were checked above to stay inside their buffers; dst does not
        // alias a or b (a SharedDst is made from a unique borrow).
        gemm::gemm(
            m,
            n,
            k,
            self.ptr.add(dv.off),
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
        Ok(())
    }
}

fn check_range(off: usize, n: usize, len: usize) -> Result<()> {
    match off.checked_add(n) {
        Some(end) if end <= len => Ok(()),
        _ => Err(Error::msg(format!(
            "shared write of {n} elements at {off} runs past a buffer of {len}"
        ))),
    }
}

/// Whether the CPU's matmul copies a transposed right operand (`k × n`) row-major for
/// `spec`, for the shapes where gemm runs faster on it (see the module note).
pub(super) fn copies_rhs(s: &MatmulSpec) -> bool {
    s.trans_b && s.batch == 1 && s.m >= 64 && s.n >= 16 && (s.n <= 1024 || s.k >= s.n)
}

/// Elements of the scratch the CPU's matmul takes for `spec`: the row-major copy of a
/// transposed right operand ([`copies_rhs`]), the transposed product of a swapped few-row
/// one (`skinny::swapped`), else 0. One function for the CPU and for the meta device's
/// CPU target, so the planner cannot disagree with the backend.
pub fn scratch_len(s: &MatmulSpec) -> usize {
    if copies_rhs(s) {
        s.k * s.n
    } else if skinny::swapped(s) {
        s.m * s.n
    } else {
        0
    }
}

/// [`transpose`] for f32, for `benches/gemm_layouts.rs`.
pub fn transpose_f32(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    transpose(src, rows, cols, dst, false)
}

/// `src` (`rows × cols`, row-major) transposed into `dst` (`cols × rows`), or added to it
/// with `add`, in 16 × 16 tiles (a whole tile read from 16 source rows, written as 16
/// contiguous runs), 16 destination rows per task.
pub(super) fn transpose<T: Real>(src: &[T], rows: usize, cols: usize, dst: &mut [T], add: bool) {
    const B: usize = 16;
    dst.par_chunks_mut(B * rows.max(1))
        .enumerate()
        .for_each(|(cb, d)| {
            let (c0, cn) = (cb * B, (cols - cb * B).min(B));
            let mut tile = [[T::zero(); B]; B];
            for r0 in (0..rows).step_by(B) {
                let rn = (rows - r0).min(B);
                for r in 0..rn {
                    let s = &src[(r0 + r) * cols + c0..(r0 + r) * cols + c0 + cn];
                    for (c, &v) in s.iter().enumerate() {
                        tile[c][r] = v;
                    }
                }
                for (c, t) in tile.iter().enumerate().take(cn) {
                    let run = &mut d[c * rows + r0..c * rows + r0 + rn];
                    if add {
                        run.iter_mut().zip(&t[..rn]).for_each(|(x, &v)| *x += v);
                    } else {
                        run.copy_from_slice(&t[..rn]);
                    }
                }
            }
        });
}

pub(super) fn matmul<T: Real>(
    a: &CpuStorage,
    b: &CpuStorage,
    s: &MatmulSpec,
) -> Result<CpuStorage> {
    product::<T>(a, b, s, None)
}

/// `x · Wᵀ + bias` with the bias rows as the product's starting value, which gemm adds
/// into: one pass writes the bias, none adds it afterwards, and there is no second
/// buffer.
pub(super) fn linear_bias<T: Real>(
    x: &CpuStorage,
    w: &CpuStorage,
    bias: &CpuStorage,
    LinearDims { rows, out_f, in_f }: LinearDims,
) -> Result<CpuStorage> {
    const OP: &str = "linear_bias";
    let b = bias.floats::<T>(OP)?;
    if b.len() != out_f {
        return Err(len_err(OP, "bias of", out_f, b.len()));
    }
    let len = rows * out_f;
    let mut init: Vec<T> = Vec::with_capacity(len);
    init.spare_capacity_mut()[..len]
        .par_chunks_mut(out_f.max(1))
        .for_each(|row| {
            for (d, &v) in row.iter_mut().zip(b) {
                d.write(v);
            }
        });
    // SAFETY: the loop above wrote each of the `len` elements (every row is the bias).
    unsafe { init.set_len(len) };
    product::<T>(x, w, &MatmulSpec::linear(rows, out_f, in_f), Some(init))
}

/// `A · B` per batch into a new buffer, or added into `init` (accumulated, same length).
fn product<T: Real>(
    a: &CpuStorage,
    b: &CpuStorage,
    s: &MatmulSpec,
    init: Option<Vec<T>>,
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
            View::transposed(off, m)
        } else {
            View::row_major(off, k)
        }
    };
    if skinny::swapped(s) {
        return skinny::swapped_product(x, y, s, init);
    }
    // A transposed W copied row-major where gemm is faster on it (copies_rhs); the
    // scratch is counted from here until the output is.
    let copy = match copies_rhs(s) {
        false => None,
        true => {
            let len = k * n;
            let mut t = vec![T::zero(); len];
            transpose(&y[..len], n, k, &mut t, false);
            Some(CpuStorage::from_real(t))
        }
    };
    let (y, trans_b) = match &copy {
        Some(t) => (t.floats::<T>(OP)?, false),
        None => (y, s.trans_b),
    };
    // Stored B is k×n (row stride n), or n×k when transposed: element (p, j) at j·k + p.
    let bv = |off| {
        if trans_b {
            View::transposed(off, k)
        } else {
            View::row_major(off, n)
        }
    };
    let accumulate = init.is_some();
    if m * n == 0 {
        let out = init.unwrap_or_else(|| vec![T::zero(); s.batch * m * n]);
        return Ok(CpuStorage::from_real(out));
    }
    let len = s.batch * m * n;
    // Without an initial value the output is not zeroed first where gemm is known to
    // overwrite every element without reading it (`gemm_overwrites`).
    let mut out = match init {
        Some(v) => Spare::Init(v),
        None if gemm_overwrites(m, n, k) => Spare::Uninit(Vec::with_capacity(len)),
        None => Spare::Init(vec![T::zero(); len]),
    };
    let dst = out.dst(len);
    if skinny::takes(s) {
        // A generation step's few rows against a linear layer's weight (not copied:
        // copies_rhs asks for 64 rows or more). Writes every element, as gemm does.
        skinny::x_wt(x, y, s, &dst, accumulate)?;
        // SAFETY: x_wt wrote (or added to) each of the m × n elements.
        return Ok(CpuStorage::from_real(unsafe { out.into_vec(len) }));
    }
    let threads = rayon::current_num_threads();
    let run = |bi: usize, par: Parallelism| {
        let dv = View::row_major(bi * m * n, n);
        let (a, b) = ((x, av(bi * s.stride_a)), (y, bv(bi * s.stride_b)));
        // SAFETY: batch bi alone writes its m × n block.
        unsafe { dst.gemm((m, n, k), dv, a, b, T::one(), accumulate, par) }
    };
    if s.batch >= threads && s.batch > 1 {
        (0..s.batch)
            .into_par_iter()
            .try_for_each(|bi| run(bi, Parallelism::None))?;
    } else {
        for bi in 0..s.batch {
            run(bi, Parallelism::Rayon(0))?;
        }
    }
    // SAFETY: every batch's block was written above (gemm_overwrites holds for Uninit).
    let out = CpuStorage::from_real(unsafe { out.into_vec(len) });
    drop(copy);
    Ok(out)
}

/// Whether gemm 0.19 writes every element of its `m × n` output without reading it when
/// not asked to accumulate. Claimed only for the shapes its packed kernels take, which
/// store `beta · AB` over each tile (read from its source); its special paths for tiny
/// outputs (m·n ≤ 256), matrix-vector products (m or n ≤ 1) and k ≤ 2 keep the zero
/// fill, which costs nothing there. The unit test `gemm_overwrites_what_it_claims` holds
/// gemm to the claim, should a new version read the destination.
fn gemm_overwrites(m: usize, n: usize, k: usize) -> bool {
    m > 1 && n > 1 && k > 2 && m * n > 256
}

/// A matmul's output: given (or zeroed), or allocated and left for gemm to write.
enum Spare<T> {
    Init(Vec<T>),
    Uninit(Vec<std::mem::MaybeUninit<T>>),
}

impl<T: Real> Spare<T> {
    /// The whole `len` elements as a shared destination (the uninitialised one is never
    /// read through it: gemm only writes it).
    fn dst(&mut self, len: usize) -> SharedDst<'_, T> {
        match self {
            Spare::Init(v) => SharedDst::new(v),
            Spare::Uninit(v) => SharedDst {
                ptr: v.as_mut_ptr().cast::<T>(),
                len: len.min(v.capacity()),
                borrow: PhantomData,
            },
        }
    }

    /// The buffer as values.
    ///
    /// # Safety
    /// An `Uninit` buffer's `len` elements have all been written.
    unsafe fn into_vec(self, len: usize) -> Vec<T> {
        match self {
            Spare::Init(v) => v,
            Spare::Uninit(v) => {
                let mut v = std::mem::ManuallyDrop::new(v);
                Vec::from_raw_parts(v.as_mut_ptr().cast::<T>(), len, v.capacity())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{gemm_overwrites, SharedDst, View};

    /// Where `gemm_overwrites` says so, gemm replaces a destination full of NaN with the
    /// product (it does not read it), for shapes at its bounds and both layouts of each
    /// operand.
    #[test]
    fn gemm_overwrites_what_it_claims() {
        let shapes = [
            (17, 16, 3),
            (16, 17, 3),
            (2, 129, 8),
            (129, 2, 3),
            (64, 64, 64),
        ];
        for (m, n, k) in shapes.into_iter().chain([(300, 7, 5), (97, 131, 67)]) {
            assert!(gemm_overwrites(m, n, k));
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
                let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 - 2.0).collect();
                let lay = |t: bool, rows: usize, cols: usize| match t {
                    true => View::transposed(0, rows),
                    false => View::row_major(0, cols),
                };
                let (av, bv) = (lay(ta, m, k), lay(tb, k, n));
                let mut c = vec![f32::NAN; m * n];
                let none = gemm::Parallelism::None;
                super::gemm_strided(
                    (m, n, k),
                    &mut c,
                    View::row_major(0, n),
                    &a,
                    av,
                    &b,
                    bv,
                    1.0,
                    false,
                    none,
                )
                .unwrap();
                let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
                let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] };
                let want = |i: usize, j: usize| (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f32>();
                let all_set = (0..m * n).all(|e| c[e] == want(e / n, e % n));
                assert!(
                    all_set,
                    "{m}x{n}x{k} ta {ta} tb {tb}: gemm left or read NaN"
                );
            }
        }
        for (m, n, k) in [(16, 16, 3), (1, 300, 9), (300, 1, 9), (40, 40, 2)] {
            assert!(!gemm_overwrites(m, n, k), "{m}x{n}x{k}");
        }
    }

    /// Writes through a SharedDst land where asked, and a write or a product that would
    /// run past the buffer is an error, with nothing written.
    #[test]
    fn shared_dst_writes_in_bounds_only() {
        let mut buf = vec![0f32; 12];
        let w = SharedDst::new(&mut buf);
        let (a, b) = ([1f32, 2., 3., 4.], [1f32, 0., 0., 1.]);
        let two = |off| View::row_major(off, 2);
        let none = gemm::Parallelism::None;
        // SAFETY: one thread; the writes below touch disjoint elements.
        unsafe {
            w.copy_at(0, &[5., 6.]).unwrap();
            w.add_at(1, &[1., 1.]).unwrap();
            // [[1, 2], [3, 4]] · I into rows of stride 3 from element 4.
            let dst = View::row_major(4, 3);
            w.gemm((2, 2, 2), dst, (&a, two(0)), (&b, two(0)), 1.0, false, none)
                .unwrap();
            assert!(w.copy_at(11, &[1., 1.]).is_err());
            assert!(w.add_at(usize::MAX, &[1.]).is_err());
            let past = View::row_major(9, 3);
            assert!(w
                .gemm(
                    (2, 2, 2),
                    past,
                    (&a, two(0)),
                    (&b, two(0)),
                    1.0,
                    false,
                    none
                )
                .is_err());
        }
        let want = [5., 7., 1., 0., 1., 2., 0., 3., 4., 0., 0., 0.];
        assert_eq!(buf, want);
    }
}
