//! Attention on CUDA. For now the naive path: cuBLAS strided-batched GEMMs for q·kᵀ,
//! P·v and their gradients around the masked/biased/causal softmax kernels of
//! kernels/attention_naive.cu, with fp32 scores ([B, H, Lq, Lk] scratch).
//!
//! Why it is built this way: it is simple enough to be obviously right, so it serves as
//! the device-side reference and the fallback for the fused flash kernel
//! (kernels/attention.cu, entry points fb_attn_fwd_f16 / fb_attn_bwd_f16, written
//! separately). `attention`/`attention_backward` are the switch point: when the fused
//! kernel lands it is chosen there for the shapes it supports. q/k/v are [B, L, H, D],
//! so head h of batch b is a strided matrix with row stride H·D; each GEMM batches over
//! the heads of one batch entry (stride D) and loops over B.

use super::blas::{gemm, Gemm};
use super::context::{cfg_rows, Arg, Dev};
use super::elementwise::cast;
use super::{len_err, sfx, CudaStorage};
use crate::backend::{AttnSpec, BackendStorage};
use crate::error::{Error, Result};
use crate::shape::DType;

fn check(
    q: &CudaStorage,
    k: &CudaStorage,
    v: &CudaStorage,
    key_mask: Option<&CudaStorage>,
    bias: Option<&CudaStorage>,
    sp: &AttnSpec,
) -> Result<&'static str> {
    let op = "attention";
    let s = sfx(op, q.dtype())?;
    if q.len() != sp.b * sp.lq * sp.h * sp.d {
        return Err(len_err(op, sp.b * sp.lq * sp.h * sp.d, q.len()));
    }
    for t in [k, v] {
        if t.len() != sp.b * sp.lk * sp.h * sp.d {
            return Err(len_err(op, sp.b * sp.lk * sp.h * sp.d, t.len()));
        }
        if t.dtype() != q.dtype() {
            return Err(Error::DType {
                op,
                expected: q.dtype().as_str(),
                got: t.dtype(),
            });
        }
    }
    if let Some(m) = key_mask {
        if m.dtype() != DType::I32 || m.len() != sp.b * sp.lk {
            return Err(len_err(
                "attention key_mask (i32 [b, lk])",
                sp.b * sp.lk,
                m.len(),
            ));
        }
    }
    if let Some(b) = bias {
        if b.dtype() != q.dtype() || b.len() != sp.h * sp.lq * sp.lk {
            return Err(len_err(
                "attention bias ([h, lq, lk], dtype of q)",
                sp.h * sp.lq * sp.lk,
                b.len(),
            ));
        }
    }
    Ok(s)
}

/// Per batch entry, batched over heads: C[h] = alpha · op(A[h]) · op(B[h]).
#[allow(clippy::too_many_arguments)]
fn per_batch(
    dev: &Dev,
    sp: &AttnSpec,
    base: Gemm,
    a: (u64, usize),
    b: (u64, usize),
    c: (u64, usize),
    esz: (usize, usize),
) -> Result<()> {
    // a, b, c: (pointer, elements between batch entries); esz: (A/B elem size, C elem size)
    for bi in 0..sp.b {
        let mut g = base;
        g.a = a.0 + (bi * a.1 * esz.0) as u64;
        g.b = b.0 + (bi * b.1 * esz.0) as u64;
        g.c = c.0 + (bi * c.1 * esz.1) as u64;
        g.batch = sp.h;
        gemm(dev, &g)?;
    }
    Ok(())
}

/// S = q·kᵀ in f32, [B, H, Lq, Lk].
fn scores(q: &CudaStorage, k: &CudaStorage, sp: &AttnSpec) -> Result<CudaStorage> {
    let (hd, esz) = (sp.h * sp.d, q.dtype().size_in_bytes());
    let s = CudaStorage::alloc(q.dev(), sp.b * sp.h * sp.lq * sp.lk, DType::F32)?;
    let base = Gemm {
        trans_a: false,
        trans_b: true,
        m: sp.lq,
        n: sp.lk,
        k: sp.d,
        a: 0,
        lda: hd,
        stride_a: sp.d,
        b: 0,
        ldb: hd,
        stride_b: sp.d,
        c: 0,
        ldc: sp.lk,
        stride_c: sp.lq * sp.lk,
        batch: sp.h,
        alpha: 1.0,
        beta: 0.0,
        ab: q.dtype(),
        c_type: DType::F32,
    };
    per_batch(
        q.dev(),
        sp,
        base,
        (q.ptr(), sp.lq * hd),
        (k.ptr(), sp.lk * hd),
        (s.ptr(), sp.h * sp.lq * sp.lk),
        (esz, 4),
    )?;
    Ok(s)
}

