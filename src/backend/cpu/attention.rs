//! Attention, forward and backward, for both model families (mirrors
//! kernels/attention.cu): softmax(scale·q·kᵀ + bias + masks)·v with a key padding mask,
//! an end-aligned causal mask and T5's additive per-head bias.
//!
//! q, k, v stay in the `[B, L, H, D]` layout the projections produce: each (batch, head)
//! slice is a strided matrix (row stride H·D, or 3·H·D when q, k and v are the columns of
//! one fused QKV projection `[B, L, 3, H, D]`), so the two products per head go straight
//! to gemm with strides and nothing is transposed or copied; the packed layout's
//! gradients land in one packed buffer, as the CUDA kernels write them. Work is split over
//! (batch, head) pairs; each pair materialises its `Lq × Lk` score matrix, which is fine
//! on a CPU (the CUDA kernel tiles it instead). Backward recomputes the probabilities
//! from the saved log-sum-exp rather than keeping them. Batches are processed in waves
//! so the per-pair buffers (and dbias partials) stay bounded for long batches.
//!
//! A row whose keys are all masked has lse = -inf and probability 0 everywhere, so it
//! outputs zeros and passes no gradient (never NaN).

use gemm::Parallelism;
use rayon::prelude::*;

use super::matmul::{gemm_strided, View};
use super::simd;
use super::{check_len, CpuStorage, Real};
use crate::backend::{AttnArgs, AttnSaved, AttnSpec};
use crate::error::{Error, Result};

/// Where q, k and v sit in their buffers: row strides (elements per token) and column
/// offsets. Separate `[B, L, H, D]` buffers, or the one packed `[B, L, 3, H, D]` buffer
/// of a fused QKV projection (the same layout then holds dq, dk and dv).
#[derive(Clone, Copy, Debug)]
pub(super) struct Layout {
    ldq: usize,
    ldkv: usize,
    q_off: usize,
    k_off: usize,
    v_off: usize,
    /// q, k, v (and their gradients) share one buffer.
    packed: bool,
}

impl Layout {
    pub(super) fn separate(s: &AttnSpec) -> Layout {
        let hd = s.h * s.d;
        Layout {
            ldq: hd,
            ldkv: hd,
            q_off: 0,
            k_off: 0,
            v_off: 0,
            packed: false,
        }
    }
    pub(super) fn packed(s: &AttnSpec) -> Layout {
        let hd = s.h * s.d;
        Layout {
            ldq: 3 * hd,
            ldkv: 3 * hd,
            q_off: 0,
            k_off: hd,
            v_off: 2 * hd,
            packed: true,
        }
    }
    pub(super) fn is_packed(&self) -> bool {
        self.packed
    }
}

struct Inputs<'a, T> {
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    mask: Option<&'a [i32]>,
    bias: Option<&'a [T]>,
    s: AttnSpec,
    lay: Layout,
    scale: T,
}

/// q, k, v of a call: three buffers, or (packed) the one `qkv` buffer three times.
pub(super) struct Qkv<'a> {
    pub q: &'a CpuStorage,
    pub k: &'a CpuStorage,
    pub v: &'a CpuStorage,
    pub lay: Layout,
}

