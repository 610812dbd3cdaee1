//! BART's and Marian's building blocks under their HF names (`modeling_bart.py`,
//! `modeling_marian.py`, which share them): attention (`q_proj`, `k_proj`, `v_proj`,
//! `out_proj`, all with biases, q·kᵀ scaled by head_dim^-0.5), post-LN layers
//! (`self_attn_layer_norm`, `encoder_attn_layer_norm`, `final_layer_norm`, eps 1e-5 as
//! `nn.LayerNorm` has it), the feed-forward `fc1` → activation → `fc2`, and a stack with
//! its position embeddings and (BART) `layernorm_embedding`.
//!
//! Dropout sites are numbered by position, as in the BERT-family encoder (`Mode::seed_for`):
//! 0 and 1 are the encoder's and decoder's embedding dropout; layer `n` of the model
//! (encoder layers first, then decoder layers) uses `(2 + n) * 8 + k`, with `k` 0 / 1 the
//! self-attention's probabilities / output, 2 / 3 the cross-attention's, 4 the activation
//! dropout, 5 the feed-forward output. A checkpointed layer's recompute draws the same
//! masks because they hash the same seeds.

use crate::error::{Error, Result};
use crate::models::encoder::Activation;
use crate::nn::{packed_qkv, separate_qkv, LayerNorm, Linear, Mode, VarBuilder};
use crate::ops::attention::AttnOptions;
use crate::shape::Device;
use crate::tensor::Tensor;

/// `nn.LayerNorm`'s default eps, which every BART / Marian LayerNorm uses.
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// What one layer reads besides its parameters.
#[derive(Clone, Copy, Debug)]
pub struct LayerSpec {
    pub heads: usize,
    pub activation: Activation,
    pub dropout: f32,
    pub attention_dropout: f32,
    pub activation_dropout: f32,
}

/// One attention module (`self_attn` or `encoder_attn`). Cloning shares the parameters.
#[derive(Clone)]
pub struct BartAttention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub out: Linear,
    pub heads: usize,
    pub head_dim: usize,
}

impl BartAttention {
    pub fn new(vb: &VarBuilder, d: usize, heads: usize, std: f64) -> Result<BartAttention> {
        Ok(BartAttention {
            q: Linear::new(&vb.pp("q_proj"), d, d, true, std)?,
            k: Linear::new(&vb.pp("k_proj"), d, d, true, std)?,
            v: Linear::new(&vb.pp("v_proj"), d, d, true, std)?,
            out: Linear::new(&vb.pp("out_proj"), d, d, true, std)?,
            heads,
            head_dim: d / heads,
        })
    }

    /// HF's `self.scaling = head_dim**-0.5` on q·kᵀ, as the attention op's scale.
    pub fn opts<'a>(
        &self,
        causal: bool,
        key_mask: Option<&'a Tensor>,
        dropout: f32,
        seed: u64,
    ) -> AttnOptions<'a> {
        AttnOptions {
            scale: (self.head_dim as f32).powf(-0.5),
            causal,
            key_mask,
            bias: None,
            dropout,
            seed,
        }
    }

    /// `x [B, L, d]` through `lin` → `[B, L, H, D]`.
    pub fn project(&self, x: &Tensor, lin: &Linear) -> Result<Tensor> {
        let shape = [x.dims()[0], x.dims()[1], self.heads, self.head_dim];
        lin.forward(x)?.reshape(shape)
    }

    /// `ctx [B, L, H, D]` → `out_proj` `[B, L, d]`.
    fn output(&self, ctx: &Tensor) -> Result<Tensor> {
        let (b, l) = (ctx.dims()[0], ctx.dims()[1]);
        self.out
            .forward(&ctx.reshape([b, l, self.heads * self.head_dim])?)
    }

    /// Self-attention of `x`: one GEMM over `[Wq; Wk; Wv]` (and the biases) and the packed
    /// attention op, unless FUSEBOX_SEPARATE_QKV=1.
    pub fn self_attention(&self, x: &Tensor, opt: AttnOptions<'_>) -> Result<Tensor> {
        if separate_qkv() {
            let (k, v) = (self.project(x, &self.k)?, self.project(x, &self.v)?);
            return self.attend(x, &k, &v, opt);
        }
        let w = [&self.q.weight, &self.k.weight, &self.v.weight];
        let biases = match (&self.q.bias, &self.k.bias, &self.v.bias) {
            (Some(bq), Some(bk), Some(bv)) => Some([bq, bk, bv]),
            _ => {
                return Err(Error::msg(
                    "BART attention: q/k/v projections without biases",
                ))
            }
        };
        let qkv = packed_qkv(x, w, biases, self.heads, self.head_dim)?;
        self.output(&qkv.attention_qkv(opt)?)
    }

    /// Attention of `x [B, Lq, d]` over projected `k`, `v [B, Lk, H, D]`, then `out_proj`.
    pub fn attend(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opt: AttnOptions<'_>,
    ) -> Result<Tensor> {
        let q = self.project(x, &self.q)?;
        self.output(&q.attention(k, v, opt)?)
    }

    /// Every parameter (weights and biases).
    pub fn params(&self) -> Vec<Tensor> {
        linear_params(&[&self.q, &self.k, &self.v, &self.out])
    }
}

