//! `BartConfig`: config.json of a `BartForConditionalGeneration` (model_type "bart") or a
//! `MarianMTModel` (model_type "marian"), as one serde struct with Hugging Face's field
//! names. The two families share every field but differ in their defaults
//! (transformers' `configuration_bart.py` / `configuration_marian.py`), so the defaults of
//! the file's `model_type` fill the fields it omits before the struct is read.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::encoder::Activation;
use crate::models::hf::check_positive;
use crate::models::t5::EosTokenId;

/// Which of the two architectures a config describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// BART: learned positions (offset 2), `layernorm_embedding`.
    Bart,
    /// Marian: fixed sinusoidal positions, no embedding LayerNorm.
    Marian,
}

impl Family {
    /// The transformers class that reads and writes this family's checkpoints.
    pub fn class(self) -> &'static str {
        match self {
            Family::Bart => "BartForConditionalGeneration",
            Family::Marian => "MarianMTModel",
        }
    }
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Bart => "bart",
            Family::Marian => "marian",
        }
    }
}

/// transformers' `BartConfig()` defaults (bart-large sizes).
const BART_DEFAULTS: &str = r#"{
    "vocab_size": 50265, "max_position_embeddings": 1024, "d_model": 1024,
    "encoder_layers": 12, "decoder_layers": 12, "encoder_attention_heads": 16,
    "decoder_attention_heads": 16, "encoder_ffn_dim": 4096, "decoder_ffn_dim": 4096,
    "activation_function": "gelu", "dropout": 0.1, "attention_dropout": 0.0,
    "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0,
    "init_std": 0.02, "scale_embedding": false, "pad_token_id": 1, "bos_token_id": 0,
    "eos_token_id": 2, "decoder_start_token_id": 2, "forced_eos_token_id": 2,
    "tie_word_embeddings": true
}"#;

/// transformers' `MarianConfig()` defaults (opus-mt-en-de's vocabulary).
const MARIAN_DEFAULTS: &str = r#"{
    "vocab_size": 58101, "max_position_embeddings": 1024, "d_model": 1024,
    "encoder_layers": 12, "decoder_layers": 12, "encoder_attention_heads": 16,
    "decoder_attention_heads": 16, "encoder_ffn_dim": 4096, "decoder_ffn_dim": 4096,
    "activation_function": "gelu", "dropout": 0.1, "attention_dropout": 0.0,
    "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0,
    "init_std": 0.02, "scale_embedding": false, "pad_token_id": 58100,
    "eos_token_id": 0, "decoder_start_token_id": 58100, "forced_eos_token_id": 0,
    "share_encoder_decoder_embeddings": true, "tie_word_embeddings": true
}"#;

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BartConfig {
    /// "bart" or "marian".
    pub model_type: String,
    pub vocab_size: usize,
    /// Marian only: the decoder's vocabulary, equal to `vocab_size` when the embeddings
    /// are shared (the only case fusebox runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_vocab_size: Option<usize>,
    pub max_position_embeddings: usize,
    pub d_model: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub decoder_attention_heads: usize,
    pub encoder_ffn_dim: usize,
    pub decoder_ffn_dim: usize,
    pub activation_function: String,
    pub dropout: f64,
    pub attention_dropout: f64,
    pub activation_dropout: f64,
    /// LayerDrop (skipping whole layers at random in training) is not implemented: every
    /// layer always runs. Both public families ship 0.
    pub encoder_layerdrop: f64,
    pub decoder_layerdrop: f64,
    pub init_std: f64,
    /// Multiply token embeddings by √d_model (Marian checkpoints set it).
    pub scale_embedding: bool,
    /// Required (HF's `shift_tokens_right` raises without it).
    pub pad_token_id: i32,
    #[serde(default)]
    pub bos_token_id: Option<i32>,
    #[serde(default)]
    pub eos_token_id: Option<EosTokenId>,
    pub decoder_start_token_id: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced_bos_token_id: Option<i32>,
    #[serde(default)]
    pub forced_eos_token_id: Option<EosTokenId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_encoder_decoder_embeddings: Option<bool>,
    pub tie_word_embeddings: bool,
    /// Legacy fairseq fields (mBART's pre-LN layers and final LayerNorm): refused when true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub normalize_before: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub add_final_layer_norm: bool,
}

impl BartConfig {
    /// Parse and validate `config.json`'s text; `origin` names the file in errors.
    pub fn from_json_str(s: &str, origin: &str) -> Result<BartConfig> {
        let raw: serde_json::Value = serde_json::from_str(s)
            .map_err(|e| Error::msg(format!("{origin}: invalid JSON: {e}")))?;
        BartConfig::from_value(&raw, origin)
    }

