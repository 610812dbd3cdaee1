//! DistilBERT (Sanh et al. 2019, "DistilBERT, a distilled version of BERT",
//! arXiv:1910.01108) for extractive QA: HF `DistilBertForQuestionAnswering`.
//!
//! Word + learned position embeddings (no segment embeddings), LayerNorm eps 1e-12,
//! `n_layers` post-LN blocks (the encoder shared with BERT, `encoder.rs`; DistilBERT has
//! no dropout after the attention projection), then `qa_dropout` and `qa_outputs` (the
//! QA model both share, `encoder_qa.rs`). Loads
//! `distilbert.*`-prefixed QA checkpoints and bare base-model ones
//! (`embeddings.*`, `transformer.*`), whose QA head is then initialised fresh.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::encoder::{Activation, EncoderSpec, LayerDims, LayerNames, LAYER_NORM_EPS};
use super::encoder_qa::{check_family, EncoderFamily, EncoderForQa, SizeFields};
use crate::error::Result;

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
    /// Refuse what we do not implement; `file` names the config in errors.
    pub fn validate(&self, file: &Path) -> Result<()> {
        check_family(self, file)
    }
}

impl EncoderFamily for DistilBertConfig {
    const MODEL_TYPE: &'static str = "distilbert";
    const QA_CLASS: &'static str = "DistilBertForQuestionAnswering";
    const BARE_ROOTS: &'static [&'static str] = &["embeddings", "transformer"];
    const SIZE_FIELDS: SizeFields = SizeFields {
        vocab: "vocab_size",
        hidden: "dim",
        positions: "max_position_embeddings",
        intermediate: "hidden_dim",
        layers: "n_layers",
        heads: "n_heads",
        act: "activation",
    };

    fn check(&self, file: &Path) -> Result<()> {
        self.validate(file)
    }

    fn encoder_spec(&self) -> Result<EncoderSpec> {
        let dims = LayerDims {
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
        };
        Ok(EncoderSpec {
            input_op: "distilbert (input_ids)",
            vocab: self.vocab_size,
            max_positions: self.max_position_embeddings,
            type_vocab: 0,
            sinusoidal_positions: self.sinusoidal_pos_embds,
            pad_token_id: self.pad_token_id,
            embedding_dropout: self.dropout,
            layers: self.n_layers,
            layer_prefix: "transformer.layer",
            names: LayerNames::DistilBert,
            dims,
        })
    }

    fn qa_dropout(&self) -> Option<f32> {
        Some(self.qa_dropout)
    }
}

/// HF `DistilBertForQuestionAnswering`.
pub type DistilBertForQa = EncoderForQa<DistilBertConfig>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::models::qa::QaModel;
    use crate::shape::{DType, Device};

    /// What config.json leaves out takes HF's default; unknown keys are kept.
    #[test]
    fn missing_fields_take_the_defaults_and_unknown_keys_stay() -> Result<()> {
        let cfg: DistilBertConfig = serde_json::from_str(r#"{"dim": 64, "tie_weights_": true}"#)
            .map_err(|e| Error::msg(e.to_string()))?;
        assert_eq!((cfg.dim, cfg.hidden_dim, cfg.n_layers), (64, 3072, 6));
        assert_eq!((cfg.qa_dropout, cfg.activation.as_str()), (0.1, "gelu"));
        assert!(!cfg.sinusoidal_pos_embds);
        assert_eq!(
            cfg.extra.get("tie_weights_"),
            Some(&serde_json::json!(true))
        );
        assert_eq!(cfg.extra.len(), 1);
        Ok(())
    }

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
        let name = "distilbert.embeddings.position_embeddings.weight";
        let table = m.params().get(name, &[6, 4])?;
        let w = table.to_vec_f32()?;
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
        assert!(!table.tracks());
        assert!(m.params().trainable().iter().all(|(n, _)| n != name));
        Ok(())
    }
}