fn linear_params(ls: &[&Linear]) -> Vec<Tensor> {
    ls.iter()
        .flat_map(|l| std::iter::once(l.weight.clone()).chain(l.bias.clone()))
        .collect()
}

fn norm_params(n: &LayerNorm) -> [Tensor; 2] {
    [n.weight.clone(), n.bias.clone()]
}

/// Encoder states a decoder layer attends to.
#[derive(Clone, Copy)]
pub struct Cross<'a> {
    /// `[B, Ls, d]`.
    pub hidden: &'a Tensor,
    /// I32 `[B, Ls]`, 1 = token.
    pub mask: Option<&'a Tensor>,
}

/// What a layer reads besides its input: the key padding mask of its self-attention
/// (encoder) and the encoder states of its cross-attention (decoder).
#[derive(Clone, Copy, Default)]
pub struct Context<'a> {
    pub self_mask: Option<&'a Tensor>,
    pub cross: Option<Cross<'a>>,
}

/// `BartEncoderLayer` / `BartDecoderLayer` (and Marian's, identical): post-LN residual
/// blocks. Cloning shares the parameters (a checkpointed layer's recompute owns a clone).
#[derive(Clone)]
pub struct BartLayer {
    pub self_attn: BartAttention,
    pub self_norm: LayerNorm,
    /// Decoder only: `encoder_attn` and `encoder_attn_layer_norm`.
    pub cross: Option<(BartAttention, LayerNorm)>,
    pub fc1: Linear,
    pub fc2: Linear,
    pub final_norm: LayerNorm,
    pub spec: LayerSpec,
    /// This layer's dropout sites start at `site * 8`.
    pub site: u64,
}

impl BartLayer {
    pub fn new(
        vb: &VarBuilder,
        d: usize,
        ffn: usize,
        decoder: bool,
        spec: LayerSpec,
        site: u64,
        std: f64,
    ) -> Result<BartLayer> {
        let norm = |name: &str| LayerNorm::new(&vb.pp(name), d, LAYER_NORM_EPS);
        let self_attn = BartAttention::new(&vb.pp("self_attn"), d, spec.heads, std)?;
        let self_norm = norm("self_attn_layer_norm")?;
        let cross = if decoder {
            let a = BartAttention::new(&vb.pp("encoder_attn"), d, spec.heads, std)?;
            Some((a, norm("encoder_attn_layer_norm")?))
        } else {
            None
        };
        Ok(BartLayer {
            self_attn,
            self_norm,
            cross,
            fc1: Linear::new(&vb.pp("fc1"), d, ffn, true, std)?,
            fc2: Linear::new(&vb.pp("fc2"), ffn, d, true, std)?,
            final_norm: norm("final_layer_norm")?,
            spec,
            site,
        })
    }

    /// The seed of dropout site `k` of this layer.
    pub fn seed(&self, mode: Mode, k: u64) -> u64 {
        mode.seed_for(self.site * 8 + k)
    }

    /// `LN(h + dropout(a))` with the layer's residual dropout at site `k`.
    fn residual(
        &self,
        norm: &LayerNorm,
        a: &Tensor,
        h: &Tensor,
        mode: Mode,
        k: u64,
    ) -> Result<Tensor> {
        norm.forward_residual(a, h, mode.p(self.spec.dropout), self.seed(mode, k))
    }

    /// `fc2(dropout(act(fc1(h))))`; without activation dropout the activation is
    /// recomputed in backward instead of kept (`Tensor::act_linear`).
    pub fn feed_forward(&self, h: &Tensor, mode: Mode) -> Result<Tensor> {
        let act = self.spec.activation.op();
        let x = self.fc1.forward(h)?;
        let p = mode.p(self.spec.activation_dropout);
        if p > 0.0 {
            let x = x.unary(act)?.dropout(p, self.seed(mode, 4))?;
            return self.fc2.forward(&x);
        }
        x.act_linear(act, &self.fc2.weight, self.fc2.bias.as_ref())
    }

    /// The feed-forward block: `LN(h + dropout(FF(h)))`.
    pub fn ff_residual(&self, h: &Tensor, mode: Mode) -> Result<Tensor> {
        let f = self.feed_forward(h, mode)?;
        self.residual(&self.final_norm, &f, h, mode, 5)
    }

