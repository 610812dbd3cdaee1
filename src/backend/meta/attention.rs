//! Attention on the meta device: the buffers each target's attention allocates, in its
//! order. The CPU allocates its results only. CUDA takes the fused kernels where
//! `cuda::attention_fused::planned` says they run (f16, head dim 32/64/128), with the
//! scratch `backward_scratch` lists; otherwise the unfused path of
//! backend/cuda/attention_unfused.rs, whose score matrices are followed here step by
//! step (and, for the packed op, its q/k/v copies and the final concatenation).

use super::MetaStorage;
use crate::backend::cuda::attention_fused;
use crate::backend::AttnSpec;
use crate::error::Result;
use crate::shape::DType;

type Grads = (MetaStorage, MetaStorage, MetaStorage, Option<MetaStorage>);

/// Elements of q (and of the output) `[b, lq, h, d]`, and of the bias `[h, lq, lk]`.
fn sizes(sp: &AttnSpec) -> (usize, usize) {
    (sp.b * sp.lq * sp.h * sp.d, sp.h * sp.lq * sp.lk)
}

/// Does CUDA run the fused kernels for this call?
fn fused(x: &MetaStorage, sp: &AttnSpec) -> Result<bool> {
    Ok(x.cuda()
        && sp.b * sp.h * sp.lq > 0
        && sp.d > 0
        && attention_fused::planned(x.dtype, sp)?.is_some())
}

/// (out, lse) of the separate-operand op.
pub(super) fn forward(
    q: &MetaStorage,
    _k: &MetaStorage,
    _v: &MetaStorage,
    bias: bool,
    sp: &AttnSpec,
) -> Result<(MetaStorage, MetaStorage)> {
    let rows = sp.b * sp.h * sp.lq;
    let out = q.like();
    let lse = q.out(rows, q.stat());
    if q.cuda() && rows > 0 && sp.lk > 0 && sp.d > 0 {
        if fused(q, sp)? {
            fused_forward_scratch(q, bias, sp);
        } else {
            // The f32 scores, then the probabilities in q's dtype.
            let s = q.out(rows * sp.lk, DType::F32);
            let p = q.out(rows * sp.lk, q.dtype);
            drop((s, p));
        }
    }
    Ok((out, lse))
}

/// The fused forward's f32 copy of the bias.
fn fused_forward_scratch(x: &MetaStorage, bias: bool, sp: &AttnSpec) {
    if bias {
        x.scratch(&[(sizes(sp).1, DType::F32)]);
    }
}

/// The fused backward after its gradients exist: the bias's f32 copy and the
/// kernel's scratch, and the bias gradient cast to q's dtype while they live.
fn fused_backward(x: &MetaStorage, bias: bool, sp: &AttnSpec) -> Option<MetaStorage> {
    let [delta, dq_acc, dbias] = attention_fused::backward_scratch(sp, bias);
    let mut held = Vec::new();
    if bias {
        held.push(x.out(sizes(sp).1, DType::F32));
    }
    for n in [delta, dq_acc] {
        held.push(x.out(n, DType::F32));
    }
    if !bias {
        return None;
    }
    held.push(x.out(dbias, DType::F32));
    Some(x.out(dbias, DType::F16))
}

/// (dq, dk, dv, dbias) of the separate-operand op.
pub(super) fn backward(
    q: &MetaStorage,
    k: &MetaStorage,
    v: &MetaStorage,
    bias: bool,
    sp: &AttnSpec,
) -> Result<Grads> {
    let (_, n_bias) = sizes(sp);
    if !q.cuda() {
        let db = bias.then(|| q.out(n_bias, q.dtype));
        return Ok((q.like(), k.like(), v.like(), db));
    }
    let (dq, dk, dv) = (q.like(), k.like(), v.like());
    if fused(q, sp)? && sp.lk > 0 {
        let db = fused_backward(q, bias, sp);
        return Ok((dq, dk, dv, db));
    }
    let rows = sp.b * sp.h * sp.lq;
    let dbias32 = bias.then(|| q.out(n_bias, DType::F32));
    if rows > 0 && sp.lk > 0 && sp.d > 0 {
        // Scores (f32), dP (f32), dS and P (q's dtype), all released before the cast.
        let n = rows * sp.lk;
        q.scratch(&[(n, DType::F32), (n, DType::F32), (n, q.dtype), (n, q.dtype)]);
    }
    let db = match dbias32 {
        Some(d) if q.dtype == DType::F16 => {
            let cast = q.out(n_bias, DType::F16);
            drop(d);
            Some(cast)
        }
        other => other,
    };
    Ok((dq, dk, dv, db))
}

/// The unfused path's copy of q, k or v out of the packed `[b, l, 3, h, d]` buffer.
fn unpacked(qkv: &MetaStorage, sp: &AttnSpec) -> MetaStorage {
    qkv.out(sizes(sp).0, qkv.dtype)
}

/// (out, lse) of the packed op.
pub(super) fn forward_packed(
    qkv: &MetaStorage,
    bias: bool,
    sp: &AttnSpec,
) -> Result<(MetaStorage, MetaStorage)> {
    if qkv.cuda() && !fused(qkv, sp)? {
        let (q, k, v) = (unpacked(qkv, sp), unpacked(qkv, sp), unpacked(qkv, sp));
        return forward(&q, &k, &v, bias, sp);
    }
    let out = qkv.out(sizes(sp).0, qkv.dtype);
    let lse = qkv.out(sp.b * sp.h * sp.lq, qkv.stat());
    if qkv.cuda() {
        fused_forward_scratch(qkv, bias, sp);
    }
    Ok((out, lse))
}

/// (dqkv, dbias) of the packed op.
pub(super) fn backward_packed(
    qkv: &MetaStorage,
    bias: bool,
    sp: &AttnSpec,
) -> Result<(MetaStorage, Option<MetaStorage>)> {
    let n = sizes(sp).0;
    if !qkv.cuda() {
        let db = bias.then(|| qkv.out(sizes(sp).1, qkv.dtype));
        return Ok((qkv.like(), db));
    }
    if fused(qkv, sp)? {
        let dqkv = qkv.like();
        return Ok((dqkv, fused_backward(qkv, bias, sp)));
    }
    let (q, k, v) = (unpacked(qkv, sp), unpacked(qkv, sp), unpacked(qkv, sp));
    let (dq, dk, dv, db) = backward(&q, &k, &v, bias, sp)?;
    let dqkv = qkv.out(3 * n, qkv.dtype);
    drop((dq, dk, dv));
    Ok((dqkv, db))
}