fn opt_ptr(t: Option<&CudaStorage>) -> u64 {
    t.map(|t| t.ptr()).unwrap_or(0)
}

pub fn attention(
    q: &CudaStorage,
    k: &CudaStorage,
    v: &CudaStorage,
    key_mask: Option<&CudaStorage>,
    bias: Option<&CudaStorage>,
    sp: &AttnSpec,
) -> Result<(CudaStorage, CudaStorage)> {
    let sx = check(q, k, v, key_mask, bias, sp)?;
    let dev = q.dev();
    let (hd, esz) = (sp.h * sp.d, q.dtype().size_in_bytes());
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
    let s = scores(q, k, sp)?;
    let p = CudaStorage::alloc(dev, rows * sp.lk, q.dtype())?;
    dev.launch(
        &format!("fb_attn_softmax_{sx}"),
        cfg_rows(rows, sp.lk),
        &[
            Arg::Ptr(p.ptr()),
            Arg::Ptr(lse.ptr()),
            Arg::Ptr(s.ptr()),
            Arg::Ptr(opt_ptr(bias)),
            Arg::Ptr(opt_ptr(key_mask)),
            Arg::I64(sp.b as i64),
            Arg::I64(sp.h as i64),
            Arg::I64(sp.lq as i64),
            Arg::I64(sp.lk as i64),
            Arg::F32(sp.scale),
            Arg::I32(sp.causal as i32),
        ],
    )?;
    let base = Gemm {
        trans_a: false,
        trans_b: false,
        m: sp.lq,
        n: sp.d,
        k: sp.lk,
        a: 0,
        lda: sp.lk,
        stride_a: sp.lq * sp.lk,
        b: 0,
        ldb: hd,
        stride_b: sp.d,
        c: 0,
        ldc: hd,
        stride_c: sp.d,
        batch: sp.h,
        alpha: 1.0,
        beta: 0.0,
        ab: q.dtype(),
        c_type: q.dtype(),
    };
    per_batch(
        dev,
        sp,
        base,
        (p.ptr(), sp.h * sp.lq * sp.lk),
        (v.ptr(), sp.lk * hd),
        (out.ptr(), sp.lq * hd),
        (esz, esz),
    )?;
    Ok((out, lse))
}

