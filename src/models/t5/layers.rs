//! T5's building blocks under their HF names: attention (`SelfAttention`/`EncDecAttention`
//! with `q`,`k`,`v`,`o`, no biases, no 1/√d), the feed-forward (`DenseReluDense`),
//! pre-norm residual blocks, and the relative position bias.
//!
//! The relative bias embedding lives only in block 0 of each stack and HF shares it with
//! every layer of that stack; here the stack computes `position_bias [H, Lq, Lk]` once per
//! forward (embedding lookup + permute, both on the tape) and hands it to every layer's
//! attention, so its gradient reaches the block-0 weight summed over all layers.
//!
//! The residual stream `h` may be wider than the weights (f32 with f16 weights: the fp16
//! overflow guard in `fp16.rs`): each sublayer reads it through `pre_norm` and writes its
//! last projection in `h`'s dtype. With equal dtypes both are the plain ops.

use crate::error::Result;
use crate::nn::{Init, RmsNorm, VarBuilder};
use crate::ops::UnaryOp;
use crate::shape::{DType, Device};
use crate::tensor::Tensor;

use super::attention::{t5_opts, weight, T5Attention};
use super::config::{FeedForward, T5Config};
use super::dropout::Dropout;
use super::fp16::pre_norm;

/// HF `T5Attention._relative_position_bucket`, bit for bit: the log-spaced part is
/// computed in f32 as torch does it (`log(rp.float() / max_exact) / math.log(..)`), which
/// matters at exact powers of two (e.g. |rp| = 16, 32, 64 with 32 buckets).
pub fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> i32 {
    let mut nb = num_buckets as i64;
    let mut ret = 0i64;
    let n = if bidirectional {
        nb /= 2;
        if relative_position > 0 {
            ret += nb;
        }
        relative_position.abs()
    } else {
        -relative_position.min(0)
    };
    let max_exact = nb / 2;
    if n < max_exact {
        return (ret + n) as i32;
    }
    let denom = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
    let large = ((n as f32 / max_exact as f32).ln() / denom * (nb - max_exact) as f32) as i64;
    (ret + (max_exact + large).min(nb - 1)) as i32
}

/// Bucket ids `[lq, lk]` for queries at absolute positions `q_offset..q_offset+lq`.
pub fn bucket_ids(
    lq: usize,
    lk: usize,
    q_offset: usize,
    bidirectional: bool,
    cfg: &T5Config,
) -> Vec<i32> {
    let mut ids = Vec::with_capacity(lq * lk);
    for i in 0..lq {
        let ctx = (i + q_offset) as i64;
        for j in 0..lk {
            ids.push(relative_position_bucket(
                j as i64 - ctx,
                bidirectional,
                cfg.relative_attention_num_buckets,
                cfg.relative_attention_max_distance,
            ));
        }
    }
    ids
}

/// A `T5LayerNorm` (`{name}.weight`, ones when absent).
pub fn rms(vb: &VarBuilder, name: &str, cfg: &T5Config) -> Result<RmsNorm> {
    Ok(RmsNorm {
        weight: vb
            .pp(name)
            .get_or_init("weight", &[cfg.d_model], Init::Ones)?,
        eps: cfg.layer_norm_epsilon,
    })
}

/// `DenseReluDense` in either variant.
#[derive(Clone)]
pub enum T5FeedForward {
    Relu {
        wi: Tensor,
        wo: Tensor,
    },
    GatedGelu {
        wi_0: Tensor,
        wi_1: Tensor,
        wo: Tensor,
    },
}

impl T5FeedForward {
    pub fn new(vb: &VarBuilder, cfg: &T5Config, kind: FeedForward) -> Result<T5FeedForward> {
        let (dm, ff) = (cfg.d_model, cfg.d_ff);
        let (si, so) = ((dm as f64).powf(-0.5), (ff as f64).powf(-0.5));
        Ok(match kind {
            FeedForward::Relu => T5FeedForward::Relu {
                wi: weight(vb, "wi", &[ff, dm], si)?,
                wo: weight(vb, "wo", &[dm, ff], so)?,
            },
            FeedForward::GatedGelu => T5FeedForward::GatedGelu {
                wi_0: weight(vb, "wi_0", &[ff, dm], si)?,
                wi_1: weight(vb, "wi_1", &[ff, dm], si)?,
                wo: weight(vb, "wo", &[dm, ff], so)?,
            },
        })
    }

