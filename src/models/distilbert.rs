//! DistilBERT (Sanh et al. 2019, "DistilBERT, a distilled version of BERT",
//! arXiv:1910.01108) for extractive QA: HF `DistilBertForQuestionAnswering`.
//!
//! Word + learned position embeddings (no segment embeddings), LayerNorm eps 1e-12,
//! `n_layers` post-LN blocks (shared with BERT in `encoder.rs`; DistilBERT has no dropout
//! after the attention projection), then `qa_dropout` and `qa_outputs`. Loads
//! `distilbert.*`-prefixed QA checkpoints and bare base-model ones
//! (`embeddings.*`, `transformer.*`), whose QA head is then initialised fresh.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::encoder::{
    adopt_checkpoint, check_complete, check_ids, embed_padding_idx, position_ids, read_config,
    save_hf, weights_path, Activation, EncoderLayer, LayerDims, LayerNames, Mode, QaBatch, QaHead,
    QaModel, LAYER_NORM_EPS,
};
use crate::nn::{Embedding, Init, LayerNorm, ParamStore};
use crate::shape::{DType, Device};
use crate::tensor::Tensor;

fn d_vocab() -> usize {
    30522
}
fn d_max_pos() -> usize {
    512
}
fn d_layers() -> usize {
    6
}
fn d_heads() -> usize {
    12
}
fn d_dim() -> usize {
    768
}
fn d_hidden_dim() -> usize {
    3072
}
fn d_dropout() -> f32 {
    0.1
}
fn d_qa_dropout() -> f32 {
    0.1
}
fn d_activation() -> String {
    "gelu".into()
}
fn d_init() -> f64 {
    0.02
}

/// `DistilBertConfig` under its HF field names and defaults. Unknown keys are kept and
/// written back on save.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DistilBertConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
    #[serde(default = "d_layers")]
    pub n_layers: usize,
    #[serde(default = "d_heads")]
    pub n_heads: usize,
    #[serde(default = "d_dim")]
    pub dim: usize,
    #[serde(default = "d_hidden_dim")]
    pub hidden_dim: usize,
    #[serde(default = "d_dropout")]
    pub dropout: f32,
    #[serde(default = "d_dropout")]
    pub attention_dropout: f32,
    #[serde(default = "d_activation")]
    pub activation: String,
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    #[serde(default = "d_qa_dropout")]
    pub qa_dropout: f32,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl DistilBertConfig {
    /// Parse `dir/config.json` and refuse what we do not implement.
    pub fn load(dir: &Path) -> Result<DistilBertConfig> {
        let c: DistilBertConfig = read_config(dir)?;
        c.validate(&dir.join("config.json"))?;
        Ok(c)
    }

    pub fn validate(&self, file: &Path) -> Result<()> {
        if self.n_heads == 0 || !self.dim.is_multiple_of(self.n_heads) {
            return Err(Error::msg(format!(
                "{}: dim {} is not divisible by n_heads {}",
                file.display(),
                self.dim,
                self.n_heads
            )));
        }
        Activation::parse(&self.activation, file, "activation")?;
        Ok(())
    }

    fn layer_dims(&self) -> Result<LayerDims> {
        Ok(LayerDims {
            hidden: self.dim,
            intermediate: self.hidden_dim,
            heads: self.n_heads,
            eps: LAYER_NORM_EPS,
            init_std: self.initializer_range,
            hidden_dropout: self.dropout,
            attn_out_dropout: 0.0,
            attention_dropout: self.attention_dropout,
            activation: Activation::parse(
                &self.activation,
                Path::new("config.json"),
                "activation",
            )?,
        })
    }
}

const NAMES: LayerNames = LayerNames {
    query: "attention.q_lin",
    key: "attention.k_lin",
    value: "attention.v_lin",
    attn_out: "attention.out_lin",
    attn_norm: "sa_layer_norm",
    ffn_in: "ffn.lin1",
    ffn_out: "ffn.lin2",
    out_norm: "output_layer_norm",
};

/// HF `DistilBertForQuestionAnswering`.
pub struct DistilBertForQa {
    pub config: DistilBertConfig,
    word: Embedding,
    position: Embedding,
    emb_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    head: QaHead,
    store: ParamStore,
    /// Per-layer activation checkpointing in training (see `QaModel::set_checkpointing`).
    checkpointing: bool,
}

impl DistilBertForQa {
    /// Load an HF model directory (config.json + model.safetensors).
    pub fn load(dir: &Path, device: Device, dtype: DType, seed: u64) -> Result<DistilBertForQa> {
        let config = DistilBertConfig::load(dir)?;
        let weights = weights_path(dir)?;
        let store = ParamStore::load(&weights, device, dtype, seed)?;
        adopt_checkpoint(&store, "distilbert", &["embeddings", "transformer"]);
        let model = DistilBertForQa::build(config, store)?;
        check_complete(&model.store, &weights)?;
        Ok(model)
    }

    /// A freshly initialised model (HF `_init_weights`: normal(0, initializer_range),
    /// zero biases, unit LayerNorms).
    pub fn new(
        config: DistilBertConfig,
        device: Device,
        dtype: DType,
        seed: u64,
    ) -> Result<DistilBertForQa> {
        config.validate(Path::new("config"))?;
        DistilBertForQa::build(config, ParamStore::new(device, dtype, seed))
    }