impl<'a> Qkv<'a> {
    /// The packed `[B, L, 3, H, D]` buffer of a fused QKV projection as q, k and v.
    pub(super) fn packed(qkv: &'a CpuStorage, s: &AttnSpec) -> Qkv<'a> {
        Qkv {
            q: qkv,
            k: qkv,
            v: qkv,
            lay: Layout::packed(s),
        }
    }
}

fn inputs<'a, T: Real>(
    op: &'static str,
    qkv: &Qkv<'a>,
    a: AttnArgs<'a, CpuStorage>,
) -> Result<Inputs<'a, T>> {
    let s = &a.spec;
    let lay = qkv.lay;
    let (q, k, v) = (
        qkv.q.floats::<T>(op)?,
        qkv.k.floats::<T>(op)?,
        qkv.v.floats::<T>(op)?,
    );
    if lay.is_packed() {
        if s.lq != s.lk {
            return Err(Error::msg(format!(
                "{op}: packed q/k/v need lq == lk, got {} and {}",
                s.lq, s.lk
            )));
        }
        check_len(op, "qkv [b, l, 3, h, d]", s.b * s.lq * lay.ldq, q.len())?;
    } else {
        check_len(op, "q [b, lq, h, d]", s.b * s.lq * s.h * s.d, q.len())?;
        check_len(op, "k [b, lk, h, d]", s.b * s.lk * s.h * s.d, k.len())?;
        check_len(op, "v [b, lk, h, d]", s.b * s.lk * s.h * s.d, v.len())?;
    }
    let mask = match a.key_mask {
        Some(m) => {
            let m = m.ints(op)?;
            check_len(op, "key_mask [b, lk]", s.b * s.lk, m.len())?;
            Some(m)
        }
        None => None,
    };
    let bias = match a.bias {
        Some(b) => {
            let b = b.floats::<T>(op)?;
            check_len(op, "bias [h, lq, lk]", s.h * s.lq * s.lk, b.len())?;
            Some(b)
        }
        None => None,
    };
    if !s.scale.is_finite() {
        return Err(Error::msg(format!("{op}: scale {} is not finite", s.scale)));
    }
    Ok(Inputs {
        q,
        k,
        v,
        mask,
        bias,
        s: *s,
        lay,
        scale: T::of(s.scale as f64),
    })
}

/// Row-major view of the (b, h) slice of a `[B, L, H, D]` tensor stored with rows of
/// `ld` elements from column `off`: `L × D`.
fn rows(s: &AttnSpec, b: usize, h: usize, l: usize, ld: usize, off: usize) -> View {
    View::row_major(b * l * ld + off + h * s.d, ld)
}
/// The same slice transposed: `D × L`.
fn cols(s: &AttnSpec, b: usize, h: usize, l: usize, ld: usize, off: usize) -> View {
    View {
        off: b * l * ld + off + h * s.d,
        rs: 1,
        cs: ld,
    }
}

impl<T: Real> Inputs<'_, T> {
    fn q_rows(&self, b: usize, h: usize) -> View {
        rows(&self.s, b, h, self.s.lq, self.lay.ldq, self.lay.q_off)
    }
    fn k_rows(&self, b: usize, h: usize) -> View {
        rows(&self.s, b, h, self.s.lk, self.lay.ldkv, self.lay.k_off)
    }
    fn v_rows(&self, b: usize, h: usize) -> View {
        rows(&self.s, b, h, self.s.lk, self.lay.ldkv, self.lay.v_off)
    }
    fn k_cols(&self, b: usize, h: usize) -> View {
        cols(&self.s, b, h, self.s.lk, self.lay.ldkv, self.lay.k_off)
    }
    fn v_cols(&self, b: usize, h: usize) -> View {
        cols(&self.s, b, h, self.s.lk, self.lay.ldkv, self.lay.v_off)
    }
    /// out and dout: contiguous `[B, Lq, H, D]`.
    fn o_rows(&self, b: usize, h: usize) -> View {
        let hd = self.s.h * self.s.d;
        rows(&self.s, b, h, self.s.lq, hd, 0)
    }

    /// `scale·q·kᵀ + bias` with masked positions at -inf, `lq × lk` row-major, into `sc`
    /// (every element overwritten).
    fn scores_into(&self, b: usize, h: usize, sc: &mut [T]) -> Result<()> {
        let AttnSpec { lq, lk, d, .. } = self.s;
        let q = (self.q, self.q_rows(b, h));
        let k = (self.k, self.k_cols(b, h));
        product_into((lq, lk, d), sc, q, k, self.scale)?;
        // The key mask only when it masks something in this batch row.
        let mask = self
            .mask
            .map(|m| &m[b * lk..(b + 1) * lk])
            .filter(|m| m.contains(&0));
        if self.bias.is_none() && mask.is_none() && !self.s.causal {
            return Ok(());
        }
        for (i, row) in sc.chunks_mut(lk.max(1)).enumerate() {
            if let Some(bias) = self.bias {
                let bias = &bias[(h * lq + i) * lk..(h * lq + i + 1) * lk];
                row.iter_mut().zip(bias).for_each(|(x, &bv)| *x += bv);
            }
            if let Some(mask) = mask {
                for (x, &m) in row.iter_mut().zip(mask) {
                    if m == 0 {
                        *x = T::neg_infinity();
                    }
                }
            }
            if self.s.causal {
                // Query i sees keys j <= i + lk - lq.
                let last = i as isize + lk as isize - lq as isize;
                for (j, x) in row.iter_mut().enumerate() {
                    if j as isize > last {
                        *x = T::neg_infinity();
                    }
                }
            }
        }
        Ok(())
    }

    /// The (b, h) pairs in waves of whole batches: enough pairs per wave to keep every
    /// thread busy, no more.
    fn waves(&self) -> impl Iterator<Item = Vec<(usize, usize)>> {
        let (b, h) = (self.s.b, self.s.h);
        let wave = (2 * rayon::current_num_threads()).div_ceil(h.max(1)).max(1);
        (0..b).step_by(wave).map(move |b0| {
            (b0..(b0 + wave).min(b))
                .flat_map(|bi| (0..h).map(move |hi| (bi, hi)))
                .collect()
        })
    }
}