    /// The feed-forward of the normed `x`, its `wo` product stored in `out` (the
    /// residual's dtype: f32 keeps T5's large `wo` outputs out of f16).
    pub fn forward(&self, x: &Tensor, drop: &Dropout, out: DType) -> Result<Tensor> {
        let (h, wo) = match self {
            T5FeedForward::Relu { wi, wo } => (x.linear(wi, None)?.relu()?, wo),
            T5FeedForward::GatedGelu { wi_0, wi_1, wo } => {
                let gate = x.linear(wi_0, None)?;
                (gate.gated(&x.linear(wi_1, None)?, UnaryOp::GeluNew)?, wo)
            }
        };
        drop.apply(&h)?.linear_into(wo, out)
    }
}

/// One `T5Block`: self-attention, (decoder) cross-attention, feed-forward; each
/// pre-normed (`layer_norm`) with a dropped-out residual. Cloning shares the parameters
/// (a checkpointed block's recompute owns a clone).
#[derive(Clone)]
pub struct T5Block {
    pub self_attn: T5Attention,
    pub self_norm: RmsNorm,
    pub cross: Option<(T5Attention, RmsNorm)>,
    pub ff: T5FeedForward,
    pub ff_norm: RmsNorm,
}

impl T5Block {
    pub fn new(vb: &VarBuilder, cfg: &T5Config, decoder: bool) -> Result<T5Block> {
        let kind = cfg.feed_forward("config.json")?;
        let norm = |l: &VarBuilder| rms(l, "layer_norm", cfg);
        let l0 = vb.pp("layer.0");
        let self_attn = T5Attention::new(&l0.pp("SelfAttention"), cfg)?;
        let self_norm = norm(&l0)?;
        let (cross, ff_layer) = if decoder {
            let l1 = vb.pp("layer.1");
            let c = T5Attention::new(&l1.pp("EncDecAttention"), cfg)?;
            (Some((c, norm(&l1)?)), vb.pp("layer.2"))
        } else {
            (None, vb.pp("layer.1"))
        };
        Ok(T5Block {
            self_attn,
            self_norm,
            cross,
            ff: T5FeedForward::new(&ff_layer.pp("DenseReluDense"), cfg, kind)?,
            ff_norm: norm(&ff_layer)?,
        })
    }

    /// The block's full-sequence forward (self-attention, cross-attention in the
    /// decoder, feed-forward), each residual added to `h` in `h`'s dtype.
    pub fn forward(&self, h: &Tensor, ctx: &BlockInputs<'_>, drop: &Dropout) -> Result<Tensor> {
        let n = pre_norm(&self.self_norm, h)?;
        let a = self.self_attn.self_attention(
            &n,
            t5_opts(ctx.is_decoder, ctx.self_mask, Some(ctx.bias)),
            drop,
            h.dtype(),
        )?;
        let mut h = h.add(&drop.apply(&a)?)?;
        if let (Some((attn, norm)), Some(c)) = (&self.cross, ctx.cross) {
            let n = pre_norm(norm, &h)?;
            let opt = t5_opts(false, c.mask, None);
            let a = attn.forward(&n, c.hidden, opt, drop, h.dtype())?;
            h = h.add(&drop.apply(&a)?)?;
        }
        self.ff_residual(&h, drop)
    }