    /// The layer on `h [B, L, d]`: self-attention (causal in the decoder, `self_mask`
    /// over keys in the encoder), cross-attention over `cross` (decoder), feed-forward.
    pub fn forward(&self, h: &Tensor, ctx: Context<'_>, mode: Mode) -> Result<Tensor> {
        let p_attn = mode.p(self.spec.attention_dropout);
        let causal = self.cross.is_some();
        let opt = self
            .self_attn
            .opts(causal, ctx.self_mask, p_attn, self.seed(mode, 0));
        let a = self.self_attn.self_attention(h, opt)?;
        let mut h = self.residual(&self.self_norm, &a, h, mode, 1)?;
        if let Some((attn, norm)) = &self.cross {
            let c = ctx
                .cross
                .ok_or_else(|| Error::msg("BART decoder layer: no encoder states to attend to"))?;
            let (k, v) = (
                attn.project(c.hidden, &attn.k)?,
                attn.project(c.hidden, &attn.v)?,
            );
            let opt = attn.opts(false, c.mask, p_attn, self.seed(mode, 2));
            let a = attn.attend(&h, &k, &v, opt)?;
            h = self.residual(norm, &a, &h, mode, 3)?;
        }
        self.ff_residual(&h, mode)
    }

    /// [`BartLayer::forward`] under activation checkpointing: the layer's inputs are kept
    /// for backward, its activations are recomputed there.
    pub fn forward_checkpointed<'a>(
        &self,
        h: &'a Tensor,
        ctx: Context<'a>,
        mode: Mode,
    ) -> Result<Tensor> {
        let mut inputs: Vec<&Tensor> = vec![h];
        let mut push = |t: &'a Tensor| {
            inputs.push(t);
            inputs.len() - 1
        };
        let self_mask_at = ctx.self_mask.map(&mut push);
        let hidden_at = ctx.cross.map(|c| push(c.hidden));
        let cross_mask_at = ctx.cross.and_then(|c| c.mask).map(&mut push);
        let layer = self.clone();
        let params = layer.params();
        crate::autograd::checkpoint("bart_layer", &inputs, &params, move |t| {
            let ctx = Context {
                self_mask: self_mask_at.map(|i| &t[i]),
                cross: hidden_at.map(|i| Cross {
                    hidden: &t[i],
                    mask: cross_mask_at.map(|j| &t[j]),
                }),
            };
            layer.forward(&t[0], ctx, mode)
        })
    }

    /// Every parameter of the layer (what a checkpointed recompute differentiates).
    pub fn params(&self) -> Vec<Tensor> {
        let mut v = self.self_attn.params();
        v.extend(norm_params(&self.self_norm));
        if let Some((a, n)) = &self.cross {
            v.extend(a.params());
            v.extend(norm_params(n));
        }
        v.extend(linear_params(&[&self.fc1, &self.fc2]));
        v.extend(norm_params(&self.final_norm));
        v
    }
}

/// A stack's position embeddings.
#[derive(Clone)]
pub enum Positions {
    /// BART's learned table `[max_positions + 2, d]`, read at position + 2
    /// (`BartLearnedPositionalEmbedding`'s offset).
    Learned(Tensor),
    /// Marian's fixed sinusoidal table `[max_positions, d]`, read at the position itself.
    Fixed(Tensor),
}

impl Positions {
    /// Offset added to a position to find its row.
    fn offset(&self) -> usize {
        match self {
            Positions::Learned(_) => 2,
            Positions::Fixed(_) => 0,
        }
    }
    fn table(&self) -> &Tensor {
        match self {
            Positions::Learned(t) | Positions::Fixed(t) => t,
        }
    }
    /// The positions `start .. start + len` of `rows` rows, `[rows, len, d]`.
    pub fn embed(&self, rows: usize, start: usize, len: usize) -> Result<Tensor> {
        let table = self.table();
        let (off, n) = (self.offset(), table.dims()[0]);
        if start + len + off > n {
            return Err(Error::msg(format!(
                "sequence position {} exceeds max_position_embeddings {} of this model",
                start + len,
                n - off
            )));
        }
        let ids: Vec<i32> = (0..rows)
            .flat_map(|_| (start + off..start + off + len).map(|p| p as i32))
            .collect();
        let ids = Tensor::from_i32(ids, [rows, len], table.device())?;
        table.embedding(&ids)
    }
}

