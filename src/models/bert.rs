//! BERT (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for
//! Language Understanding", arXiv:1810.04805) for extractive QA: HF
//! `BertForQuestionAnswering` (a `BertModel` without pooler, then `qa_outputs`).
//!
//! Word + absolute position + token-type embeddings, LayerNorm (`layer_norm_eps`),
//! `num_hidden_layers` post-LN blocks: the encoder shared with DistilBERT (`encoder.rs`),
//! under the QA model both share (`encoder_qa.rs`). Loads `bert.*`-prefixed QA
//! checkpoints and bare `BertModel` ones such as all-MiniLM-L6-v2 (`embeddings.*`,
//! `encoder.*`, whose pooler is dropped and QA head initialised fresh).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::encoder::{Activation, EncoderSpec, LayerDims, LayerNames};
use super::encoder_qa::{check_family, EncoderFamily, EncoderForQa};
use crate::error::{Error, Result};

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
    /// Refuse what we do not implement; `file` names the config in errors.
    pub fn validate(&self, file: &Path) -> Result<()> {
        if self.position_embedding_type != "absolute" {
            return Err(Error::msg(format!(
                "{}: position_embedding_type = {:?} is not supported (expected \"absolute\")",
                file.display(),
                self.position_embedding_type
            )));
        }
        check_family(self, file)
    }
}

impl EncoderFamily for BertConfig {
    const MODEL_TYPE: &'static str = "bert";
    const QA_CLASS: &'static str = "BertForQuestionAnswering";
    const BARE_ROOTS: &'static [&'static str] = &["embeddings", "encoder", "pooler"];

    fn check(&self, file: &Path) -> Result<()> {
        self.validate(file)
    }

    fn encoder_spec(&self) -> Result<EncoderSpec> {
        let dims = LayerDims {
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
        };
        Ok(EncoderSpec {
            input_op: "bert (input_ids)",
            vocab: self.vocab_size,
            max_positions: self.max_position_embeddings,
            type_vocab: self.type_vocab_size,
            sinusoidal_positions: false,
            pad_token_id: self.pad_token_id,
            embedding_dropout: self.hidden_dropout_prob,
            layers: self.num_hidden_layers,
            layer_prefix: "encoder.layer",
            names: LayerNames::Bert,
            dims,
        })
    }

    /// `BertForQuestionAnswering` has no dropout before `qa_outputs`.
    fn qa_dropout(&self) -> Option<f32> {
        None
    }
}

/// HF `BertForQuestionAnswering`.
pub type BertForQa = EncoderForQa<BertConfig>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::qa::QaModel;
    use crate::nn::safetensors_io;
    use crate::shape::{DType, Device};

    /// A tiny BERT saved in `dir`, and its weights file.
    fn saved_bert(dir: &Path) -> Result<std::path::PathBuf> {
        let cfg: BertConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 12, "max_position_embeddings": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "hidden_size": 4, "intermediate_size": 8,
        }))
        .map_err(|e| Error::msg(e.to_string()))?;
        BertForQa::new(cfg, Device::Cpu, DType::F32, 3)?.save(dir)?;
        Ok(dir.join("model.safetensors"))
    }

    /// What config.json leaves out takes HF's default; unknown keys are kept.
    #[test]
    fn missing_fields_take_the_defaults_and_unknown_keys_stay() -> Result<()> {
        let cfg: BertConfig =
            serde_json::from_str(r#"{"hidden_size": 64, "use_cache": true, "pad_token_id": 3}"#)
                .map_err(|e| Error::msg(e.to_string()))?;
        assert_eq!((cfg.hidden_size, cfg.pad_token_id), (64, 3));
        assert_eq!((cfg.vocab_size, cfg.num_hidden_layers), (30522, 12));
        assert_eq!(
            (cfg.layer_norm_eps, cfg.hidden_act.as_str()),
            (1e-12, "gelu")
        );
        assert_eq!(cfg.position_embedding_type, "absolute");
        assert_eq!(cfg.extra.get("use_cache"), Some(&serde_json::json!(true)));
        assert_eq!(cfg.extra.len(), 1);
        Ok(())
    }

    /// An old checkpoint's `LayerNorm.gamma` loads as `LayerNorm.weight`; a file holding
    /// both names is refused with both named, instead of keeping whichever came last.
    #[test]
    fn old_layer_norm_names_load_and_both_names_are_refused() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("fusebox-alias-{}", std::process::id()));
        let file = saved_bert(&dir)?;
        let mut tensors = safetensors_io::load(&file, DType::F32, Device::Cpu)?;
        let (new, old) = (
            "bert.embeddings.LayerNorm.weight",
            "bert.embeddings.LayerNorm.gamma",
        );
        let gamma = tensors
            .get(new)
            .cloned()
            .ok_or_else(|| Error::msg("no weight"))?;
        let want = gamma.to_vec_f32()?;

        // Only the old name: it loads, under the current name.
        tensors.remove(new);
        tensors.insert(old.into(), gamma.clone());
        safetensors_io::save(&file, &tensors, None)?;
        let m = BertForQa::load(&dir, Device::Cpu, DType::F32, 0)?;
        assert_eq!(m.params().get(new, &[4])?.to_vec_f32()?, want);
        assert!(!m.params().contains(old));

        // Both names, with different values: refused, naming both and the file.
        tensors.insert(new.into(), gamma.scale(2.0)?);
        safetensors_io::save(&file, &tensors, None)?;
        let err = BertForQa::load(&dir, Device::Cpu, DType::F32, 0)
            .err()
            .ok_or_else(|| Error::msg("a file with both names must not load"))?
            .to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(err.contains(new) && err.contains(old), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
        Ok(())
    }
}