    /// [`T5Block::forward`] under activation checkpointing: the block's inputs (hidden
    /// states, position bias, masks, encoder states) are kept, its activations are not.
    /// The forward and the recompute in backward each run on a fork of `drop` taken at
    /// the block's start, so both draw the same dropout masks; `drop` then continues
    /// after the block's sites.
    pub fn forward_checkpointed(
        &self,
        h: &Tensor,
        ctx: &BlockInputs<'_>,
        drop: &Dropout,
    ) -> Result<Tensor> {
        let mut inputs: Vec<&Tensor> = vec![h, ctx.bias];
        let self_mask = ctx.self_mask.map(|m| {
            inputs.push(m);
            inputs.len() - 1
        });
        let cross_hidden = ctx.cross.map(|c| {
            inputs.push(c.hidden);
            inputs.len() - 1
        });
        let cross_mask = ctx.cross.and_then(|c| c.mask).map(|m| {
            inputs.push(m);
            inputs.len() - 1
        });
        let is_decoder = ctx.is_decoder;
        let blk = self.clone();
        let params = blk.params();
        let start = drop.fork();
        let drawn = std::rc::Rc::new(std::cell::Cell::new(start.sites_drawn()));
        let drawn_in = drawn.clone();
        let out = crate::autograd::checkpoint("t5_block", &inputs, &params, move |t| {
            let d = start.fork();
            let cross = cross_hidden.map(|i| CrossInput {
                hidden: &t[i],
                mask: cross_mask.map(|j| &t[j]),
            });
            let ctx = BlockInputs {
                is_decoder,
                self_mask: self_mask.map(|i| &t[i]),
                bias: &t[1],
                cross: cross.as_ref(),
            };
            let y = blk.forward(&t[0], &ctx, &d)?;
            drawn_in.set(d.sites_drawn());
            Ok(y)
        })?;
        drop.resume_at(drawn.get());
        Ok(out)
    }

    /// Every parameter of the block (what its checkpointed recompute differentiates).
    pub fn params(&self) -> Vec<Tensor> {
        let mut v = Vec::with_capacity(16);
        let attn = |a: &T5Attention, v: &mut Vec<Tensor>| {
            v.extend([a.q.clone(), a.k.clone(), a.v.clone(), a.o.clone()]);
        };
        attn(&self.self_attn, &mut v);
        v.push(self.self_norm.weight.clone());
        if let Some((a, n)) = &self.cross {
            attn(a, &mut v);
            v.push(n.weight.clone());
        }
        match &self.ff {
            T5FeedForward::Relu { wi, wo } => v.extend([wi.clone(), wo.clone()]),
            T5FeedForward::GatedGelu { wi_0, wi_1, wo } => {
                v.extend([wi_0.clone(), wi_1.clone(), wo.clone()])
            }
        }
        v.push(self.ff_norm.weight.clone());
        v
    }

    /// `h + dropout(FF(norm(h)))`, in `h`'s dtype.
    pub fn ff_residual(&self, h: &Tensor, drop: &Dropout) -> Result<Tensor> {
        let y = self
            .ff
            .forward(&pre_norm(&self.ff_norm, h)?, drop, h.dtype())?;
        h.add(&drop.apply(&y)?)
    }
}

/// Encoder or decoder stack (`encoder.*` / `decoder.*`).
pub struct T5Stack {
    pub blocks: Vec<T5Block>,
    /// `block.0.layer.0.SelfAttention.relative_attention_bias.weight` `[buckets, H]`.
    pub rel_bias: Tensor,
    pub final_norm: RmsNorm,
    pub is_decoder: bool,
    /// Recompute each block in backward instead of keeping its activations.
    pub checkpointing: bool,
}

/// Inputs a decoder stack attends to.
pub struct CrossInput<'a> {
    pub hidden: &'a Tensor,
    pub mask: Option<&'a Tensor>,
}

/// What every block of a stack reads besides the hidden states.
pub struct BlockInputs<'a> {
    pub is_decoder: bool,
    pub self_mask: Option<&'a Tensor>,
    /// `position_bias [H, L, L]`, shared by every block.
    pub bias: &'a Tensor,
    pub cross: Option<&'a CrossInput<'a>>,
}

impl T5Stack {
    pub fn new(vb: &VarBuilder, cfg: &T5Config, is_decoder: bool) -> Result<T5Stack> {
        let n = if is_decoder {
            cfg.decoder_layers()
        } else {
            cfg.num_layers
        };
        let blocks = (0..n)
            .map(|i| T5Block::new(&vb.pp(format!("block.{i}")), cfg, is_decoder))
            .collect::<Result<Vec<_>>>()?;
        let rel_bias = weight(
            vb,
            "block.0.layer.0.SelfAttention.relative_attention_bias",
            &[cfg.relative_attention_num_buckets, cfg.num_heads],
            (cfg.d_model as f64).powf(-0.5),
        )?;
        Ok(T5Stack {
            blocks,
            rel_bias,
            final_norm: rms(vb, "final_layer_norm", cfg)?,
            is_decoder,
            checkpointing: false,
        })
    }

