//! Attention on CUDA: the naive path (cuBLAS strided-batched GEMMs for q·kᵀ,
//! P·v and their gradients around the masked/biased/causal softmax kernels of
//! kernels/attention_naive.cu, with fp32 scores ([B, H, Lq, Lk] scratch).
//!
//! Why it is built this way: it is simple enough to be obviously right, so it serves as
//! the device-side reference and the fallback for the fused flash kernels
//! (kernels/attention.cu, host side in attention_fused.rs). `attention` and
//! `attention_backward` are the switch point: `attention_fused::choose` picks the fused
//! kernels for the shapes they take unless FUSEBOX_ATTN=naive. q/k/v are [B, L, H, D],
//! so head h of batch b is a strided matrix with row stride H·D; each GEMM batches over
//! the heads of one batch entry (stride D) and loops over B.

use super::attention_fused::{self, opt_ptr, QkvPtrs};
use super::blas::{gemm, Gemm};
use super::context::{cfg_rows, Arg, Dev};
use super::elementwise::cast;
use super::{len_err, sfx, CudaStorage};
use crate::backend::{AttnArgs, AttnSaved, AttnSpec, BackendStorage};
use crate::error::{Error, Result};
use crate::shape::{DType, Shape};

fn check(
    q: &CudaStorage,
    k: &CudaStorage,
    v: &CudaStorage,
    a: AttnArgs<'_, CudaStorage>,
) -> Result<&'static str> {
    let (op, sp) = ("attention", &a.spec);
    let s = sfx(op, q.dtype())?;
    if q.len() != sp.b * sp.lq * sp.h * sp.d {
        return Err(len_err(op, sp.b * sp.lq * sp.h * sp.d, q.len()));
    }
    for t in [k, v] {
        if t.len() != sp.b * sp.lk * sp.h * sp.d {
            return Err(len_err(op, sp.b * sp.lk * sp.h * sp.d, t.len()));
        }
        q.check_dtype(t, op)?;
    }
    check_mask_bias(q.dtype(), a)?;
    Ok(s)
}

fn check_mask_bias(dt: DType, a: AttnArgs<'_, CudaStorage>) -> Result<()> {
    let sp = &a.spec;
    if let Some(m) = a.key_mask {
        if m.dtype() != DType::I32 || m.len() != sp.b * sp.lk {
            return Err(len_err(
                "attention key_mask (i32 [b, lk])",
                sp.b * sp.lk,
                m.len(),
            ));
        }
    }
    if let Some(b) = a.bias {
        if b.dtype() != dt || b.len() != sp.h * sp.lq * sp.lk {
            return Err(len_err(
                "attention bias ([h, lq, lk], dtype of q)",
                sp.h * sp.lq * sp.lk,
                b.len(),
            ));
        }
    }
    Ok(())
}

/// A per-head operand: base address and element size in bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mat {
    pub ptr: u64,
    pub esz: usize,
}

/// One descriptor per batch entry, each batched over the H heads (head stride D in the
/// [B, L, H, D] tensors, L·L' in the [B, H, L, L'] score tensors).
fn per_batch(
    sp: &AttnSpec,
    base: Gemm,
    a: (Mat, usize),
    b: (Mat, usize),
    c: (Mat, usize),
) -> Vec<Gemm> {
    (0..sp.b)
        .map(|bi| Gemm {
            a: a.0.ptr + (bi * a.1 * a.0.esz) as u64,
            b: b.0.ptr + (bi * b.1 * b.0.esz) as u64,
            c: c.0.ptr + (bi * c.1 * c.0.esz) as u64,
            batch: sp.h,
            ..base
        })
        .collect()
}

/// What every per-head GEMM of this path shares: `lx` rows, B read per head from a
/// [B, l, H, D] buffer (row stride H·D, head offset D), one batch entry per head; the
/// callers set the rest (addresses come from `per_batch`).
fn per_head(sp: &AttnSpec, lx: usize, ab: DType) -> Gemm {
    Gemm {
        trans_a: false,
        trans_b: false,
        m: lx,
        n: 0,
        k: 0,
        a: 0,
        lda: 0,
        stride_a: 0,
        b: 0,
        ldb: sp.h * sp.d,
        stride_b: sp.d,
        c: 0,
        ldc: 0,
        stride_c: 0,
        batch: sp.h,
        alpha: 1.0,
        beta: 0.0,
        ab,
        c_type: ab,
    }
}