/// `dst = alpha · A · B` (`m × k` by `k × n`, strided views; dst a row-major `m × n`
/// block, overwritten, never read), on the calling thread (the (b, h) pairs are what
/// runs in parallel).
fn product_into<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    (a, av): (&[T], View),
    (b, bv): (&[T], View),
    alpha: T,
) -> Result<()> {
    let cv = View::row_major(0, n);
    gemm_strided(
        (m, n, k),
        dst,
        cv,
        a,
        av,
        b,
        bv,
        alpha,
        false,
        Parallelism::None,
    )
}

/// [`product_into`] a new block.
fn product<T: Real>(
    dims: (usize, usize, usize),
    a: (&[T], View),
    b: (&[T], View),
    alpha: T,
) -> Result<Vec<T>> {
    let mut c = vec![T::zero(); dims.0 * dims.1];
    product_into(dims, &mut c, a, b, alpha)?;
    Ok(c)
}

/// Write an `l × d` per-(b, h) block back into a `[B, L, H, D]` tensor stored with rows
/// of `ld` elements from column `off`.
#[allow(clippy::too_many_arguments)]
fn scatter<T: Real>(
    dst: &mut [T],
    src: &[T],
    b: usize,
    h: usize,
    l: usize,
    s: &AttnSpec,
    ld: usize,
    off: usize,
) {
    for i in 0..l {
        let o = (b * l + i) * ld + off + h * s.d;
        dst[o..o + s.d].copy_from_slice(&src[i * s.d..(i + 1) * s.d]);
    }
}

/// Attention dropout's draw: the mixed key, the rate and the keep multiplier 1/(1−p);
/// None without dropout. Row i of pair (b, h) draws from index `row_base(..)` on, the
/// same index as kernels/attention.cu.
struct Dropout<T> {
    key: (u32, u32),
    rate: f32,
    keep_scale: T,
}

impl<T: Real> Dropout<T> {
    fn of(s: &AttnSpec) -> Option<Dropout<T>> {
        (s.dropout > 0.0).then(|| Dropout {
            key: crate::backend::dropout_key(s.seed),
            rate: s.dropout,
            keep_scale: T::of(1.0 / (1.0 - s.dropout as f64)),
        })
    }
}

fn row_base(s: &AttnSpec, bi: usize, hi: usize, i: usize) -> u64 {
    (((bi * s.h + hi) * s.lq + i) * s.lk) as u64
}

