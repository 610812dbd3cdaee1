//! Scaled dot-product attention as one op: softmax(scale·q·kᵀ + bias + masks)·v with
//! q, k, v in `[B, L, H, D]` (the linear layers' own layout). On CUDA this is the fused
//! kernel; on the CPU the reference. Backward returns dq, dk, dv and the gradient of
//! the additive bias (T5's relative positions) summed over the batch.

use crate::autograd::{needs_grad, record};
use crate::backend::{AttnArgs, AttnSaved, AttnSpec};
use crate::error::{Error, Result};
use crate::ops::{fresh, tracking};
use crate::profile::cost;
use crate::shape::DType;
use crate::tensor::Tensor;

/// Options of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnOptions<'a> {
    /// Multiplies q·kᵀ: `1/√d` for BERT, `1.0` for T5.
    pub scale: f32,
    pub causal: bool,
    /// I32 `[B, Lk]`, nonzero = attend.
    pub key_mask: Option<&'a Tensor>,
    /// `[H, Lq, Lk]`, added to the scores of every batch entry.
    pub bias: Option<&'a Tensor>,
    /// Dropout on the probabilities (0 = none) and its seed; fused into the kernel, the
    /// mask re-derived in backward from the seed.
    pub dropout: f32,
    pub seed: u64,
}

impl Default for AttnOptions<'_> {
    fn default() -> Self {
        AttnOptions {
            scale: 1.0,
            causal: false,
            key_mask: None,
            bias: None,
            dropout: 0.0,
            seed: 0,
        }
    }
}

/// The backend spec of a call, after checking the mask, bias and dropout against the
/// shapes `[b, h, lq, lk, d]`.
fn checked_spec(opt: &AttnOptions<'_>, [b, h, lq, lk, d]: [usize; 5]) -> Result<AttnSpec> {
    if let Some(m) = opt.key_mask {
        m.expect_shape("attention (key mask)", &[b, lk])?;
        if m.dtype() != DType::I32 {
            return Err(Error::DType {
                op: "attention (key mask)",
                expected: "i32",
                got: m.dtype(),
            });
        }
    }
    if let Some(bias) = opt.bias {
        bias.expect_shape("attention (bias)", &[h, lq, lk])?;
    }
    if !(0.0..1.0).contains(&opt.dropout) {
        return Err(Error::msg(format!(
            "attention: dropout must be in [0, 1), got {}",
            opt.dropout
        )));
    }
    Ok(AttnSpec {
        b,
        h,
        lq,
        lk,
        d,
        scale: opt.scale,
        causal: opt.causal,
        dropout: opt.dropout,
        seed: opt.seed,
    })
}

/// The q, k, v operands of a call: three tensors, or one packed `[B, L, 3, H, D]`.
enum Qkv<'a> {
    Separate(&'a Tensor, &'a Tensor, &'a Tensor),
    Packed(&'a Tensor),
}

impl Qkv<'_> {
    fn tensors(&self) -> Vec<&Tensor> {
        match self {
            Qkv::Separate(q, k, v) => vec![q, k, v],
            Qkv::Packed(x) => vec![x],
        }
    }
}

