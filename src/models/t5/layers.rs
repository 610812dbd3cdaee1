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

use std::cell::{Cell, RefCell};

use crate::error::Result;
use crate::nn::{packed_qkv, Init, RmsNorm, VarBuilder};
use crate::ops::attention::AttnOptions;
use crate::ops::UnaryOp;
use crate::shape::DType;
use crate::tensor::{Tensor, TensorId};

use super::config::{FeedForward, T5Config};
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

/// Identifies an additive score tensor (bias + masks) built once per forward.
type ExtraKey = (Option<TensorId>, Option<TensorId>, bool, [usize; 4]);

/// Where dropout is on: HF's `model.train()` with a seed for our hashed masks. Each call
/// site draws the next seed, so no two sites share a mask. One `Dropout` lives for one
/// forward pass, so it also caches what the unfused attention shares across layers.
pub struct Dropout {
    p: f32,
    seed: Option<u64>,
    counter: Cell<u64>,
    force_unfused: bool,
    attention_probs: bool,
    extra: RefCell<Vec<(ExtraKey, Tensor)>>,
}

impl Dropout {
    pub fn new(p: f64, seed: Option<u64>) -> Dropout {
        Dropout {
            p: p as f32,
            seed,
            counter: Cell::new(0),
            force_unfused: false,
            attention_probs: true,
            extra: RefCell::new(Vec::new()),
        }
    }
    /// Skip dropout on attention probabilities, keeping the fused attention op in
    /// training (faster; a small departure from HF's regularisation).
    pub fn without_attention_dropout(mut self) -> Dropout {
        self.attention_probs = false;
        self
    }
    /// Take the unfused attention path even without dropout (to test it against the
    /// fused op).
    pub fn with_unfused_attention(mut self) -> Dropout {
        self.force_unfused = true;
        self
    }
    /// Take the op-by-op path (scores materialised, as HF's eager attention): only when
    /// forced, for tests. Dropout on the probabilities is fused into the attention op.
    pub fn unfused_attention(&self) -> bool {
        self.force_unfused
    }
    /// (p, seed) for the next attention call's probability dropout, or None. Draws the
    /// site seed exactly as `apply` does, so the fused op and the unfused path drop the
    /// same (b, h, i, j) entries.
    pub fn attention_dropout(&self) -> Option<(f32, u64)> {
        if !self.attention_probs {
            return None;
        }
        let seed = self.seed.filter(|_| self.p > 0.0)?;
        Some((self.p, self.next_site_seed(seed)))
    }
    fn next_site_seed(&self, seed: u64) -> u64 {
        let k = self.counter.get();
        self.counter.set(k + 1);
        // Site k of this forward, hashed as every model hashes its sites.
        crate::nn::Mode::train(seed).seed_for(k)
    }
    /// Dropout on attention probabilities (identity unless they are dropped).
    fn apply_attention(&self, probs: &Tensor) -> Result<Tensor> {
        match self.attention_dropout() {
            Some((p, seed)) => probs.dropout(p, seed),
            None => Ok(probs.clone()),
        }
    }
    fn cached_extra(
        &self,
        key: ExtraKey,
        build: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        if let Some((_, t)) = self.extra.borrow().iter().find(|(k, _)| *k == key) {
            return Ok(t.clone());
        }
        let t = build()?;
        self.extra.borrow_mut().push((key, t.clone()));
        Ok(t)
    }
    /// A copy that draws the same site seeds from here on, with its own cache: a
    /// checkpointed block's forward and its recompute in backward each run on a fork
    /// taken at the block's start, so both draw identical masks.
    pub fn fork(&self) -> Dropout {
        Dropout {
            p: self.p,
            seed: self.seed,
            counter: Cell::new(self.counter.get()),
            force_unfused: self.force_unfused,
            attention_probs: self.attention_probs,
            extra: RefCell::new(Vec::new()),
        }
    }
    /// Sites drawn so far (to continue after a fork).
    pub fn sites_drawn(&self) -> u64 {
        self.counter.get()
    }
    /// Continue drawing from site `k` (after a fork drew the sites before it).
    pub fn resume_at(&self, k: u64) {
        self.counter.set(k);
    }
    pub fn off() -> Dropout {
        Dropout::new(0.0, None)
    }
    pub fn active(&self) -> bool {
        self.p > 0.0 && self.seed.is_some()
    }
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let Some(seed) = self.seed.filter(|_| self.p > 0.0) else {
            return Ok(x.clone());
        };
        x.dropout(self.p, self.next_site_seed(seed))
    }
}

/// `vb.name.weight`, created with HF's `_init_weights` normal(0, std) when absent (a
/// fresh model); a loaded checkpoint must have it (checked by the caller).
pub fn weight(vb: &VarBuilder, name: &str, shape: &[usize], std: f64) -> Result<Tensor> {
    vb.pp(name).get_or_init("weight", shape, Init::Normal(std))
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
        if drop.unfused_attention() || crate::models::separate_qkv() {
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
    if causal || key_mask.is_some() {
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
        let ids = bucket_ids(lq, lk, q_offset, !self.is_decoder, cfg);
        let ids = Tensor::from_i32(ids, [lq, lk], self.rel_bias.device())?;
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
        for blk in &self.blocks {
            let ctx = BlockInputs {
                is_decoder: self.is_decoder,
                self_mask,
                bias: &bias,
                cross,
            };
            h = if self.checkpointing {
                super::checkpoint_block(blk, &h, &ctx, drop)?
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