pub(super) fn attention<T: Real>(
    qkv: &Qkv<'_>,
    args: AttnArgs<'_, CpuStorage>,
) -> Result<(CpuStorage, CpuStorage)> {
    let a = inputs::<T>("attention", qkv, args)?;
    let spec = &args.spec;
    let AttnSpec {
        b, h, lq, lk, d, ..
    } = *spec;
    let mut out = vec![T::zero(); b * lq * h * d];
    let mut lse = vec![T::zero(); b * h * lq];
    let drop = Dropout::<T>::of(spec);
    for pairs in a.waves() {
        let res: Vec<(Vec<T>, Vec<T>)> = pairs
            .par_iter()
            // One score block per rayon split, reused pair after pair.
            .map_init(
                || vec![T::zero(); lq * lk],
                |p, &(bi, hi)| {
                    a.scores_into(bi, hi, p)?;
                    // lk = 0: no keys, every row fully masked (lse -inf).
                    let mut l = vec![T::neg_infinity(); lq];
                    for (i, (l, row)) in l.iter_mut().zip(p.chunks_mut(lk.max(1))).enumerate() {
                        *l = simd::softmax_row(row);
                        if let Some(z) = &drop {
                            let base = row_base(spec, bi, hi, i);
                            simd::dropout_row(row, z.key, base, z.rate, z.keep_scale);
                        }
                    }
                    let p = (&p[..], View::row_major(0, lk));
                    let o = product((lq, d, lk), p, (a.v, a.v_rows(bi, hi)), T::one())?;
                    Ok((o, l))
                },
            )
            .collect::<Result<_>>()?;
        for (&(bi, hi), (o, l)) in pairs.iter().zip(res) {
            scatter(&mut out, &o, bi, hi, lq, spec, h * d, 0);
            lse[(bi * h + hi) * lq..(bi * h + hi + 1) * lq].copy_from_slice(&l);
        }
    }
    Ok((CpuStorage::from_real(out), CpuStorage::from_real(lse)))
}

/// Per-(b, h) gradients: dq `lq×d`, dk `lk×d`, dv `lk×d`, and dscores `lq×lk` when
/// there is a bias to take its gradient.
type PairGrads<T> = (Vec<T>, Vec<T>, Vec<T>, Option<Vec<T>>);

/// Backward's score-sized blocks for one thread: P, dS and (with dropout) P∘Z. Each is
/// overwritten in full for every pair, so reusing them needs no clearing.
struct Blocks<T> {
    p: Vec<T>,
    ds: Vec<T>,
    pz: Vec<T>,
}

impl<T: Real> Blocks<T> {
    fn new(n: usize, dropout: bool) -> Blocks<T> {
        Blocks {
            p: vec![T::zero(); n],
            ds: vec![T::zero(); n],
            pz: vec![T::zero(); if dropout { n } else { 0 }],
        }
    }
}

/// Gradients of q, k, v: three buffers, or one packed buffer in the layout of the input.
pub(super) enum QkvGrads {
    Separate(CpuStorage, CpuStorage, CpuStorage),
    Packed(CpuStorage),
}

