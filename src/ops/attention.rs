//! Scaled dot-product attention as one op: softmax(scale·q·kᵀ + bias + masks)·v with
//! q, k, v in `[B, L, H, D]` (the linear layers' own layout). On CUDA this is the fused
//! kernel; on the CPU the reference. Backward returns dq, dk, dv and the gradient of
//! the additive bias (T5's relative positions) summed over the batch.

use crate::autograd::{needs_grad, record};
use crate::backend::{AttnSpec, Storage};
use crate::error::{Error, Result};
use crate::ops::fresh;
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

impl Tensor {
    /// `self` is q `[B, Lq, H, D]`; k, v `[B, Lk, H, D]`. Returns `[B, Lq, H, D]`.
    pub fn attention(&self, k: &Tensor, v: &Tensor, opt: AttnOptions<'_>) -> Result<Tensor> {
        let _span = crate::profile::Span::new("attention", self.device());
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
        let mask_s = opt.key_mask.map(|m| m.storage());
        let bias_s = opt.bias.map(|t| t.storage());
        let (o, lse) = self.storage().attention(
            &k.storage(),
            &v.storage(),
            mask_s.as_deref(),
            bias_s.as_deref(),
            &spec,
        )?;
        drop((mask_s, bias_s));
        let out = fresh(o, self.shape().clone());
        let mut inputs = vec![self, k, v];
        if let Some(bias) = opt.bias {
            inputs.push(bias);
        }
        if !needs_grad(&inputs) {
            return Ok(out);
        }
        let t = [
            self.tracks(),
            k.tracks(),
            v.tracks(),
            opt.bias.map(|x| x.tracks()).unwrap_or(false),
        ];
        let has_bias = opt.bias.is_some();
        let (q, k, v) = (self.detach(), k.detach(), v.detach());
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
                let (dq, dk, dv, db) = q.storage().attention_backward(
                    &k.storage(),
                    &v.storage(),
                    &o.storage(),
                    &lse.storage(),
                    &g.storage(),
                    mask_s.as_deref(),
                    bias_s.as_deref(),
                    &spec,
                )?;
                let mut res = vec![
                    t[0].then(|| fresh(dq, q.shape().clone())),
                    t[1].then(|| fresh(dk, k.shape().clone())),
                    t[2].then(|| fresh(dv, v.shape().clone())),
                ];
                if has_bias {
                    res.push(bias_grad(t[3], db, [h, lq, lk])?);
                }
                Ok(res)
            }),
        ))
    }

    /// Self-attention over the output of one fused QKV projection: `self` is
    /// `[B, L, 3, H, D]` (per token q, then k, then v — the columns of `x·[Wq; Wk; Wv]ᵀ`).
    /// Same result as `q.attention(k, v)` on the three slices; the gradient is one
    /// `[B, L, 3, H, D]` tensor, so the projection's backward is one GEMM and nothing is
    /// split or summed. Returns `[B, L, H, D]`.
    pub fn attention_qkv(&self, opt: AttnOptions<'_>) -> Result<Tensor> {
        let _span = crate::profile::Span::new("attention", self.device());
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
        let mask_s = opt.key_mask.map(|m| m.storage());
        let bias_s = opt.bias.map(|t| t.storage());
        let (o, lse) = self
            .storage()
            .attention_qkv(mask_s.as_deref(), bias_s.as_deref(), &spec)?;
        drop((mask_s, bias_s));
        let out = fresh(o, [b, l, h, d]);
        let mut inputs = vec![self];
        if let Some(bias) = opt.bias {
            inputs.push(bias);
        }
        if !needs_grad(&inputs) {
            return Ok(out);
        }
        let t = [self.tracks(), opt.bias.map(|x| x.tracks()).unwrap_or(false)];
        let has_bias = opt.bias.is_some();
        let qkv = self.detach();
        let mask = opt.key_mask.map(|m| m.detach());
        let bias = opt.bias.map(|m| m.detach());
        let o = out.detach();
        let lse = fresh(lse, [b, h, l]);
        Ok(record(
            "attention",
            &inputs,
            out,
            Box::new(move |g| {
                let mask_s = mask.as_ref().map(|m| m.storage());
                let bias_s = bias.as_ref().map(|m| m.storage());
                let (dqkv, db) = qkv.storage().attention_qkv_backward(
                    &o.storage(),
                    &lse.storage(),
                    &g.storage(),
                    mask_s.as_deref(),
                    bias_s.as_deref(),
                    &spec,
                )?;
                let mut res = vec![t[0].then(|| fresh(dqkv, qkv.shape().clone()))];
                if has_bias {
                    res.push(bias_grad(t[1], db, [h, l, l])?);
                }
                Ok(res)
            }),
        ))
    }
}

/// The bias gradient of a backward call: required when the bias tracks.
fn bias_grad(tracks: bool, db: Option<Storage>, shape: [usize; 3]) -> Result<Option<Tensor>> {
    match (tracks, db) {
        (true, Some(db)) => Ok(Some(fresh(db, shape))),
        (true, None) => Err(Error::msg(
            "attention backward: the backend returned no bias gradient",
        )),
        (false, _) => Ok(None),
    }
}