/// S[b, h] = X[b, :, h, :] · Y[b, :, h, :]ᵀ with X [B, lx, H, D], Y [B, ly, H, D] and
/// S [B, H, lx, ly] of `c_type` (q·kᵀ, and dO·vᵀ in backward).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemms_xyt(
    sp: &AttnSpec,
    (lx, ly): (usize, usize),
    x: Mat,
    y: Mat,
    s: Mat,
    ab: DType,
    c_type: DType,
) -> Vec<Gemm> {
    let hd = sp.h * sp.d;
    let base = Gemm {
        trans_b: true,
        n: ly,
        k: sp.d,
        lda: hd,
        stride_a: sp.d,
        ldc: ly,
        stride_c: lx * ly,
        c_type,
        ..per_head(sp, lx, ab)
    };
    per_batch(sp, base, (x, lx * hd), (y, ly * hd), (s, sp.h * lx * ly))
}

/// O[b, :, h, :] = alpha · op(P[b, h]) · Y[b, :, h, :] with Y [B, ly, H, D] and O
/// [B, lx, H, D]. P is stored [B, H, lx, ly] and used as is (P·v, and dS·k for dq), or
/// with `transposed` stored [B, H, ly, lx] and used transposed (dSᵀ·q for dk, Pᵀ·dO
/// for dv).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemms_p(
    sp: &AttnSpec,
    (lx, ly): (usize, usize),
    p: Mat,
    y: Mat,
    o: Mat,
    ab: DType,
    alpha: f32,
    transposed: bool,
) -> Vec<Gemm> {
    let hd = sp.h * sp.d;
    let base = Gemm {
        trans_a: transposed,
        n: sp.d,
        k: ly,
        lda: if transposed { lx } else { ly },
        stride_a: lx * ly,
        ldc: hd,
        stride_c: sp.d,
        alpha,
        ..per_head(sp, lx, ab)
    };
    per_batch(sp, base, (p, sp.h * lx * ly), (y, ly * hd), (o, lx * hd))
}

fn run(dev: &Dev, gemms: Vec<Gemm>) -> Result<()> {
    for g in &gemms {
        gemm(dev, g)?;
    }
    Ok(())
}

fn mat(t: &CudaStorage) -> Mat {
    Mat {
        ptr: t.ptr(),
        esz: t.dtype().size_in_bytes(),
    }
}

/// X·Yᵀ per head in f32, [B, H, Lq, Lk]: S = q·kᵀ, and dP = dO·vᵀ in backward.
fn scores(x: &CudaStorage, y: &CudaStorage, sp: &AttnSpec) -> Result<CudaStorage> {
    let s = CudaStorage::alloc(x.dev(), sp.b * sp.h * sp.lq * sp.lk, DType::F32)?;
    run(
        x.dev(),
        gemms_xyt(
            sp,
            (sp.lq, sp.lk),
            mat(x),
            mat(y),
            mat(&s),
            x.dtype(),
            DType::F32,
        ),
    )?;
    Ok(s)
}

/// The naive softmax kernels' trailing arguments: bias, mask, shape and the options.
fn softmax_args(a: AttnArgs<'_, CudaStorage>) -> impl Iterator<Item = Arg> {
    let sp = &a.spec;
    let shape = [sp.b, sp.h, sp.lq, sp.lk].map(|n| Arg::I64(n as i64));
    [Arg::Ptr(opt_ptr(a.bias)), Arg::Ptr(opt_ptr(a.key_mask))]
        .into_iter()
        .chain(shape)
        .chain(attention_fused::tail(sp))
}

pub fn attention(
    q: &CudaStorage,
    k: &CudaStorage,
    v: &CudaStorage,
    a: AttnArgs<'_, CudaStorage>,
) -> Result<(CudaStorage, CudaStorage)> {
    let sx = check(q, k, v, a)?;
    let sp = &a.spec;
    let dev = q.dev();
    let rows = sp.b * sp.h * sp.lq;
    let out = CudaStorage::alloc(dev, q.len(), q.dtype())?;
    let lse = CudaStorage::alloc(dev, rows, DType::F32)?;
    if rows == 0 {
        return Ok((out, lse));
    }
    if sp.lk == 0 || sp.d == 0 {
        let z = out.zeros_like_dev(q.len(), q.dtype())?;
        let l = lse.full_like_dev(rows, DType::F32, f64::NEG_INFINITY)?;
        return Ok((z, l));
    }
    if let Some(suffix) = attention_fused::choose(dev, q.dtype(), sp)? {
        let ptrs = QkvPtrs::separate(q.ptr(), k.ptr(), v.ptr(), sp);
        attention_fused::forward(suffix, dev, &ptrs, a, (&out, &lse))?;
        return Ok((out, lse));
    }
    let s = scores(q, k, sp)?;
    let p = CudaStorage::alloc(dev, rows * sp.lk, q.dtype())?;
    let mut args = vec![Arg::Ptr(p.ptr()), Arg::Ptr(lse.ptr()), Arg::Ptr(s.ptr())];
    args.extend(softmax_args(a));
    dev.launch(
        &format!("fb_attn_softmax_{sx}"),
        cfg_rows(rows, sp.lk),
        &args,
    )?;
    let dims = (sp.lq, sp.lk);
    let pv = gemms_p(sp, dims, mat(&p), mat(v), mat(&out), q.dtype(), 1.0, false);
    run(dev, pv)?;
    Ok((out, lse))
}

