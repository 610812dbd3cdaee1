//! BERT (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for
//! Language Understanding", arXiv:1810.04805) for extractive QA: HF
//! `BertForQuestionAnswering` (a `BertModel` without pooler, then `qa_outputs`).
//!
//! Word + absolute position + token-type embeddings, LayerNorm (`layer_norm_eps`),
//! `num_hidden_layers` post-LN blocks shared with DistilBERT (`encoder.rs`). Loads
//! `bert.*`-prefixed QA checkpoints and bare `BertModel` ones such as all-MiniLM-L6-v2
//! (`embeddings.*`, `encoder.*`, whose pooler is dropped and QA head initialised fresh).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::encoder::{
    adopt_checkpoint, check_complete, check_ids, embed_padding_idx, position_ids, read_config,
    save_hf, weights_path, Activation, EncoderLayer, LayerDims, LayerNames, Mode, QaBatch, QaHead,
    QaModel,
};
use crate::nn::{Embedding, LayerNorm, ParamStore};
use crate::shape::{DType, Device};
use crate::tensor::Tensor;

fn d_vocab() -> usize {
    30522
}
fn d_hidden() -> usize {
    768
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    12
}
fn d_inter() -> usize {
    3072
}
fn d_act() -> String {
    "gelu".into()
}
fn d_dropout() -> f32 {
    0.1
}
fn d_max_pos() -> usize {
    512
}
fn d_type_vocab() -> usize {
    2
}
fn d_init() -> f64 {
    0.02
}
fn d_eps() -> f64 {
    1e-12
}
fn d_pos_type() -> String {
    "absolute".into()
}

/// `BertConfig` under its HF field names and defaults. Unknown keys are kept and written
/// back on save.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BertConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_inter")]
    pub intermediate_size: usize,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_dropout")]
    pub hidden_dropout_prob: f32,
    #[serde(default = "d_dropout")]
    pub attention_probs_dropout_prob: f32,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "d_pos_type")]
    pub position_embedding_type: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl BertConfig {
    /// Parse `dir/config.json` and refuse what we do not implement.
    pub fn load(dir: &Path) -> Result<BertConfig> {
        let c: BertConfig = read_config(dir)?;
        c.validate(&dir.join("config.json"))?;
        Ok(c)
    }

    pub fn validate(&self, file: &Path) -> Result<()> {
        if self.position_embedding_type != "absolute" {
            return Err(Error::msg(format!(
                "{}: position_embedding_type = {:?} is not supported (expected \"absolute\")",
                file.display(),
                self.position_embedding_type
            )));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(Error::msg(format!(
                "{}: hidden_size {} is not divisible by num_attention_heads {}",
                file.display(),
                self.hidden_size,
                self.num_attention_heads
            )));
        }
        Activation::parse(&self.hidden_act, file, "hidden_act")?;
        Ok(())
    }

    fn layer_dims(&self) -> Result<LayerDims> {
        Ok(LayerDims {
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            heads: self.num_attention_heads,
            eps: self.layer_norm_eps,
            init_std: self.initializer_range,
            hidden_dropout: self.hidden_dropout_prob,
            attn_out_dropout: self.hidden_dropout_prob,
            attention_dropout: self.attention_probs_dropout_prob,
            activation: Activation::parse(
                &self.hidden_act,
                Path::new("config.json"),
                "hidden_act",
            )?,
        })
    }
}

const NAMES: LayerNames = LayerNames {
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attn_out: "attention.output.dense",
    attn_norm: "attention.output.LayerNorm",
    ffn_in: "intermediate.dense",
    ffn_out: "output.dense",
    out_norm: "output.LayerNorm",
};

/// HF `BertForQuestionAnswering`.
pub struct BertForQa {
    pub config: BertConfig,
    word: Embedding,
    position: Embedding,
    token_type: Option<Embedding>,
    emb_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    head: QaHead,
    store: ParamStore,
    /// Per-layer activation checkpointing in training (see `QaModel::set_checkpointing`).
    checkpointing: bool,
}

