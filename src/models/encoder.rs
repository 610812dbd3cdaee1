//! The encoder BERT (Devlin et al. 2019, arXiv:1810.04805) and DistilBERT (Sanh et al.
//! 2019, arXiv:1910.01108) share: word + position (+ token-type) embeddings and their
//! LayerNorm, then a stack of post-LayerNorm transformer layers. Written once here;
//! `bert.rs` and `distilbert.rs` only say how their config.json maps onto it.
//!
//! The two HF implementations compute the same layer under different parameter names
//! (`attention.q_lin` vs `attention.self.query`, ...), so the layer is built from one
//! table of its parts' names (`PARTS`, a column per [`LayerNames`]) and loads either
//! checkpoint with no renaming. Attention is the
//! fused `attention` op: key padding mask, scale 1/√d, and HF's dropout on the attention
//! probabilities fused into the kernel (its mask re-derived from the seed in backward).
//!
//! Dropout sites are numbered by position in the model (`Mode::seed_for`): 0 is the QA
//! head's (DistilBERT), 1 the embeddings', and layer `i` uses `(2 + i) * 8 + {0, 1, 2}`
//! (attention probabilities, attention output, FFN output).

use std::path::Path;

use crate::error::{Error, Result};
use crate::models::hf::check_positive;
use crate::nn::{packed_qkv, separate_qkv, Embedding, Init, LayerNorm, Linear, VarBuilder};
use crate::ops::attention::AttnOptions;
use crate::ops::UnaryOp;
use crate::shape::Device;
use crate::tensor::Tensor;

// Their old home, kept for callers that import them from here: `Mode` lives in nn, the
// QA types in qa.rs (which imports nothing from this file).
pub use super::qa::{qa_loss, QaBatch, QaModel};
pub use crate::nn::Mode;

/// HF's LayerNorm eps for DistilBERT (hard-coded there) and BERT's default.
pub const LAYER_NORM_EPS: f64 = 1e-12;

/// Activation of the feed-forward block (HF `ACT2FN` names we support).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact erf GELU: HF's "gelu".
    Gelu,
    /// Tanh approximation: HF's "gelu_new".
    GeluNew,
    Relu,
    /// `x · sigmoid(x)`: HF's "silu" and its alias "swish".
    Silu,
}

/// What every encoder config is checked for: `sizes` (vocab, positions, layers, heads,
/// hidden, FFN, under the file's own field names) positive, the hidden size split evenly
/// over the heads, and `act` (field, value) an activation fusebox has.
pub fn validate_sizes(file: &Path, sizes: [(&str, usize); 6], act: (&str, &str)) -> Result<()> {
    check_positive(file, &sizes)?;
    let ((heads_field, heads), (hidden_field, hidden)) = (sizes[3], sizes[4]);
    if !hidden.is_multiple_of(heads) {
        return Err(Error::msg(format!(
            "{}: {hidden_field} {hidden} is not divisible by {heads_field} {heads}",
            file.display()
        )));
    }
    Activation::parse(act.1, file, act.0).map(|_| ())
}

impl Activation {
    pub fn parse(name: &str, file: &Path, field: &str) -> Result<Activation> {
        match name {
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" => Ok(Activation::GeluNew),
            "relu" => Ok(Activation::Relu),
            "silu" | "swish" => Ok(Activation::Silu),
            other => Err(Error::msg(format!(
                "{}: {field} = {other:?} is not supported (expected \"gelu\", \"gelu_new\", \"relu\", \"silu\" or \"swish\")",
                file.display()
            ))),
        }
    }
    pub fn op(self) -> UnaryOp {
        match self {
            Activation::Gelu => UnaryOp::Gelu,
            Activation::GeluNew => UnaryOp::GeluNew,
            Activation::Relu => UnaryOp::Relu,
            Activation::Silu => UnaryOp::Silu,
        }
    }
}

/// Whose checkpoint names an encoder's layers go by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerNames {
    Bert,
    DistilBert,
}

/// The parts of an encoder layer, in [`PARTS`]' order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Query,
    Key,
    Value,
    AttnOut,
    AttnNorm,
    FfnIn,
    FfnOut,
    OutNorm,
}

