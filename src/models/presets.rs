//! Built-in public configurations: the sizes of each model's `config.json` on the
//! Hugging Face hub, written into the crate so the planner and `bench` can build the
//! model (random weights) without a download. `--model NAME` in `bench`, and in
//! `train ... --plan`, names one of them.

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::models::bart::BartConfig;
use crate::models::step::ModelConfig;
use crate::models::t5::T5Config;

/// The names [`preset`] knows, in the order of the README's table.
pub const PRESETS: [&str; 9] = [
    "t5-small",
    "flan-t5-small",
    "t5-base",
    "bart-base",
    "bart-large-cnn",
    "t5-large",
    "flan-t5-large",
    "flan-t5-base",
    "opus-mt-en-id",
];

/// A T5 `config.json`'s sizes. The original T5 (t5-small, t5-base, t5-large): ReLU
/// feed-forward, lm_head tied to the shared embedding (scaled by d_model^-0.5). T5 v1.1
/// and FLAN-T5: gated-GELU feed-forward and an lm_head of its own.
fn t5(d_model: usize, d_ff: usize, layers: usize, heads: usize, flan: bool) -> Value {
    json!({
        "model_type": "t5", "vocab_size": 32128, "d_model": d_model, "d_kv": 64,
        "d_ff": d_ff, "num_layers": layers, "num_decoder_layers": layers,
        "num_heads": heads, "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128, "dropout_rate": 0.1,
        "layer_norm_epsilon": 1e-6,
        "feed_forward_proj": if flan { "gated-gelu" } else { "relu" },
        "tie_word_embeddings": !flan
    })
}

/// The configuration of `name`, `None` for a name that is not built in.
pub fn preset(name: &str) -> Result<Option<ModelConfig>> {
    let raw = match name {
        "t5-small" => t5(512, 2048, 6, 8, false),
        "t5-base" => t5(768, 3072, 12, 12, false),
        "t5-large" => t5(1024, 4096, 24, 16, false),
        "flan-t5-small" => t5(512, 1024, 8, 6, true),
        "flan-t5-base" => t5(768, 2048, 12, 12, true),
        "flan-t5-large" => t5(1024, 2816, 24, 16, true),
        "bart-base" => json!({
            "model_type": "bart", "vocab_size": 50265, "d_model": 768,
            "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 12,
            "decoder_attention_heads": 12, "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072,
            "max_position_embeddings": 1024
        }),
        // transformers' BartConfig defaults are bart-large's sizes (d_model 1024, 12+12
        // layers, 16 heads, ffn 4096, 1024 positions).
        "bart-large-cnn" => json!({
            "model_type": "bart", "vocab_size": 50264, "forced_bos_token_id": 0
        }),
        "opus-mt-en-id" => json!({
            "model_type": "marian", "vocab_size": 54796, "d_model": 512,
            "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 8,
            "decoder_attention_heads": 8, "encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048,
            "activation_function": "swish", "scale_embedding": true,
            "max_position_embeddings": 512, "pad_token_id": 54795,
            "decoder_start_token_id": 54795, "eos_token_id": 0, "forced_eos_token_id": 0
        }),
        _ => return Ok(None),
    };
    let origin = format!("the built-in {name} configuration");
    Ok(Some(match raw["model_type"].as_str() {
        Some("t5") => ModelConfig::T5(T5Config::from_json_str(&raw.to_string(), &origin)?),
        _ => ModelConfig::Bart(BartConfig::from_value(&raw, &origin)?),
    }))
}

/// [`preset`], or an error naming `flag` and listing the built-in names.
pub fn require(name: &str, flag: &str) -> Result<ModelConfig> {
    preset(name)?.ok_or_else(|| {
        Error::msg(format!(
            "{flag} {name:?}: not a built-in configuration; expected one of {}",
            PRESETS.join(", ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name builds, with the public sizes: parameter counts as the hub reports
    /// them (t5-small 60.5 M, t5-base 222.9 M, t5-large 737.7 M, flan-t5-small 77.0 M,
    /// flan-t5-large 783.2 M; bart-base 139.4 M, bart-large-cnn 406.3 M).
    #[test]
    fn presets_build_with_public_sizes() {
        for name in PRESETS {
            assert!(preset(name).expect(name).is_some(), "{name}");
        }
        assert!(preset("t5-huge").expect("no error").is_none());
        let e = require("t5-huge", "--model")
            .expect_err("unknown")
            .to_string();
        assert!(e.contains("t5-huge") && e.contains("flan-t5-large"), "{e}");
        let ModelConfig::T5(c) = require("flan-t5-large", "--model").expect("flan") else {
            panic!("flan-t5-large is a T5");
        };
        assert_eq!(
            (c.d_model, c.d_ff, c.num_layers, c.num_heads),
            (1024, 2816, 24, 16)
        );
        assert_eq!(c.feed_forward_proj, "gated-gelu");
        assert_eq!(c.tie_word_embeddings, Some(false));
        let ModelConfig::Bart(b) = require("bart-large-cnn", "--model").expect("bart") else {
            panic!("bart-large-cnn is a BART");
        };
        assert_eq!(
            (b.d_model, b.encoder_layers, b.vocab_size),
            (1024, 12, 50264)
        );
    }
}