    /// The config a parsed config.json describes, with its family's defaults for the
    /// fields it leaves out.
    pub fn from_value(raw: &serde_json::Value, origin: &str) -> Result<BartConfig> {
        let serde_json::Value::Object(given) = raw else {
            return Err(Error::msg(format!("{origin}: expected a JSON object")));
        };
        let defaults = match given.get("model_type").and_then(|m| m.as_str()) {
            Some("bart") => BART_DEFAULTS,
            Some("marian") => MARIAN_DEFAULTS,
            other => {
                return Err(Error::msg(format!(
                    "{origin}: field `model_type` is {other:?}; BartForConditionalGeneration / \
                     MarianMTModel need \"bart\" or \"marian\""
                )))
            }
        };
        let serde_json::Value::Object(mut merged) = serde_json::from_str(defaults)
            .map_err(|e| Error::msg(format!("built-in defaults: {e}")))?
        else {
            return Err(Error::msg("built-in defaults: not an object"));
        };
        merged.extend(given.iter().map(|(k, v)| (k.clone(), v.clone())));
        for field in ["pad_token_id", "decoder_start_token_id"] {
            if merged.get(field).is_some_and(|v| v.is_null()) {
                return Err(Error::msg(format!(
                    "{origin}: field `{field}` is null; BART and Marian need it \
                     (shift_tokens_right)"
                )));
            }
        }
        let cfg: BartConfig = serde_json::from_value(serde_json::Value::Object(merged))
            .map_err(|e| Error::msg(format!("{origin}: not a valid BART/Marian config: {e}")))?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    pub fn family(&self) -> Family {
        if self.model_type == "marian" {
            Family::Marian
        } else {
            Family::Bart
        }
    }

    /// Check what the model code relies on; errors name `origin` and the field.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad =
            |field: &str, msg: String| Err(Error::msg(format!("{origin}: field `{field}` {msg}")));
        if !matches!(self.model_type.as_str(), "bart" | "marian") {
            return bad(
                "model_type",
                format!("is {:?}; expected \"bart\" or \"marian\"", self.model_type),
            );
        }
        check_positive(
            Path::new(origin),
            &[
                ("vocab_size", self.vocab_size),
                ("max_position_embeddings", self.max_position_embeddings),
                ("d_model", self.d_model),
                ("encoder_layers", self.encoder_layers),
                ("decoder_layers", self.decoder_layers),
                ("encoder_attention_heads", self.encoder_attention_heads),
                ("decoder_attention_heads", self.decoder_attention_heads),
                ("encoder_ffn_dim", self.encoder_ffn_dim),
                ("decoder_ffn_dim", self.decoder_ffn_dim),
            ],
        )?;
        for (field, heads) in [
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("decoder_attention_heads", self.decoder_attention_heads),
        ] {
            if !self.d_model.is_multiple_of(heads) {
                return bad(
                    field,
                    format!(
                        "is {heads}, which does not divide d_model {} (each head gets d_model / heads)",
                        self.d_model
                    ),
                );
            }
        }
        let rates = [
            ("dropout", self.dropout),
            ("attention_dropout", self.attention_dropout),
            ("activation_dropout", self.activation_dropout),
            ("encoder_layerdrop", self.encoder_layerdrop),
            ("decoder_layerdrop", self.decoder_layerdrop),
        ];
        for (field, p) in rates {
            if !(0.0..1.0).contains(&p) {
                return bad(field, format!("is {p}; expected a value in [0, 1)"));
            }
        }
        for (field, on) in [
            ("normalize_before", self.normalize_before),
            ("add_final_layer_norm", self.add_final_layer_norm),
        ] {
            if on {
                return bad(
                    field,
                    "is true: pre-LayerNorm layers / a final LayerNorm (mBART) are not \
                     supported; BART and Marian are post-LN"
                        .into(),
                );
            }
        }
        if self.share_encoder_decoder_embeddings == Some(false) {
            return bad(
                "share_encoder_decoder_embeddings",
                "is false: separate encoder and decoder vocabularies are not supported \
                 (only Marian models whose embeddings are shared)"
                    .into(),
            );
        }
        if let Some(dv) = self.decoder_vocab_size {
            if dv != self.vocab_size {
                return bad(
                    "decoder_vocab_size",
                    format!(
                        "is {dv} but vocab_size is {}: with shared embeddings they must be equal",
                        self.vocab_size
                    ),
                );
            }
        }
        self.activation(Path::new(origin))?;
        let list = |e: &Option<EosTokenId>| e.as_ref().map_or_else(Vec::new, EosTokenId::ids);
        let special = [
            ("pad_token_id", vec![self.pad_token_id]),
            ("decoder_start_token_id", vec![self.decoder_start_token_id]),
            ("bos_token_id", self.bos_token_id.into_iter().collect()),
            (
                "forced_bos_token_id",
                self.forced_bos_token_id.into_iter().collect(),
            ),
            ("eos_token_id", list(&self.eos_token_id)),
            ("forced_eos_token_id", list(&self.forced_eos_token_id)),
        ];
        let v = self.vocab_size;
        for (field, ids) in special {
            if let Some(i) = ids.iter().find(|&&i| i < 0 || i as usize >= v) {
                return bad(field, format!("holds {i}, outside the vocabulary [0, {v})"));
            }
        }
        Ok(())
    }

