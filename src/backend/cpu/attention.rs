//! Attention, forward and backward, for both model families (mirrors
//! kernels/attention.cu): softmax(scale·q·kᵀ + bias + masks)·v with a key padding mask,
//! an end-aligned causal mask and T5's additive per-head bias.
//!
//! q, k, v stay in the `[B, L, H, D]` layout the projections produce: each (batch, head)
//! slice is a strided matrix (row stride H·D, or 3·H·D when q, k and v are the columns of
//! one fused QKV projection `[B, L, 3, H, D]`), so the two products per head go straight
//! to gemm with strides and nothing is transposed or copied; the packed layout's
//! gradients land in one packed buffer, as the CUDA kernels write them. Work is split over
//! (batch, head) pairs; each pair materialises its `Lq × Lk` score matrix in a block its
//! thread reuses, which is fine on a CPU (the CUDA kernel tiles it instead), and its
//! products write straight into the pair's slice of the output (no per-pair buffers, no
//! copy back). With T5's bias, backward's tasks are whole heads instead, so each head's
//! bias gradient is summed over the batch in batch order by one thread. Backward
//! recomputes the probabilities from the saved log-sum-exp rather than keeping them.
//!
//! A row whose keys are all masked has lse = -inf and probability 0 everywhere, so it
//! outputs zeros and passes no gradient (never NaN).

use gemm::Parallelism;
use rayon::prelude::*;

use super::matmul::{gemm_strided, SharedDst, View};
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
    View::transposed(b * l * ld + off + h * s.d, ld)
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
}

/// gemm on the calling thread: the (b, h) pairs are what runs in parallel.
const NONE: Parallelism = Parallelism::None;

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
    gemm_strided((m, n, k), dst, cv, a, av, b, bv, alpha, false, NONE)
}

/// The (b, h) pairs, batch-major.
fn pairs(s: &AttnSpec) -> Vec<(usize, usize)> {
    (0..s.b)
        .flat_map(|bi| (0..s.h).map(move |hi| (bi, hi)))
        .collect()
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
    let (out_w, lse_w) = (SharedDst::new(&mut out), SharedDst::new(&mut lse));
    pairs(spec).par_iter().try_for_each_init(
        // One score block per rayon split, reused pair after pair.
        || vec![T::zero(); lq * lk],
        |p, &(bi, hi)| -> Result<()> {
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
            let v = (a.v, a.v_rows(bi, hi));
            // SAFETY: pair (bi, hi) alone writes its slice of out and its lse row.
            unsafe {
                out_w.gemm((lq, d, lk), a.o_rows(bi, hi), p, v, T::one(), false, NONE)?;
                lse_w.copy_at((bi * h + hi) * lq, &l)
            }
        },
    )?;
    Ok((CpuStorage::from_real(out), CpuStorage::from_real(lse)))
}

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
    let dq_w = SharedDst::new(&mut dq);
    // Packed: dk and dv are columns of dq's buffer.
    let (dk_w, dv_w) = if lay.is_packed() {
        (dq_w, dq_w)
    } else {
        (SharedDst::new(&mut dk), SharedDst::new(&mut dv))
    };
    let db_w = dbias.as_mut().map(|db| SharedDst::new(db));
    // Tasks: (head, batches). With a bias, whole heads (its gradient sums over the batch).
    let tasks: Vec<(usize, std::ops::Range<usize>)> = if db_w.is_some() {
        (0..h).map(|hi| (hi, 0..b)).collect()
    } else {
        pairs(spec)
            .into_iter()
            .map(|(bi, hi)| (hi, bi..bi + 1))
            .collect()
    };
    tasks.par_iter().try_for_each_init(
        // One set of score-sized blocks per rayon split, reused pair after pair.
        || Blocks::new(lq * lk, drop.is_some()),
        |bl, (hi, batches)| -> Result<()> {
            let hi = *hi;
            for bi in batches.clone() {
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
                let v_cols = (a.v, a.v_cols(bi, hi));
                product_into((lq, lk, d), &mut bl.ds, d_o, v_cols, T::one())?;
                let w = lk.max(1);
                let row_pairs = bl.ds.chunks_mut(w).zip(bl.p.chunks(w));
                for (i, (ds_row, p_row)) in row_pairs.enumerate() {
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
                let ds = (&bl.ds[..], View::row_major(0, lk));
                let ds_t = (&bl.ds[..], View::transposed(0, lk));
                let pz_t = (&pz[..], ds_t.1);
                let (q, k) = ((a.q, a.q_rows(bi, hi)), (a.k, a.k_rows(bi, hi)));
                let dq_v = rows(spec, bi, hi, lq, lay.ldq, lay.q_off);
                let dk_v = rows(spec, bi, hi, lk, lay.ldkv, lay.k_off);
                let dv_v = rows(spec, bi, hi, lk, lay.ldkv, lay.v_off);
                // dq = scale · dS · k, dk = scale · dSᵀ · q, dv = (P∘Z)ᵀ · dO, each into
                // this pair's slice; dS itself into the head's bias gradient.
                // SAFETY: pair (bi, hi) alone writes those slices, and the task of head
                // hi alone its bias gradient block.
                unsafe {
                    dq_w.gemm((lq, d, lk), dq_v, ds, k, a.scale, false, NONE)?;
                    dk_w.gemm((lk, d, lq), dk_v, ds_t, q, a.scale, false, NONE)?;
                    dv_w.gemm((lk, d, lq), dv_v, pz_t, d_o, T::one(), false, NONE)?;
                    if let Some(db) = &db_w {
                        db.add_at(hi * lq * lk, &bl.ds)?;
                    }
                }
            }
            Ok(())
        },
    )?;
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