#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &CudaStorage,
    k: &CudaStorage,
    v: &CudaStorage,
    out: &CudaStorage,
    lse: &CudaStorage,
    dout: &CudaStorage,
    key_mask: Option<&CudaStorage>,
    bias: Option<&CudaStorage>,
    sp: &AttnSpec,
) -> Result<(CudaStorage, CudaStorage, CudaStorage, Option<CudaStorage>)> {
    let sx = check(q, k, v, key_mask, bias, sp)?;
    let rows = sp.b * sp.h * sp.lq;
    if out.len() != q.len() || dout.len() != q.len() || dout.dtype() != q.dtype() {
        return Err(len_err("attention_backward dout", q.len(), dout.len()));
    }
    if lse.len() != rows || lse.dtype() != DType::F32 {
        return Err(len_err(
            "attention_backward lse (f32 [b, h, lq])",
            rows,
            lse.len(),
        ));
    }
    let dev = q.dev();
    let (hd, esz) = (sp.h * sp.d, q.dtype().size_in_bytes());
    let dq = q.zeros_like_dev(q.len(), q.dtype())?;
    let dk = q.zeros_like_dev(k.len(), q.dtype())?;
    let dv = q.zeros_like_dev(v.len(), q.dtype())?;
    let dbias32 = match bias {
        Some(_) => Some(q.zeros_like_dev(sp.h * sp.lq * sp.lk, DType::F32)?),
        None => None,
    };
    if rows > 0 && sp.lk > 0 && sp.d > 0 {
        let s = scores(q, k, sp)?;
        // dP = dO · Vᵀ (f32)
        let dp = CudaStorage::alloc(dev, rows * sp.lk, DType::F32)?;
        let base = Gemm {
            trans_a: false,
            trans_b: true,
            m: sp.lq,
            n: sp.lk,
            k: sp.d,
            a: 0,
            lda: hd,
            stride_a: sp.d,
            b: 0,
            ldb: hd,
            stride_b: sp.d,
            c: 0,
            ldc: sp.lk,
            stride_c: sp.lq * sp.lk,
            batch: sp.h,
            alpha: 1.0,
            beta: 0.0,
            ab: q.dtype(),
            c_type: DType::F32,
        };
        let sc = sp.h * sp.lq * sp.lk;
        per_batch(
            dev,
            sp,
            base,
            (dout.ptr(), sp.lq * hd),
            (v.ptr(), sp.lk * hd),
            (dp.ptr(), sc),
            (esz, 4),
        )?;
        let ds = CudaStorage::alloc(dev, rows * sp.lk, q.dtype())?;
        let p = CudaStorage::alloc(dev, rows * sp.lk, q.dtype())?;
        dev.launch(
            &format!("fb_attn_softmax_bwd_{sx}"),
            cfg_rows(rows, sp.lk),
            &[
                Arg::Ptr(ds.ptr()),
                Arg::Ptr(p.ptr()),
                Arg::Ptr(opt_ptr(dbias32.as_ref())),
                Arg::Ptr(s.ptr()),
                Arg::Ptr(dp.ptr()),
                Arg::Ptr(lse.ptr()),
                Arg::Ptr(opt_ptr(bias)),
                Arg::Ptr(opt_ptr(key_mask)),
                Arg::I64(sp.b as i64),
                Arg::I64(sp.h as i64),
                Arg::I64(sp.lq as i64),
                Arg::I64(sp.lk as i64),
                Arg::F32(sp.scale),
                Arg::I32(sp.causal as i32),
            ],
        )?;
        // dQ = scale · dS · K
        let g = Gemm {
            trans_a: false,
            trans_b: false,
            m: sp.lq,
            n: sp.d,
            k: sp.lk,
            a: 0,
            lda: sp.lk,
            stride_a: sp.lq * sp.lk,
            b: 0,
            ldb: hd,
            stride_b: sp.d,
            c: 0,
            ldc: hd,
            stride_c: sp.d,
            batch: sp.h,
            alpha: sp.scale,
            beta: 0.0,
            ab: q.dtype(),
            c_type: q.dtype(),
        };
        per_batch(
            dev,
            sp,
            g,
            (ds.ptr(), sc),
            (k.ptr(), sp.lk * hd),
            (dq.ptr(), sp.lq * hd),
            (esz, esz),
        )?;
        // dK = scale · dSᵀ · Q ; dV = Pᵀ · dO
        let g = Gemm {
            trans_a: true,
            trans_b: false,
            m: sp.lk,
            n: sp.d,
            k: sp.lq,
            a: 0,
            lda: sp.lk,
            stride_a: sp.lq * sp.lk,
            b: 0,
            ldb: hd,
            stride_b: sp.d,
            c: 0,
            ldc: hd,
            stride_c: sp.d,
            batch: sp.h,
            alpha: sp.scale,
            beta: 0.0,
            ab: q.dtype(),
            c_type: q.dtype(),
        };
        per_batch(
            dev,
            sp,
            g,
            (ds.ptr(), sc),
            (q.ptr(), sp.lq * hd),
            (dk.ptr(), sp.lk * hd),
            (esz, esz),
        )?;
        let g = Gemm { alpha: 1.0, ..g };
        per_batch(
            dev,
            sp,
            g,
            (p.ptr(), sc),
            (dout.ptr(), sp.lq * hd),
            (dv.ptr(), sp.lk * hd),
            (esz, esz),
        )?;
    }
    let dbias = match dbias32 {
        Some(d) if q.dtype() == DType::F16 => Some(cast(&d, DType::F16)?),
        other => other,
    };
    Ok((dq, dk, dv, dbias))
}
