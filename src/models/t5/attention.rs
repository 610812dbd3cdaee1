//! T5's attention (`SelfAttention` / `EncDecAttention` with `q`,`k`,`v`,`o`, no biases,
//! no 1/√d): the fused attention op, or HF's eager attention op by op (for tests of the
//! fused op with dropout on the probabilities).

use crate::error::Result;
use crate::nn::{packed_qkv, separate_qkv, Init, VarBuilder};
use crate::ops::attention::AttnOptions;
use crate::shape::{DType, Device};
use crate::tensor::Tensor;

use super::config::T5Config;
use super::dropout::Dropout;

/// `vb.name.weight`, created with HF's `_init_weights` normal(0, std) when absent (a
/// fresh model); a loaded checkpoint must have it (checked by the caller). Every T5
/// projection is bias-free and made this way.
pub fn weight(vb: &VarBuilder, name: &str, shape: &[usize], std: f64) -> Result<Tensor> {
    vb.pp(name).get_or_init("weight", shape, Init::Normal(std))
}

/// One attention module (`SelfAttention` or `EncDecAttention`).
#[derive(Clone)]
pub struct T5Attention {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub o: Tensor,
    pub heads: usize,
    pub d_kv: usize,
}

impl T5Attention {
    pub fn new(vb: &VarBuilder, cfg: &T5Config) -> Result<T5Attention> {
        let (inner, dm) = (cfg.num_heads * cfg.d_kv, cfg.d_model);
        let s = |n: usize| (n as f64).powf(-0.5);
        Ok(T5Attention {
            q: weight(vb, "q", &[inner, dm], s(dm * cfg.d_kv))?,
            k: weight(vb, "k", &[inner, dm], s(dm))?,
            v: weight(vb, "v", &[inner, dm], s(dm))?,
            o: weight(vb, "o", &[dm, inner], s(inner))?,
            heads: cfg.num_heads,
            d_kv: cfg.d_kv,
        })
    }

    /// `x [B, L, d_model]` → `[B, L, H, D]` through `w`.
    pub fn project(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let (b, l) = (x.dims()[0], x.dims()[1]);
        x.linear(w, None)?.reshape([b, l, self.heads, self.d_kv])
    }

    /// Attention of `x [B, Lq, d_model]` over precomputed `k`, `v [B, Lk, H, D]`, the
    /// `o` projection stored in `out` (the residual stream's dtype).
    pub fn attend(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opt: AttnOptions<'_>,
        drop: &Dropout,
        out: DType,
    ) -> Result<Tensor> {
        let (b, lq) = (x.dims()[0], x.dims()[1]);
        let q = self.project(x, &self.q)?;
        let ctx = if drop.unfused_attention() {
            attention_unfused(&q, k, v, opt, drop)?
        } else {
            q.attention(k, v, fused_opts(opt, drop))?
        };
        ctx.reshape([b, lq, self.heads * self.d_kv])?
            .linear_into(&self.o, out)
    }

    /// Self-attention of `x` (keys and values from `x` too): one GEMM over `[Wq; Wk; Wv]`
    /// and the packed attention op, whose gradient is one buffer (as in the BERT layers),
    /// unless the attention runs unfused or FUSEBOX_SEPARATE_QKV=1.
    pub fn self_attention(
        &self,
        x: &Tensor,
        opt: AttnOptions<'_>,
        drop: &Dropout,
        out: DType,
    ) -> Result<Tensor> {
        if drop.unfused_attention() || separate_qkv() {
            return self.forward(x, x, opt, drop, out);
        }
        let (b, l) = (x.dims()[0], x.dims()[1]);
        let qkv = packed_qkv(x, [&self.q, &self.k, &self.v], None, self.heads, self.d_kv)?;
        let ctx = qkv.attention_qkv(fused_opts(opt, drop))?;
        ctx.reshape([b, l, self.heads * self.d_kv])?
            .linear_into(&self.o, out)
    }

    /// Full attention of `x` over `kv_src` (itself for self-attention), the output in
    /// `out`.
    pub fn forward(
        &self,
        x: &Tensor,
        kv_src: &Tensor,
        opt: AttnOptions<'_>,
        drop: &Dropout,
        out: DType,
    ) -> Result<Tensor> {
        let k = self.project(kv_src, &self.k)?;
        let v = self.project(kv_src, &self.v)?;
        self.attend(x, &k, &v, opt, drop, out)
    }
}