pub(super) fn attention_backward<T: Real>(
    qkv: &Qkv<'_>,
    saved: AttnSaved<'_, CpuStorage>,
    args: AttnArgs<'_, CpuStorage>,
) -> Result<(QkvGrads, Option<CpuStorage>)> {
    const OP: &str = "attention_backward";
    let a = inputs::<T>(OP, qkv, args)?;
    let spec = &args.spec;
    let AttnSpec {
        b, h, lq, lk, d, ..
    } = *spec;
    let lay = a.lay;
    let (o, lse, dout) = (
        saved.out.floats::<T>(OP)?,
        saved.lse.floats::<T>(OP)?,
        saved.dout.floats::<T>(OP)?,
    );
    check_len(OP, "out [b, lq, h, d]", b * lq * h * d, o.len())?;
    check_len(OP, "dout [b, lq, h, d]", b * lq * h * d, dout.len())?;
    check_len(OP, "lse [b, h, lq]", b * h * lq, lse.len())?;
    // Packed: dq, dk and dv are the one buffer `dq` (dk and dv stay empty).
    let mut dq = vec![T::zero(); a.q.len()];
    let (mut dk, mut dv) = if lay.is_packed() {
        (Vec::new(), Vec::new())
    } else {
        (vec![T::zero(); a.k.len()], vec![T::zero(); a.v.len()])
    };
    let mut dbias = a.bias.map(|_| vec![T::zero(); h * lq * lk]);
    let hd = h * d;
    let drop = Dropout::<T>::of(spec);
    for pairs in a.waves() {
        let res: Vec<PairGrads<T>> = pairs
            .par_iter()
            // One set of score-sized blocks per rayon split, reused pair after pair.
            .map_init(
                || Blocks::new(lq * lk, drop.is_some()),
                |bl, &(bi, hi)| {
                    // P from the saved lse; masked entries are exp(-inf) = 0.
                    a.scores_into(bi, hi, &mut bl.p)?;
                    let lse_pair = &lse[(bi * h + hi) * lq..(bi * h + hi + 1) * lq];
                    for (row, &l) in bl.p.chunks_mut(lk.max(1)).zip(lse_pair) {
                        simd::exp_sub_row(row, l);
                    }
                    // dP = dO·vᵀ, then dS = P ⊙ (dP − rowsum(dO ⊙ O)). With dropout Z:
                    // O = (P∘Z)·V, so dS = P ⊙ (Z ⊙ dP − rowsum(dO ⊙ O)) and
                    // dV = (P∘Z)ᵀ·dO.
                    let d_o = (dout, a.o_rows(bi, hi));
                    product_into(
                        (lq, lk, d),
                        &mut bl.ds,
                        d_o,
                        (a.v, a.v_cols(bi, hi)),
                        T::one(),
                    )?;
                    let w = lk.max(1);
                    let rows = bl.ds.chunks_mut(w).zip(bl.p.chunks(w));
                    for (i, (ds_row, p_row)) in rows.enumerate() {
                        let r = (bi * lq + i) * hd + hi * d;
                        let di: T = (0..d).map(|c| dout[r + c] * o[r + c]).sum();
                        if let Some(z) = &drop {
                            let pz_row = &mut bl.pz[i * lk..(i + 1) * lk];
                            let base = row_base(spec, bi, hi, i);
                            simd::dropout_row_pair(
                                ds_row,
                                p_row,
                                pz_row,
                                z.key,
                                base,
                                z.rate,
                                z.keep_scale,
                            );
                        }
                        simd::score_grad_row(ds_row, p_row, di);
                    }
                    let pz = if drop.is_some() { &bl.pz } else { &bl.p };
                    // dS (lq×lk) as stored, and read transposed (lk×lq) for dk and dv.
                    let ds_t = View {
                        off: 0,
                        rs: 1,
                        cs: lk,
                    };
                    let ds = &bl.ds[..];
                    let (q, k) = ((a.q, a.q_rows(bi, hi)), (a.k, a.k_rows(bi, hi)));
                    // dq = scale · dS · k, dk = scale · dSᵀ · q, dv = (P∘Z)ᵀ · dO
                    let gq = product((lq, d, lk), (ds, View::row_major(0, lk)), k, a.scale)?;
                    let gk = product((lk, d, lq), (ds, ds_t), q, a.scale)?;
                    let gv = product((lk, d, lq), (&pz[..], ds_t), d_o, T::one())?;
                    // dS itself only for the bias gradient.
                    Ok((gq, gk, gv, a.bias.map(|_| ds.to_vec())))
                },
            )
            .collect::<Result<_>>()?;
        for (&(bi, hi), (gq, gk, gv, ds)) in pairs.iter().zip(res) {
            scatter(&mut dq, &gq, bi, hi, lq, spec, lay.ldq, lay.q_off);
            if lay.is_packed() {
                scatter(&mut dq, &gk, bi, hi, lk, spec, lay.ldkv, lay.k_off);
                scatter(&mut dq, &gv, bi, hi, lk, spec, lay.ldkv, lay.v_off);
            } else {
                scatter(&mut dk, &gk, bi, hi, lk, spec, lay.ldkv, lay.k_off);
                scatter(&mut dv, &gv, bi, hi, lk, spec, lay.ldkv, lay.v_off);
            }
            if let (Some(db), Some(ds)) = (dbias.as_mut(), ds) {
                for (x, &g) in db[hi * lq * lk..(hi + 1) * lq * lk].iter_mut().zip(&ds) {
                    *x += g;
                }
            }
        }
    }
    let grads = if lay.is_packed() {
        QkvGrads::Packed(CpuStorage::from_real(dq))
    } else {
        QkvGrads::Separate(
            CpuStorage::from_real(dq),
            CpuStorage::from_real(dk),
            CpuStorage::from_real(dv),
        )
    };
    Ok((grads, dbias.map(CpuStorage::from_real)))
}