pub fn attention_backward(
    q: &CudaStorage,
    k: &CudaStorage,
    v: &CudaStorage,
    saved: AttnSaved<'_, CudaStorage>,
    a: AttnArgs<'_, CudaStorage>,
) -> Result<(CudaStorage, CudaStorage, CudaStorage, Option<CudaStorage>)> {
    let sx = check(q, k, v, a)?;
    let sp = &a.spec;
    let rows = sp.b * sp.h * sp.lq;
    check_saved("attention_backward", saved, q.len(), q.dtype(), sp)?;
    let dev = q.dev();
    let dt = q.dtype();
    if rows > 0 && sp.lk > 0 && sp.d > 0 {
        if let Some(suffix) = attention_fused::choose(dev, dt, sp)? {
            let dq = CudaStorage::alloc(dev, q.len(), dt)?;
            let dk = CudaStorage::alloc(dev, k.len(), dt)?;
            let dv = CudaStorage::alloc(dev, v.len(), dt)?;
            let ptrs = QkvPtrs::separate(q.ptr(), k.ptr(), v.ptr(), sp);
            let grads = QkvPtrs::separate(dq.ptr(), dk.ptr(), dv.ptr(), sp);
            let db = attention_fused::backward(suffix, dev, (&ptrs, &grads), saved, a)?;
            return Ok((dq, dk, dv, db));
        }
    }
    let dq = q.zeros_like_dev(q.len(), dt)?;
    let dk = q.zeros_like_dev(k.len(), dt)?;
    let dv = q.zeros_like_dev(v.len(), dt)?;
    let dbias32 = match a.bias {
        Some(_) => Some(q.zeros_like_dev(sp.h * sp.lq * sp.lk, DType::F32)?),
        None => None,
    };
    if rows > 0 && sp.lk > 0 && sp.d > 0 {
        let s = scores(q, k, sp)?;
        let dp = scores(saved.dout, v, sp)?;
        let ds = CudaStorage::alloc(dev, rows * sp.lk, dt)?;
        let p = CudaStorage::alloc(dev, rows * sp.lk, dt)?;
        let mut args = vec![
            Arg::Ptr(ds.ptr()),
            Arg::Ptr(p.ptr()),
            Arg::Ptr(opt_ptr(dbias32.as_ref())),
            Arg::Ptr(s.ptr()),
            Arg::Ptr(dp.ptr()),
            Arg::Ptr(saved.lse.ptr()),
        ];
        args.extend(softmax_args(a));
        dev.launch(
            &format!("fb_attn_softmax_bwd_{sx}"),
            cfg_rows(rows, sp.lk),
            &args,
        )?;
        // dq = scale·dS·k, dk = scale·dSᵀ·q, dv = Pᵀ·dO.
        let lk_lq = (sp.lk, sp.lq);
        for (p, y, o, dims, alpha, transposed) in [
            (&ds, k, &dq, (sp.lq, sp.lk), sp.scale, false),
            (&ds, q, &dk, lk_lq, sp.scale, true),
            (&p, saved.dout, &dv, lk_lq, 1.0, true),
        ] {
            let g = gemms_p(sp, dims, mat(p), mat(y), mat(o), dt, alpha, transposed);
            run(dev, g)?;
        }
    }
    let dbias = match dbias32 {
        Some(d) if dt == DType::F16 => Some(cast(&d, DType::F16)?),
        other => other,
    };
    Ok((dq, dk, dv, dbias))
}