    fn build(config: DistilBertConfig, store: ParamStore) -> Result<DistilBertForQa> {
        let vb = store.vb();
        let base = vb.pp("distilbert");
        let std = config.initializer_range;
        let emb = base.pp("embeddings");
        let word = Embedding::new(
            &emb.pp("word_embeddings"),
            config.vocab_size,
            config.dim,
            std,
        )?;
        let position = if config.sinusoidal_pos_embds {
            // Fixed, as in the original DistilBERT (and transformers before v5): the
            // sine/cosine table when the checkpoint has none, and never trained.
            let pvb = emb.pp("position_embeddings");
            pvb.get_or_init(
                "weight",
                &[config.max_position_embeddings, config.dim],
                Init::Sinusoidal,
            )?;
            Embedding {
                weight: pvb.freeze("weight")?,
            }
        } else {
            Embedding::new(
                &emb.pp("position_embeddings"),
                config.max_position_embeddings,
                config.dim,
                std,
            )?
        };
        let emb_norm = LayerNorm::new(&emb.pp("LayerNorm"), config.dim, LAYER_NORM_EPS)?;
        let dims = config.layer_dims()?;
        let layers = (0..config.n_layers)
            .map(|i| EncoderLayer::new(&base.pp(format!("transformer.layer.{i}")), &NAMES, dims))
            .collect::<Result<Vec<_>>>()?;
        let head = QaHead::new(&vb, config.dim, std)?;
        Ok(DistilBertForQa {
            config,
            word,
            position,
            emb_norm,
            layers,
            head,
            store,
            checkpointing: false,
        })
    }

    /// The encoder's last hidden states `[B, L, dim]` (HF `DistilBertModel` output 0).
    pub fn encode(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        input_ids.expect_rank("distilbert (input_ids)", 2)?;
        check_ids(input_ids, self.config.vocab_size, "token id")?;
        let (b, l) = (input_ids.dims()[0], input_ids.dims()[1]);
        let pos = position_ids(
            b,
            l,
            self.config.max_position_embeddings,
            input_ids.device(),
        )?;
        let x = embed_padding_idx(&self.word.weight, input_ids, self.config.pad_token_id)?
            .add(&self.position.forward(&pos)?)?;
        let mut x = self
            .emb_norm
            .forward(&x)?
            .dropout(mode.p(self.config.dropout), mode.seed_for(1))?;
        for (i, layer) in self.layers.iter().enumerate() {
            let site = 2 + i as u64;
            x = if self.checkpointing && mode.is_train() {
                layer.forward_checkpointed(&x, attention_mask, mode, site)?
            } else {
                layer.forward(&x, attention_mask, mode, site)?
            };
        }
        Ok(x)
    }

    fn hf_config(&self) -> Result<serde_json::Value> {
        let mut v = serde_json::to_value(&self.config)
            .map_err(|e| Error::msg(format!("DistilBERT config: {e}")))?;
        if let Some(o) = v.as_object_mut() {
            o.insert("model_type".into(), "distilbert".into());
            o.insert(
                "architectures".into(),
                serde_json::json!(["DistilBertForQuestionAnswering"]),
            );
        }
        Ok(v)
    }
}

impl QaModel for DistilBertForQa {
    fn forward(&self, batch: &QaBatch, mode: Mode) -> Result<(Tensor, Tensor)> {
        let h = self.encode(&batch.input_ids, &batch.attention_mask, mode)?;
        let h = h.dropout(mode.p(self.config.qa_dropout), mode.seed_for(0))?;
        self.head.forward(&h)
    }
    fn params(&self) -> &ParamStore {
        &self.store
    }
    fn set_checkpointing(&mut self, on: bool) {
        self.checkpointing = on;
    }
    fn checkpointing(&self) -> bool {
        self.checkpointing
    }
    fn save(&self, dir: &Path) -> Result<()> {
        save_hf(dir, &self.hf_config()?, &self.store)
    }
    fn hf_class(&self) -> &'static str {
        "DistilBertForQuestionAnswering"
    }
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }
    fn pad_token_id(&self) -> u32 {
        self.config.pad_token_id
    }
    fn uses_token_type_ids(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sinusoidal_pos_embds: true`: the position table is HF's sine/cosine table and
    /// is not trained (the optimizer never sees it), but it is still saved.
    #[test]
    fn sinusoidal_position_table_is_fixed() -> Result<()> {
        let cfg: DistilBertConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 10, "max_position_embeddings": 6, "n_layers": 1, "n_heads": 2,
            "dim": 4, "hidden_dim": 8, "sinusoidal_pos_embds": true,
        }))
        .map_err(|e| Error::msg(e.to_string()))?;
        let m = DistilBertForQa::new(cfg, Device::Cpu, DType::F32, 0)?;
        let w = m.position.weight.to_vec_f32()?;
        for pos in 0..6 {
            for j in 0..4 {
                let angle = pos as f64 / 10000f64.powf((2 * (j / 2)) as f64 / 4.0);
                let want = if j % 2 == 0 { angle.sin() } else { angle.cos() };
                assert!(
                    (w[pos * 4 + j] as f64 - want).abs() < 1e-6,
                    "pos {pos} col {j}"
                );
            }
        }
        assert!(!m.position.weight.tracks());
        let name = "distilbert.embeddings.position_embeddings.weight";
        assert!(m.store.trainable().iter().all(|(n, _)| n != name));
        assert!(m.store.contains(name));
        Ok(())
    }
}
