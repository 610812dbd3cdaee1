//! `T5Config`: the checkpoint's config.json as a serde struct with Hugging Face's field
//! names and defaults (transformers' `configuration_t5.py`), plus the two rules HF's
//! version history forces on us: which feed-forward to build, and whether the decoder
//! output is rescaled before the LM head.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

fn d_vocab() -> usize {
    32128
}
fn d_model() -> usize {
    512
}
fn d_kv() -> usize {
    64
}
fn d_ff() -> usize {
    2048
}
fn d_layers() -> usize {
    6
}
fn d_heads() -> usize {
    8
}
fn d_buckets() -> usize {
    32
}
fn d_max_distance() -> usize {
    128
}
fn d_dropout() -> f64 {
    0.1
}
fn d_eps() -> f64 {
    1e-6
}
fn d_ff_proj() -> String {
    "relu".into()
}
fn d_pad() -> Option<i32> {
    Some(0)
}
fn d_eos() -> Option<EosTokenId> {
    Some(EosTokenId::One(1))
}

/// `eos_token_id` is an int in most configs and a list in some.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EosTokenId {
    One(i32),
    Many(Vec<i32>),
}

impl EosTokenId {
    pub fn ids(&self) -> Vec<i32> {
        match self {
            EosTokenId::One(i) => vec![*i],
            EosTokenId::Many(v) => v.clone(),
        }
    }
}

/// The feed-forward variant (`feed_forward_proj`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedForward {
    /// T5 v1.0: `DenseReluDense.wi` → relu → `wo`.
    Relu,
    /// T5 v1.1 / flan-t5: `gelu_new(wi_0 x) * wi_1 x` → `wo`.
    GatedGelu,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct T5Config {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_model")]
    pub d_model: usize,
    #[serde(default = "d_kv")]
    pub d_kv: usize,
    #[serde(default = "d_ff")]
    pub d_ff: usize,
    #[serde(default = "d_layers")]
    pub num_layers: usize,
    /// Defaults to `num_layers` (see [`T5Config::decoder_layers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_decoder_layers: Option<usize>,
    #[serde(default = "d_heads")]
    pub num_heads: usize,
    #[serde(default = "d_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "d_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "d_dropout")]
    pub dropout_rate: f64,
    #[serde(default = "d_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "d_ff_proj")]
    pub feed_forward_proj: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    /// transformers 5.x records the v1.0/v1.1 output-scaling choice here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_decoder_outputs: Option<bool>,
    #[serde(default = "d_pad")]
    pub pad_token_id: Option<i32>,
    #[serde(default = "d_eos")]
    pub eos_token_id: Option<EosTokenId>,
    /// Absent from hand-built 5.x configs; T5 starts decoding with pad (0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_start_token_id: Option<i32>,
}

impl Default for T5Config {
    /// transformers' `T5Config()` defaults (t5-small sizes).
    fn default() -> Self {
        serde_json::from_str("{}").unwrap_or_else(|_| unreachable!("all fields have defaults"))
    }
}

impl T5Config {
    /// Parse and validate `config.json`; `origin` names the file in errors.
    pub fn from_json_str(s: &str, origin: &str) -> Result<T5Config> {
        let cfg: T5Config = serde_json::from_str(s)
            .map_err(|e| Error::msg(format!("{origin}: not a valid T5 config.json: {e}")))?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Check what the model code relies on; errors name `origin` and the field.
    pub fn validate(&self, origin: &str) -> Result<()> {
        self.feed_forward(origin)?;
        let positive = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_heads", self.num_heads),
            ("num_layers", self.num_layers),
            ("num_decoder_layers", self.decoder_layers()),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
            ),
            (
                "relative_attention_max_distance",
                self.relative_attention_max_distance,
            ),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(Error::msg(format!(
                    "{origin}: field `{field}` is 0; expected a positive integer"
                )));
            }
        }
        if self.relative_attention_num_buckets < 4 {
            return Err(Error::msg(format!(
                "{origin}: field `relative_attention_num_buckets` is {}; expected at least 4 \
                 (half for each direction, half of those exact)",
                self.relative_attention_num_buckets
            )));
        }
        if !(0.0..1.0).contains(&self.dropout_rate) {
            return Err(Error::msg(format!(
                "{origin}: field `dropout_rate` is {}; expected a value in [0, 1)",
                self.dropout_rate
            )));
        }
        if self.layer_norm_epsilon.is_nan() || self.layer_norm_epsilon < 0.0 {
            return Err(Error::msg(format!(
                "{origin}: field `layer_norm_epsilon` is {}; expected a non-negative number",
                self.layer_norm_epsilon
            )));
        }
        Ok(())
    }

    /// The feed-forward variant; anything but "relu" / "gated-gelu" is refused.
    pub fn feed_forward(&self, origin: &str) -> Result<FeedForward> {
        match self.feed_forward_proj.as_str() {
            "relu" => Ok(FeedForward::Relu),
            "gated-gelu" => Ok(FeedForward::GatedGelu),
            other => Err(Error::msg(format!(
                "{origin}: field `feed_forward_proj` is {other:?}; supported: \"relu\" (T5 v1.0) \
                 and \"gated-gelu\" (T5 v1.1 / flan-t5)"
            ))),
        }
    }

    pub fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// Multiply the decoder output by d_model^-0.5 before the LM head? HF 5.x reads
    /// `scale_decoder_outputs`, 4.x `tie_word_embeddings` (T5ForConditionalGeneration.forward).
    pub fn scales_decoder_outputs(&self) -> bool {
        self.scale_decoder_outputs
            .or(self.tie_word_embeddings)
            .unwrap_or(true)
    }

    pub fn pad_id(&self) -> i32 {
        self.pad_token_id.unwrap_or(0)
    }

    pub fn decoder_start_id(&self) -> i32 {
        self.decoder_start_token_id.unwrap_or_else(|| self.pad_id())
    }

    pub fn eos_ids(&self) -> Vec<i32> {
        self.eos_token_id
            .as_ref()
            .map(|e| e.ids())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_rules() {
        let c = T5Config::from_json_str("{}", "test").unwrap();
        assert_eq!((c.d_model, c.num_layers, c.decoder_layers()), (512, 6, 6));
        assert!(c.scales_decoder_outputs());
        let c = T5Config::from_json_str(
            r#"{"num_layers": 2, "num_decoder_layers": 3, "tie_word_embeddings": false,
                "feed_forward_proj": "gated-gelu", "eos_token_id": [1, 2]}"#,
            "test",
        )
        .unwrap();
        assert_eq!(c.decoder_layers(), 3);
        assert!(!c.scales_decoder_outputs());
        assert_eq!(c.feed_forward("t").unwrap(), FeedForward::GatedGelu);
        assert_eq!(c.eos_ids(), vec![1, 2]);
        // 5.x: tie_word_embeddings is always true; scale_decoder_outputs decides.
        let c = T5Config::from_json_str(
            r#"{"tie_word_embeddings": true, "scale_decoder_outputs": false}"#,
            "test",
        )
        .unwrap();
        assert!(!c.scales_decoder_outputs());
    }

    #[test]
    fn unsupported_activation_names_file_and_field() {
        let e = T5Config::from_json_str(r#"{"feed_forward_proj": "gated-silu"}"#, "x/config.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x/config.json") && e.contains("feed_forward_proj"),
            "{e}"
        );
        assert!(e.contains("gated-silu"), "{e}");
    }
}