/// Where each part of a layer lives, relative to the layer's prefix: under BERT's name
/// and under DistilBERT's.
const PARTS: [(Part, &str, &str); 8] = [
    (Part::Query, "attention.self.query", "attention.q_lin"),
    (Part::Key, "attention.self.key", "attention.k_lin"),
    (Part::Value, "attention.self.value", "attention.v_lin"),
    (Part::AttnOut, "attention.output.dense", "attention.out_lin"),
    (
        Part::AttnNorm,
        "attention.output.LayerNorm",
        "sa_layer_norm",
    ),
    (Part::FfnIn, "intermediate.dense", "ffn.lin1"),
    (Part::FfnOut, "output.dense", "ffn.lin2"),
    (Part::OutNorm, "output.LayerNorm", "output_layer_norm"),
];

impl LayerNames {
    /// `part`'s name under this naming.
    pub fn of(self, part: Part) -> &'static str {
        let (_, bert, distilbert) = PARTS[part as usize];
        match self {
            LayerNames::Bert => bert,
            LayerNames::DistilBert => distilbert,
        }
    }
}

/// Sizes and rates of one layer.
#[derive(Clone, Copy, Debug)]
pub struct LayerDims {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub eps: f64,
    pub init_std: f64,
    /// Dropout after the FFN (both models) ...
    pub hidden_dropout: f32,
    /// ... and after the attention output projection (BERT only; 0 for DistilBERT,
    /// whose `TransformerBlock` has none there).
    pub attn_out_dropout: f32,
    /// On the attention probabilities (fused into the attention op).
    pub attention_dropout: f32,
    pub activation: Activation,
}

/// One post-LN transformer layer: `LN(x + Drop(Attn(x)))`, then `LN(h + Drop(FFN(h)))`.
/// Cloning shares the parameters (a checkpointed layer's recompute owns a clone).
#[derive(Clone)]
pub struct EncoderLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    out_norm: LayerNorm,
    dims: LayerDims,
}

impl EncoderLayer {
    pub fn new(vb: &VarBuilder, names: LayerNames, dims: LayerDims) -> Result<EncoderLayer> {
        let (h, i, std) = (dims.hidden, dims.intermediate, dims.init_std);
        let at = |part| vb.pp(names.of(part));
        let linear = |part, n_in, n_out| Linear::new(&at(part), n_in, n_out, true, std);
        Ok(EncoderLayer {
            query: linear(Part::Query, h, h)?,
            key: linear(Part::Key, h, h)?,
            value: linear(Part::Value, h, h)?,
            attn_out: linear(Part::AttnOut, h, h)?,
            attn_norm: LayerNorm::new(&at(Part::AttnNorm), h, dims.eps)?,
            ffn_in: linear(Part::FfnIn, h, i)?,
            ffn_out: linear(Part::FfnOut, i, h)?,
            out_norm: LayerNorm::new(&at(Part::OutNorm), h, dims.eps)?,
            dims,
        })
    }

    /// Every parameter of the layer (what a checkpointed recompute differentiates).
    pub fn params(&self) -> Vec<Tensor> {
        let mut v = Vec::with_capacity(16);
        for l in [
            &self.query,
            &self.key,
            &self.value,
            &self.attn_out,
            &self.ffn_in,
            &self.ffn_out,
        ] {
            v.push(l.weight.clone());
            v.extend(l.bias.clone());
        }
        for n in [&self.attn_norm, &self.out_norm] {
            v.push(n.weight.clone());
            v.push(n.bias.clone());
        }
        v
    }

    /// The three projections' biases, all or none.
    fn qkv_biases(&self) -> Result<Option<[&Tensor; 3]>> {
        match (&self.query.bias, &self.key.bias, &self.value.bias) {
            (Some(bq), Some(bk), Some(bv)) => Ok(Some([bq, bk, bv])),
            (None, None, None) => Ok(None),
            _ => Err(Error::msg(
                "encoder layer: query, key and value must all have a bias or none",
            )),
        }
    }

    /// [`EncoderLayer::forward`] under activation checkpointing: only `x` is kept for
    /// backward, which recomputes the layer (same dropout masks: they hash the seed).
    pub fn forward_checkpointed(
        &self,
        x: &Tensor,
        mask: &Tensor,
        mode: Mode,
        site: u64,
    ) -> Result<Tensor> {
        let layer = self.clone();
        let params = layer.params();
        crate::autograd::checkpoint("encoder_layer", &[x, mask], &params, move |t| {
            layer.forward(&t[0], &t[1], mode, site)
        })
    }