/// The attention op for either operand layout: forward on the backend, and a tape node
/// whose backward returns one gradient per q/k/v tensor (plus the bias's).
fn attention_op(qkv: Qkv<'_>, opt: AttnOptions<'_>, spec: AttnSpec) -> Result<Tensor> {
    let AttnSpec {
        b, h, lq, lk, d, ..
    } = spec;
    let first = qkv.tensors()[0];
    let _span = crate::profile::Span::new("attention", first.device()).cost(|| {
        let t: Vec<bool> = qkv.tensors().into_iter().map(tracking).collect();
        let tq = t[0];
        let (tk, tv) = (
            t.get(1).copied().unwrap_or(tq),
            t.get(2).copied().unwrap_or(tq),
        );
        let tbias = opt.bias.is_some_and(tracking);
        let shape = cost::AttnShape {
            b,
            h,
            lq,
            lk,
            d,
            causal: spec.causal,
            key_mask: opt.key_mask.is_some(),
            bias: opt.bias.is_some(),
        };
        cost::attention(shape, first.dtype(), [tq, tk, tv, tbias])
    });
    let (o, lse) = {
        // Storage guards end with this block, before the tape node is recorded.
        let mask_s = opt.key_mask.map(|m| m.storage());
        let bias_s = opt.bias.map(|t| t.storage());
        let a = AttnArgs::new(mask_s.as_deref(), bias_s.as_deref(), spec);
        match qkv {
            Qkv::Separate(q, k, v) => q.storage().attention(&k.storage(), &v.storage(), a)?,
            Qkv::Packed(x) => x.storage().attention_qkv(a)?,
        }
    };
    let out = fresh(o, [b, lq, h, d]);
    let mut inputs = qkv.tensors();
    inputs.extend(opt.bias);
    if !needs_grad(&inputs) {
        return Ok(out);
    }
    let tracks: Vec<bool> = inputs.iter().map(|t| t.tracks()).collect();
    let saved: Vec<Tensor> = qkv.tensors().iter().map(|t| t.detach()).collect();
    let packed = matches!(qkv, Qkv::Packed(_));
    let mask = opt.key_mask.map(|m| m.detach());
    let bias = opt.bias.map(|m| m.detach());
    let o = out.detach();
    let lse = fresh(lse, [b, h, lq]);
    Ok(record(
        "attention",
        &inputs,
        out,
        Box::new(move |g| {
            let mask_s = mask.as_ref().map(|m| m.storage());
            let bias_s = bias.as_ref().map(|m| m.storage());
            let a = AttnArgs::new(mask_s.as_deref(), bias_s.as_deref(), spec);
            let (o, lse, g) = (o.storage(), lse.storage(), g.storage());
            let fwd = AttnSaved::new(&*o, &*lse, &*g);
            let (grads, db) = if packed {
                let (dqkv, db) = saved[0].storage().attention_qkv_backward(fwd, a)?;
                (vec![dqkv], db)
            } else {
                let (k, v) = (saved[1].storage(), saved[2].storage());
                let (dq, dk, dv, db) = saved[0].storage().attention_backward(&k, &v, fwd, a)?;
                (vec![dq, dk, dv], db)
            };
            let mut res: Vec<Option<Tensor>> = grads
                .into_iter()
                .zip(&saved)
                .zip(&tracks)
                .map(|((gs, x), &t)| t.then(|| fresh(gs, x.shape().clone())))
                .collect();
            if bias.is_some() {
                res.push(match (tracks[saved.len()], db) {
                    (true, Some(db)) => Some(fresh(db, [h, lq, lk])),
                    (true, None) => {
                        return Err(Error::msg(
                            "attention backward: the backend returned no bias gradient",
                        ))
                    }
                    (false, _) => None,
                });
            }
            Ok(res)
        }),
    ))
}

impl Tensor {
    /// `self` is q `[B, Lq, H, D]`; k, v `[B, Lk, H, D]`. Returns `[B, Lq, H, D]`.
    pub fn attention(&self, k: &Tensor, v: &Tensor, opt: AttnOptions<'_>) -> Result<Tensor> {
        self.expect_rank("attention (q)", 4)?;
        let [b, lq, h, d] = [
            self.dims()[0],
            self.dims()[1],
            self.dims()[2],
            self.dims()[3],
        ];
        k.expect_rank("attention (k)", 4)?;
        let lk = k.dims()[1];
        k.expect_shape("attention (k)", &[b, lk, h, d])?;
        v.expect_shape("attention (v)", &[b, lk, h, d])?;
        let spec = checked_spec(&opt, [b, h, lq, lk, d])?;
        attention_op(Qkv::Separate(self, k, v), opt, spec)
    }

    /// Self-attention over the output of one fused QKV projection: `self` is
    /// `[B, L, 3, H, D]` (per token q, then k, then v — the columns of `x·[Wq; Wk; Wv]ᵀ`).
    /// Same result as `q.attention(k, v)` on the three slices; the gradient is one
    /// `[B, L, 3, H, D]` tensor, so the projection's backward is one GEMM and nothing is
    /// split or summed. Returns `[B, L, H, D]`.
    pub fn attention_qkv(&self, opt: AttnOptions<'_>) -> Result<Tensor> {
        self.expect_rank("attention_qkv (qkv)", 5)?;
        let dims = self.dims();
        let [b, l, three, h, d] = [dims[0], dims[1], dims[2], dims[3], dims[4]];
        if three != 3 {
            return Err(Error::Shape {
                op: "attention_qkv",
                expected: "[b, l, 3, h, d]".into(),
                got: self.shape().clone(),
            });
        }
        let spec = checked_spec(&opt, [b, h, l, l, d])?;
        attention_op(Qkv::Packed(self), opt, spec)
    }
}