impl BertForQa {
    /// Load an HF model directory (config.json + model.safetensors).
    pub fn load(dir: &Path, device: Device, dtype: DType, seed: u64) -> Result<BertForQa> {
        let config = BertConfig::load(dir)?;
        let weights = weights_path(dir)?;
        let store = ParamStore::load(&weights, device, dtype, seed)?;
        adopt_checkpoint(&store, "bert", &["embeddings", "encoder", "pooler"]);
        let model = BertForQa::build(config, store)?;
        check_complete(&model.store, &weights)?;
        Ok(model)
    }

    /// A freshly initialised model (HF `_init_weights`).
    pub fn new(config: BertConfig, device: Device, dtype: DType, seed: u64) -> Result<BertForQa> {
        config.validate(Path::new("config"))?;
        BertForQa::build(config, ParamStore::new(device, dtype, seed))
    }

    fn build(config: BertConfig, store: ParamStore) -> Result<BertForQa> {
        let vb = store.vb();
        let base = vb.pp("bert");
        let (h, std) = (config.hidden_size, config.initializer_range);
        let emb = base.pp("embeddings");
        let word = Embedding::new(&emb.pp("word_embeddings"), config.vocab_size, h, std)?;
        let position = Embedding::new(
            &emb.pp("position_embeddings"),
            config.max_position_embeddings,
            h,
            std,
        )?;
        let token_type = if config.type_vocab_size > 0 {
            Some(Embedding::new(
                &emb.pp("token_type_embeddings"),
                config.type_vocab_size,
                h,
                std,
            )?)
        } else {
            None
        };
        let emb_norm = LayerNorm::new(&emb.pp("LayerNorm"), h, config.layer_norm_eps)?;
        let dims = config.layer_dims()?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| EncoderLayer::new(&base.pp(format!("encoder.layer.{i}")), &NAMES, dims))
            .collect::<Result<Vec<_>>>()?;
        let head = QaHead::new(&vb, h, std)?;
        Ok(BertForQa {
            config,
            word,
            position,
            token_type,
            emb_norm,
            layers,
            head,
            store,
            checkpointing: false,
        })
    }

    /// The encoder's last hidden states `[B, L, hidden]` (HF `BertModel` output 0).
    /// `token_type_ids` default to zeros, as in HF.
    pub fn encode(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        mode: Mode,
    ) -> Result<Tensor> {
        input_ids.expect_rank("bert (input_ids)", 2)?;
        check_ids(input_ids, self.config.vocab_size, "token id")?;
        let (b, l) = (input_ids.dims()[0], input_ids.dims()[1]);
        let dev = input_ids.device();
        let pos = position_ids(b, l, self.config.max_position_embeddings, dev)?;
        let mut x = embed_padding_idx(&self.word.weight, input_ids, self.config.pad_token_id)?
            .add(&self.position.forward(&pos)?)?;
        if let Some(tt) = &self.token_type {
            let ids = match token_type_ids {
                Some(t) => t.clone(),
                None => Tensor::from_i32(vec![0; b * l], [b, l], dev)?,
            };
            check_ids(&ids, self.config.type_vocab_size, "token type id")?;
            x = x.add(&tt.forward(&ids)?)?;
        }
        let mut x = self
            .emb_norm
            .forward(&x)?
            .dropout(mode.p(self.config.hidden_dropout_prob), mode.seed_for(1))?;
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
            .map_err(|e| Error::msg(format!("BERT config: {e}")))?;
        if let Some(o) = v.as_object_mut() {
            o.insert("model_type".into(), "bert".into());
            o.insert(
                "architectures".into(),
                serde_json::json!(["BertForQuestionAnswering"]),
            );
        }
        Ok(v)
    }
}

impl QaModel for BertForQa {
    fn forward(&self, batch: &QaBatch, mode: Mode) -> Result<(Tensor, Tensor)> {
        let h = self.encode(
            &batch.input_ids,
            &batch.attention_mask,
            batch.token_type_ids.as_ref(),
            mode,
        )?;
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
        "BertForQuestionAnswering"
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
        self.token_type.is_some()
    }
}