    /// `x [B, L, hidden]`, `mask` I32 `[B, L]` (nonzero = real token). `site` numbers
    /// this layer's dropout sites so that every mask of a step is distinct.
    pub fn forward(&self, x: &Tensor, mask: &Tensor, mode: Mode, site: u64) -> Result<Tensor> {
        let d = &self.dims;
        let (b, l) = (x.dims()[0], x.dims()[1]);
        let head_dim = d.hidden / d.heads;
        let opt = AttnOptions {
            scale: 1.0 / (head_dim as f32).sqrt(),
            causal: false,
            key_mask: Some(mask),
            bias: None,
            dropout: mode.p(d.attention_dropout),
            seed: mode.seed_for(site * 8),
        };
        let ctx = if separate_qkv() {
            let split = |t: Tensor| t.reshape([b, l, d.heads, head_dim]);
            let q = split(self.query.forward(x)?)?;
            let k = split(self.key.forward(x)?)?;
            let v = split(self.value.forward(x)?)?;
            q.attention(&k, &v, opt)?
        } else {
            let w = [&self.query.weight, &self.key.weight, &self.value.weight];
            let qkv = packed_qkv(x, w, self.qkv_biases()?, d.heads, head_dim)?;
            qkv.attention_qkv(opt)?
        };
        let ctx = ctx.reshape([b, l, d.hidden])?;
        // LayerNorm(dropout(o(ctx)) + x) as one op (one kernel each way on CUDA).
        let a = self.attn_out.forward(&ctx)?;
        let h = self.attn_norm.forward_residual(
            &a,
            x,
            mode.p(d.attn_out_dropout),
            mode.seed_for(site * 8 + 1),
        )?;
        // act(lin1) · lin2 with only lin1's output kept for backward (Tensor::act_linear).
        let f = self.ffn_in.forward(&h)?.act_linear(
            d.activation.op(),
            &self.ffn_out.weight,
            self.ffn_out.bias.as_ref(),
        )?;
        self.out_norm.forward_residual(
            &f,
            &h,
            mode.p(d.hidden_dropout),
            mode.seed_for(site * 8 + 2),
        )
    }
}

/// What an encoder is made of, from a model's config.json.
#[derive(Clone, Copy, Debug)]
pub struct EncoderSpec {
    /// The op named when `input_ids` has the wrong rank, e.g. "bert (input_ids)".
    pub input_op: &'static str,
    pub vocab: usize,
    pub max_positions: usize,
    /// Token-type (segment) vocabulary; 0: no token-type embedding (DistilBERT).
    pub type_vocab: usize,
    /// A fixed sine/cosine position table, never trained (DistilBERT's
    /// `sinusoidal_pos_embds`).
    pub sinusoidal_positions: bool,
    pub pad_token_id: u32,
    /// Dropout after the embeddings' LayerNorm.
    pub embedding_dropout: f32,
    pub layers: usize,
    /// Layer `i` lives under `{layer_prefix}.{i}` ("encoder.layer", "transformer.layer").
    pub layer_prefix: &'static str,
    pub names: LayerNames,
    pub dims: LayerDims,
}

/// HF `BertModel` without pooler / `DistilBertModel`: embeddings, then the layers.
pub struct Encoder {
    spec: EncoderSpec,
    word: Embedding,
    position: Embedding,
    token_type: Option<Embedding>,
    emb_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    /// Per-layer activation checkpointing in training (see `QaModel::set_checkpointing`).
    pub checkpointing: bool,
}