/// `opt` with the training dropout on the probabilities, for the fused attention ops.
fn fused_opts<'a>(mut opt: AttnOptions<'a>, drop: &Dropout) -> AttnOptions<'a> {
    if let Some((p, seed)) = drop.attention_dropout() {
        opt.dropout = p;
        opt.seed = seed;
    }
    opt
}

/// T5's attention options: no 1/√d (T5 folds it into the initialisation of `q`).
pub fn t5_opts<'a>(
    causal: bool,
    key_mask: Option<&'a Tensor>,
    bias: Option<&'a Tensor>,
) -> AttnOptions<'a> {
    AttnOptions {
        scale: 1.0,
        causal,
        key_mask,
        bias,
        ..Default::default()
    }
}

/// HF's eager attention, op by op, with dropout on the probabilities:
/// softmax(q·kᵀ + bias + mask) → dropout → ·v, with q, k, v `[B, L, H, D]`. Masked
/// scores get `f32::MIN` added (HF adds `finfo.min`); the causal mask is end-aligned
/// like the fused op's. Costs `[B, H, Lq, Lk]` activations, so it runs only in training
/// with dropout.
pub fn attention_unfused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opt: AttnOptions<'_>,
    drop: &Dropout,
) -> Result<Tensor> {
    let (causal, key_mask, bias) = (opt.causal, opt.key_mask, opt.bias);
    let (b, lq, h) = (q.dims()[0], q.dims()[1], q.dims()[2]);
    let lk = k.dims()[1];
    let qh = q.permute(&[0, 2, 1, 3])?; // [B, H, Lq, D]
    let kt = k.permute(&[0, 2, 3, 1])?; // [B, H, D, Lk]
    let mut scores = qh.matmul(&kt)?; // [B, H, Lq, Lk]
    if opt.scale != 1.0 {
        scores = scores.scale(opt.scale as f64)?;
    }
    if bias.is_some() || key_mask.is_some() || causal {
        let key = (
            bias.map(|t| t.id()),
            key_mask.map(|t| t.id()),
            causal,
            [b, h, lq, lk],
        );
        let extra = drop.cached_extra(key, || additive_scores(opt, [b, h, lq, lk], &scores))?;
        scores = scores.add(&extra)?;
    }
    let probs = drop.apply_attention(&scores.softmax()?)?;
    probs
        .matmul(&v.permute(&[0, 2, 1, 3])?)? // [B, H, Lq, D]
        .permute(&[0, 2, 1, 3])
}

/// `[B, H, Lq, Lk]` added to the scores: the bias repeated over the batch, plus
/// `f32::MIN` at masked keys (padding, or future positions when causal). Built once per
/// forward and shared by every layer; the bias keeps its tape link.
fn additive_scores(opt: AttnOptions<'_>, dims: [usize; 4], like: &Tensor) -> Result<Tensor> {
    let [b, h, lq, lk] = dims;
    let (causal, key_mask, bias) = (opt.causal, opt.key_mask, opt.bias);
    let mut out: Option<Tensor> = None;
    if let Some(bias) = bias {
        bias.expect_shape("T5 attention (bias)", &[h, lq, lk])?;
        let one = bias.reshape([1, h * lq * lk])?;
        let rep: Vec<&Tensor> = std::iter::repeat_n(&one, b).collect();
        out = Some(Tensor::cat(&rep, 0)?.reshape([b, h, lq, lk])?);
    }
    if let (true, Device::Meta(_)) = (causal || key_mask.is_some(), like.device()) {
        // Planning: the mask's size is what counts, not its b·h·lq·lk host values.
        let add =
            Tensor::zeros([b, h, lq, lk], DType::F32, like.device())?.to_dtype(like.dtype())?;
        out = Some(match out {
            Some(o) => o.add(&add)?,
            None => add,
        });
    } else if causal || key_mask.is_some() {
        let keep = match key_mask {
            Some(m) => m.to_vec_i32()?,
            None => vec![1; b * lk],
        };
        let mut add = vec![0f32; b * h * lq * lk];
        for bi in 0..b {
            for hi in 0..h {
                for i in 0..lq {
                    let row = ((bi * h + hi) * lq + i) * lk;
                    for j in 0..lk {
                        if keep[bi * lk + j] == 0 || (causal && j + lq > i + lk) {
                            add[row + j] = f32::MIN;
                        }
                    }
                }
            }
        }
        let add = Tensor::from_f32(add, [b, h, lq, lk], like.device())?.to_dtype(like.dtype())?;
        out = Some(match out {
            Some(o) => o.add(&add)?,
            None => add,
        });
    }
    out.ok_or_else(|| crate::error::Error::msg("T5 attention: nothing to add to the scores"))
}