/// The encoder or the decoder: positions, the embedding LayerNorm (BART), the layers.
pub struct BartStack {
    pub layers: Vec<BartLayer>,
    pub positions: Positions,
    /// `layernorm_embedding` (BART; Marian has none).
    pub emb_norm: Option<LayerNorm>,
    /// Dropout site of the embeddings.
    pub emb_site: u64,
    /// Recompute each layer in backward instead of keeping its activations.
    pub checkpointing: bool,
    /// `encoder` or `decoder` (its layers' NVTX ranges are `encoder.3`).
    pub name: &'static str,
}

impl BartStack {
    /// Token embeddings `x [B, L, d]` (already scaled) at positions from `start`: plus the
    /// positions, through `layernorm_embedding` (BART), dropped out.
    pub fn embed(&self, x: &Tensor, start: usize, mode: Mode, p: f32) -> Result<Tensor> {
        let (b, l) = (x.dims()[0], x.dims()[1]);
        let pos = self.positions.embed(b, start, l)?;
        let pos = if pos.dtype() == x.dtype() {
            pos
        } else {
            pos.to_dtype(x.dtype())?
        };
        let mut h = x.add(&pos)?;
        if let Some(n) = &self.emb_norm {
            h = n.forward(&h)?;
        }
        h.dropout(mode.p(p), mode.seed_for(self.emb_site))
    }

    /// The layers over embedded `h` (each checkpointed in training when asked).
    pub fn forward(&self, h: &Tensor, ctx: Context<'_>, mode: Mode) -> Result<Tensor> {
        let ckpt = self.checkpointing && mode.is_train();
        self.layers
            .iter()
            .enumerate()
            .try_fold(h.clone(), |h, (i, layer)| {
                let _range = crate::profile::nvtx::layer(self.name, i);
                match ckpt {
                    true => layer.forward_checkpointed(&h, ctx, mode),
                    false => layer.forward(&h, ctx, mode),
                }
            })
    }
}

/// Marian's `MarianSinusoidalPositionalEmbedding.create_weight`: angle
/// pos / 10000^(2·(j/2)/dim), sin of the even-j angles in the first ⌈dim/2⌉ columns and
/// cos of the odd-j ones in the rest (not interleaved), computed in f64 as numpy does
/// and rounded to f32 as `torch.FloatTensor` does.
pub fn sinusoidal_table(n: usize, dim: usize) -> Vec<f32> {
    let sentinel = dim.div_ceil(2);
    let mut out = Vec::with_capacity(n * dim);
    for pos in 0..n {
        for c in 0..dim {
            let (j, sin) = if c < sentinel {
                (2 * c, true)
            } else {
                (2 * (c - sentinel) + 1, false)
            };
            let angle = pos as f64 / 10000f64.powf((2 * (j / 2)) as f64 / dim as f64);
            out.push(if sin { angle.sin() } else { angle.cos() } as f32);
        }
    }
    out
}

/// The sinusoidal table on `device` in the weights' dtype (zeros on the meta device,
/// which allocates the same bytes and computes nothing).
pub fn sinusoidal_positions(
    n: usize,
    dim: usize,
    device: Device,
    dtype: crate::shape::DType,
) -> Result<Tensor> {
    if let Device::Meta(_) = device {
        return Tensor::zeros([n, dim], dtype, device);
    }
    Tensor::from_f32(sinusoidal_table(n, dim), [n, dim], device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::sinusoidal_table;

    /// Values printed by transformers 5.25
    /// `MarianSinusoidalPositionalEmbedding(32, 16).create_weight()` (rows 1 and 31) and
    /// `(2, 5)` (an odd width: 3 sin columns, 2 cos columns).
    #[test]
    fn sinusoidal_layout_matches_transformers() {
        let t = sinusoidal_table(32, 16);
        let want = [
            (16, 0.841_470_956_802_368_2f64),
            (17, 0.310_983_598_232_269_3),
            (18, 0.099_833_413_958_549_5),
            (19, 0.031_617_507_338_523_865),
            (24, 0.540_302_276_611_328_1),
            (25, 0.950_415_253_639_221_2),
            (26, 0.995_004_177_093_505_9),
            (27, 0.999_500_036_239_624),
            (31 * 16 + 3, 0.830_667_793_750_762_9),
            (31 * 16 + 15, 0.999_951_958_656_311),
        ];
        for (i, w) in want {
            assert_eq!(t[i], w as f32, "element {i}");
        }
        let odd = sinusoidal_table(2, 5);
        let want_odd: [f64; 10] = [
            0.0,
            0.0,
            0.0,
            1.0,
            1.0,
            0.841_470_956_802_368_2,
            0.025_116_221_979_260_445,
            0.000_630_957_307_294_011_1,
            0.540_302_276_611_328_1,
            0.999_684_512_615_203_9,
        ];
        assert_eq!(odd, want_odd.map(|w| w as f32));
    }
}