/// What forward saved for backward: out and dout `n` elements of `dt`, lse f32 `[b, h, lq]`.
fn check_saved(
    op: &'static str,
    AttnSaved { out, lse, dout }: AttnSaved<'_, CudaStorage>,
    n: usize,
    dt: DType,
    sp: &AttnSpec,
) -> Result<()> {
    let rows = sp.b * sp.h * sp.lq;
    let err = |what: String, got: usize| Error::Shape {
        op,
        expected: what,
        got: Shape::new(&[got]),
    };
    if out.len() != n || dout.len() != n || dout.dtype() != dt {
        return Err(err(
            format!("out and dout of {n} {dt} elements"),
            dout.len(),
        ));
    }
    if lse.len() != rows || lse.dtype() != DType::F32 {
        return Err(err(
            format!("lse of {rows} f32 elements ([b, h, lq])"),
            lse.len(),
        ));
    }
    Ok(())
}

/// `[b·l, 3, h·d]` → q, k, v as `[b, l, h, d]` copies (the naive path's inputs).
fn unpack(qkv: &CudaStorage, sp: &AttnSpec) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    let one = |which| qkv.narrow(&[sp.b * sp.lq, 3, sp.h * sp.d], 1, which, 1);
    Ok((one(0)?, one(1)?, one(2)?))
}

fn check_packed(op: &'static str, qkv: &CudaStorage, sp: &AttnSpec) -> Result<()> {
    if sp.lq != sp.lk {
        return Err(Error::msg(format!(
            "{op}: packed q/k/v need lq == lk, got {} and {}",
            sp.lq, sp.lk
        )));
    }
    let n = 3 * sp.b * sp.lq * sp.h * sp.d;
    if qkv.len() != n {
        return Err(len_err(op, n, qkv.len()));
    }
    Ok(())
}

/// Attention over the packed output of a fused QKV projection: the fused kernels read
/// q, k and v in place (row stride 3·H·D); the naive path takes copies.
pub fn attention_qkv(
    qkv: &CudaStorage,
    a: AttnArgs<'_, CudaStorage>,
) -> Result<(CudaStorage, CudaStorage)> {
    let sp = &a.spec;
    check_packed("attention_qkv", qkv, sp)?;
    let dev = qkv.dev();
    if sp.b * sp.h * sp.lq > 0 && sp.d > 0 {
        if let Some(suffix) = attention_fused::choose(dev, qkv.dtype(), sp)? {
            check_mask_bias(qkv.dtype(), a)?;
            let rows = sp.b * sp.h * sp.lq;
            let out = CudaStorage::alloc(dev, sp.b * sp.lq * sp.h * sp.d, qkv.dtype())?;
            let lse = CudaStorage::alloc(dev, rows, DType::F32)?;
            let ptrs = QkvPtrs::packed(qkv.ptr(), sp);
            attention_fused::forward(suffix, dev, &ptrs, a, (&out, &lse))?;
            return Ok((out, lse));
        }
    }
    let (q, k, v) = unpack(qkv, sp)?;
    attention(&q, &k, &v, a)
}

/// Backward of [`attention_qkv`]: dq, dk and dv in one packed buffer.
pub fn attention_qkv_backward(
    qkv: &CudaStorage,
    saved: AttnSaved<'_, CudaStorage>,
    a: AttnArgs<'_, CudaStorage>,
) -> Result<(CudaStorage, Option<CudaStorage>)> {
    let sp = &a.spec;
    check_packed("attention_qkv_backward", qkv, sp)?;
    let dev = qkv.dev();
    let dt = qkv.dtype();
    let n = sp.b * sp.lq * sp.h * sp.d;
    let rows = sp.b * sp.h * sp.lq;
    if rows > 0 && sp.d > 0 {
        if let Some(suffix) = attention_fused::choose(dev, dt, sp)? {
            check_mask_bias(dt, a)?;
            check_saved("attention_qkv_backward", saved, n, dt, sp)?;
            let dqkv = CudaStorage::alloc(dev, 3 * n, dt)?;
            let ptrs = QkvPtrs::packed(qkv.ptr(), sp);
            let grads = QkvPtrs::packed(dqkv.ptr(), sp);
            let db = attention_fused::backward(suffix, dev, (&ptrs, &grads), saved, a)?;
            return Ok((dqkv, db));
        }
    }
    let (q, k, v) = unpack(qkv, sp)?;
    let (dq, dk, dv, db) = attention_backward(&q, &k, &v, saved, a)?;
    let part = vec![sp.b * sp.lq, 1, sp.h * sp.d];
    let dqkv = CudaStorage::cat(&[&dq, &dk, &dv], &[part.clone(), part.clone(), part], 1)?;
    Ok((dqkv, db))
}

#[cfg(test)]
#[path = "attention_unfused_tests.rs"]
mod tests;