impl Encoder {
    /// Load or create (HF `_init_weights`) the parameters under `vb` (`bert`,
    /// `distilbert`), in the order HF creates them, so a seeded fresh model is the same
    /// model whichever family builds it.
    pub fn new(vb: &VarBuilder, spec: EncoderSpec) -> Result<Encoder> {
        let (h, std) = (spec.dims.hidden, spec.dims.init_std);
        let emb = vb.pp("embeddings");
        let word = Embedding::new(&emb.pp("word_embeddings"), spec.vocab, h, std)?;
        let position = if spec.sinusoidal_positions {
            // Fixed, as in the original DistilBERT (and transformers before v5): the
            // sine/cosine table when the checkpoint has none, and never trained.
            let pvb = emb.pp("position_embeddings");
            pvb.get_or_init("weight", &[spec.max_positions, h], Init::Sinusoidal)?;
            Embedding {
                weight: pvb.freeze("weight")?,
            }
        } else {
            Embedding::new(&emb.pp("position_embeddings"), spec.max_positions, h, std)?
        };
        let token_type = if spec.type_vocab > 0 {
            let tvb = emb.pp("token_type_embeddings");
            Some(Embedding::new(&tvb, spec.type_vocab, h, std)?)
        } else {
            None
        };
        let emb_norm = LayerNorm::new(&emb.pp("LayerNorm"), h, spec.dims.eps)?;
        let layers = (0..spec.layers)
            .map(|i| {
                let lvb = vb.pp(format!("{}.{i}", spec.layer_prefix));
                EncoderLayer::new(&lvb, spec.names, spec.dims)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Encoder {
            spec,
            word,
            position,
            token_type,
            emb_norm,
            layers,
            checkpointing: false,
        })
    }

    pub fn spec(&self) -> &EncoderSpec {
        &self.spec
    }

    /// Whether the encoder reads `token_type_ids` (BERT does, DistilBERT does not).
    pub fn has_token_types(&self) -> bool {
        self.token_type.is_some()
    }

    /// The last hidden states `[B, L, hidden]` (HF's output 0). `token_type_ids`
    /// default to zeros, as in HF, and are ignored without a token-type embedding.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        mode: Mode,
    ) -> Result<Tensor> {
        let s = &self.spec;
        input_ids.expect_rank(s.input_op, 2)?;
        check_ids(input_ids, s.vocab, "token id")?;
        let (b, l) = (input_ids.dims()[0], input_ids.dims()[1]);
        let dev = input_ids.device();
        let pos = position_ids(b, l, s.max_positions, dev)?;
        // nn.Embedding(padding_idx=pad): the pad row gets no gradient.
        let mut x = (self.word.weight)
            .embedding_padded(input_ids, s.pad_token_id as usize)?
            .add(&self.position.forward(&pos)?)?;
        if let Some(tt) = &self.token_type {
            let ids = match token_type_ids {
                Some(t) => t.clone(),
                None => Tensor::from_i32(vec![0; b * l], [b, l], dev)?,
            };
            check_ids(&ids, s.type_vocab, "token type id")?;
            x = x.add(&tt.forward(&ids)?)?;
        }
        let mut x = self
            .emb_norm
            .forward(&x)?
            .dropout(mode.p(s.embedding_dropout), mode.seed_for(1))?;
        for (i, layer) in self.layers.iter().enumerate() {
            let site = 2 + i as u64;
            let _range = crate::profile::nvtx::layer("encoder", i);
            x = if self.checkpointing && mode.is_train() {
                layer.forward_checkpointed(&x, attention_mask, mode, site)?
            } else {
                layer.forward(&x, attention_mask, mode, site)?
            };
        }
        Ok(x)
    }
}

/// Refuse ids outside `[0, limit)` (e.g. a tokenizer whose vocab does not match the
/// embedding table) instead of reading past the table.
///
/// On CUDA this reads nothing back: copying the ids to the host would wait for the
/// device at every forward (with gradient accumulation, for the previous micro-batch's
/// backward). The embedding kernels check every id themselves and record a bad one in
/// the device error record, reported (op, id, valid range) at the next read from the
/// device, e.g. the optimizer's gradient-norm read (backend/cuda/embedding.rs).
fn check_ids(ids: &Tensor, limit: usize, what: &str) -> Result<()> {
    if ids.device().is_cuda() {
        return Ok(());
    }
    let v = ids.to_vec_i32()?;
    if let Some(bad) = v.iter().find(|&&x| x < 0 || x as usize >= limit) {
        return Err(Error::msg(format!(
            "{what} {bad} is outside the embedding table of {limit} rows \
             (does the tokenizer match the model?)"
        )));
    }
    Ok(())
}

/// Position ids `0..L` for every row, I32 `[B, L]`, after checking L fits the table.
fn position_ids(b: usize, l: usize, max: usize, device: Device) -> Result<Tensor> {
    if l > max {
        return Err(Error::msg(format!(
            "sequence length {l} exceeds max_position_embeddings {max}"
        )));
    }
    let v: Vec<i32> = (0..b).flat_map(|_| 0..l as i32).collect();
    Tensor::from_i32(v, [b, l], device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`LayerNames::of`] indexes the table by the part: row `i` must be part `i`.
    #[test]
    fn the_names_table_is_in_part_order() {
        for (i, (part, _, _)) in PARTS.iter().enumerate() {
            assert_eq!(*part as usize, i, "{part:?}");
        }
        assert_eq!(LayerNames::Bert.of(Part::FfnIn), "intermediate.dense");
        assert_eq!(
            LayerNames::DistilBert.of(Part::OutNorm),
            "output_layer_norm"
        );
    }
}