    /// The feed-forward activation (`activation_function`).
    pub fn activation(&self, file: &Path) -> Result<Activation> {
        Activation::parse(&self.activation_function, file, "activation_function")
    }

    pub fn pad_id(&self) -> i32 {
        self.pad_token_id
    }

    /// The first decoder input (BART 2, Marian the pad id).
    pub fn decoder_start_id(&self) -> i32 {
        self.decoder_start_token_id
    }

    pub fn eos_ids(&self) -> Vec<i32> {
        self.eos_token_id
            .as_ref()
            .map_or_else(Vec::new, EosTokenId::ids)
    }

    /// The factor on token embeddings: √d_model with `scale_embedding`, else 1.
    pub fn embed_scale(&self) -> f64 {
        if self.scale_embedding {
            (self.d_model as f64).sqrt()
        } else {
            1.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_defaults_fill_missing_fields() {
        let b = BartConfig::from_json_str(r#"{"model_type": "bart"}"#, "t").unwrap();
        assert_eq!(b.family(), Family::Bart);
        assert_eq!(
            (b.pad_id(), b.decoder_start_id(), b.eos_ids()),
            (1, 2, vec![2])
        );
        assert_eq!(
            (b.vocab_size, b.d_model, b.encoder_layers),
            (50265, 1024, 12)
        );
        let m = BartConfig::from_json_str(
            r#"{"model_type": "marian", "vocab_size": 100, "pad_token_id": 99,
                "decoder_start_token_id": 99, "scale_embedding": true, "d_model": 16,
                "encoder_attention_heads": 4, "decoder_attention_heads": 4}"#,
            "t",
        )
        .unwrap();
        assert_eq!(m.family(), Family::Marian);
        assert_eq!(
            (m.pad_id(), m.decoder_start_id(), m.eos_ids()),
            (99, 99, vec![0])
        );
        assert_eq!(m.embed_scale(), 4.0);
        assert_eq!(m.bos_token_id, None);
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let cases = [
            (r#"{"model_type": "t5"}"#, "model_type"),
            (
                r#"{"model_type": "bart", "d_model": 30, "encoder_attention_heads": 4}"#,
                "encoder_attention_heads",
            ),
            (
                r#"{"model_type": "bart", "normalize_before": true}"#,
                "normalize_before",
            ),
            (
                r#"{"model_type": "bart", "add_final_layer_norm": true}"#,
                "add_final_layer_norm",
            ),
            (
                r#"{"model_type": "marian", "share_encoder_decoder_embeddings": false}"#,
                "share_encoder_decoder_embeddings",
            ),
            (
                r#"{"model_type": "marian", "decoder_vocab_size": 7}"#,
                "decoder_vocab_size",
            ),
            (
                r#"{"model_type": "bart", "activation_function": "mish"}"#,
                "activation_function",
            ),
            (
                r#"{"model_type": "bart", "vocab_size": 2}"#,
                "decoder_start_token_id",
            ),
            (
                r#"{"model_type": "bart", "pad_token_id": null}"#,
                "pad_token_id",
            ),
            (r#"{"model_type": "bart", "dropout": 1.5}"#, "dropout"),
            (
                r#"{"model_type": "bart", "encoder_layers": 0}"#,
                "encoder_layers",
            ),
        ];
        for (json, field) in cases {
            let e = BartConfig::from_json_str(json, "dir/config.json")
                .expect_err(json)
                .to_string();
            assert!(
                e.contains("dir/config.json") && e.contains(field),
                "{json}: {e}"
            );
        }
    }
}