    /// `position_bias [H, lq, lk]` for queries at absolute positions from `q_offset`
    /// (HF `compute_bias`; bidirectional in the encoder, causal in the decoder).
    pub fn position_bias(
        &self,
        cfg: &T5Config,
        lq: usize,
        lk: usize,
        q_offset: usize,
    ) -> Result<Tensor> {
        let device = self.rel_bias.device();
        let ids = if let Device::Meta(_) = device {
            // Planning: the ids' length is what counts, and an [lq, lk] host table for a
            // long plan (1e6 tokens: 4 TB) would abort before the plan could refuse it.
            Tensor::zeros([lq, lk], DType::I32, device)?
        } else {
            let ids = bucket_ids(lq, lk, q_offset, !self.is_decoder, cfg);
            Tensor::from_i32(ids, [lq, lk], device)?
        };
        self.rel_bias.embedding(&ids)?.permute(&[2, 0, 1])
    }

    /// Full-sequence forward of embedded inputs `x [B, L, d_model]`; `x`'s dtype is the
    /// residual stream's. The output is in the weights' dtype.
    pub fn forward(
        &self,
        cfg: &T5Config,
        x: &Tensor,
        self_mask: Option<&Tensor>,
        cross: Option<&CrossInput<'_>>,
        drop: &Dropout,
    ) -> Result<Tensor> {
        let l = x.dims()[1];
        let bias = self.position_bias(cfg, l, l, 0)?;
        let mut h = drop.apply(x)?;
        let stack = if self.is_decoder {
            "decoder"
        } else {
            "encoder"
        };
        for (i, blk) in self.blocks.iter().enumerate() {
            let _range = crate::profile::nvtx::layer(stack, i);
            let ctx = BlockInputs {
                is_decoder: self.is_decoder,
                self_mask,
                bias: &bias,
                cross,
            };
            h = if self.checkpointing {
                blk.forward_checkpointed(&h, &ctx, drop)?
            } else {
                blk.forward(&h, &ctx, drop)?
            };
        }
        drop.apply(&pre_norm(&self.final_norm, &h)?)
    }
}

#[cfg(test)]
mod tests {
    use super::relative_position_bucket as bucket;

    /// Reference values printed by transformers 5.24
    /// `T5Attention._relative_position_bucket(torch.arange(-300, 301), ...)`.
    #[test]
    fn buckets_match_transformers() {
        let rel = [
            -300, -129, -128, -127, -100, -64, -63, -33, -32, -31, -17, -16, -15, -9, -8, -7, -1,
            0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 100, 127, 128, 300,
        ];
        let cases: [(bool, usize, usize, [i32; 34]); 6] = [
            (
                true,
                32,
                128,
                [
                    15, 15, 15, 15, 15, 14, 13, 12, 12, 11, 10, 10, 9, 8, 8, 7, 1, 0, 17, 23, 24,
                    24, 25, 26, 26, 27, 28, 28, 29, 30, 31, 31, 31, 31,
                ],
            ),
            (
                false,
                32,
                128,
                [
                    31, 31, 31, 31, 30, 26, 26, 21, 21, 21, 16, 16, 15, 9, 8, 7, 1, 0, 0, 0, 0, 0,
                    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
            (
                true,
                8,
                20,
                [
                    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 1, 0, 5, 7, 7, 7, 7, 7, 7, 7,
                    7, 7, 7, 7, 7, 7, 7, 7,
                ],
            ),
            (
                false,
                8,
                20,
                [
                    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 5, 5, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    0, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
            (
                true,
                16,
                32,
                [
                    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 5, 5, 5, 1, 0, 9, 13, 13, 13, 14, 14,
                    14, 15, 15, 15, 15, 15, 15, 15, 15, 15,
                ],
            ),
            (
                false,
                16,
                32,
                [
                    15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 12, 12, 11, 8, 8, 7, 1, 0, 0, 0, 0, 0,
                    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
        ];
        for (bidir, nb, md, want) in cases {
            let got: Vec<i32> = rel.iter().map(|&r| bucket(r, bidir, nb, md)).collect();
            assert_eq!(
                got,
                want.to_vec(),
                "bidirectional {bidir}, {nb} buckets, max {md}"
            );
        }
    }
}
