//! `GenerateConfig`: transformers' generation settings (`generation_config.json`) that
//! `tasks::generate` follows, with HF's defaults and field names.

use crate::error::{Error, Result};
use crate::models::t5::T5Config;

/// HF's `early_stopping`: `True`, `False` (default) or `"never"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EarlyStopping {
    True,
    False,
    Never,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GenerateConfig {
    /// Overrides `max_length` (as `1 + max_new_tokens`, the decoder start counting).
    pub max_new_tokens: Option<usize>,
    /// Total decoder length including the start token (HF default 20).
    pub max_length: usize,
    /// Eos is banned while the sequence (start token included) is shorter.
    pub min_length: usize,
    pub num_beams: usize,
    pub length_penalty: f64,
    pub early_stopping: EarlyStopping,
    pub no_repeat_ngram_size: usize,
    pub eos_token_id: Vec<i32>,
    pub pad_token_id: Option<i32>,
    pub decoder_start_token_id: i32,
}

impl GenerateConfig {
    /// transformers' defaults with the model's special tokens (greedy, max_length 20).
    pub fn for_model(cfg: &T5Config) -> GenerateConfig {
        GenerateConfig {
            max_new_tokens: None,
            max_length: 20,
            min_length: 0,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::False,
            no_repeat_ngram_size: 0,
            eos_token_id: cfg.eos_ids(),
            pad_token_id: cfg.pad_token_id,
            decoder_start_token_id: cfg.decoder_start_id(),
        }
    }

    /// Overlay the generation fields of an HF `generation_config.json` (or a
    /// config.json's `task_specific_params` entry) on `self`; `origin` names the source
    /// in errors. Unknown fields are ignored, as sampling options we do not implement.
    pub fn overlay_json(mut self, v: &serde_json::Value, origin: &str) -> Result<Self> {
        let bad = |field: &str, want: &str| {
            Error::msg(format!("{origin}: field `{field}`: expected {want}"))
        };
        let uint = |field: &str| -> Result<Option<usize>> {
            match v.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(x) => x
                    .as_u64()
                    .map(|n| Some(n as usize))
                    .ok_or_else(|| bad(field, "a non-negative integer")),
            }
        };
        if let Some(n) = uint("max_new_tokens")? {
            self.max_new_tokens = Some(n);
        }
        if let Some(n) = uint("max_length")? {
            self.max_length = n;
        }
        if let Some(n) = uint("min_length")? {
            self.min_length = n;
        }
        if let Some(n) = uint("num_beams")? {
            self.num_beams = n;
        }
        if let Some(n) = uint("no_repeat_ngram_size")? {
            self.no_repeat_ngram_size = n;
        }
        if let Some(x) = v.get("length_penalty").filter(|x| !x.is_null()) {
            self.length_penalty = x
                .as_f64()
                .ok_or_else(|| bad("length_penalty", "a number"))?;
        }
        match v.get("early_stopping") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Bool(true)) => self.early_stopping = EarlyStopping::True,
            Some(serde_json::Value::Bool(false)) => self.early_stopping = EarlyStopping::False,
            Some(serde_json::Value::String(s)) if s == "never" => {
                self.early_stopping = EarlyStopping::Never
            }
            Some(_) => return Err(bad("early_stopping", "true, false or \"never\"")),
        }
        let int = |x: &serde_json::Value, field: &str| -> Result<i32> {
            x.as_i64()
                .map(|n| n as i32)
                .ok_or_else(|| bad(field, "an integer token id"))
        };
        match v.get("eos_token_id") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Array(a)) => {
                self.eos_token_id = a
                    .iter()
                    .map(|x| int(x, "eos_token_id"))
                    .collect::<Result<_>>()?
            }
            Some(x) => self.eos_token_id = vec![int(x, "eos_token_id")?],
        }
        if let Some(x) = v.get("pad_token_id").filter(|x| !x.is_null()) {
            self.pad_token_id = Some(int(x, "pad_token_id")?);
        }
        if let Some(x) = v.get("decoder_start_token_id").filter(|x| !x.is_null()) {
            self.decoder_start_token_id = int(x, "decoder_start_token_id")?;
        }
        if v.get("do_sample").and_then(|x| x.as_bool()) == Some(true) {
            return Err(bad("do_sample", "false (sampling is not implemented)"));
        }
        Ok(self)
    }

    /// `for_model` overlaid with `dir/generation_config.json` when the file exists.
    pub fn from_model_dir(cfg: &T5Config, dir: &std::path::Path) -> Result<Self> {
        let base = GenerateConfig::for_model(cfg);
        let p = dir.join("generation_config.json");
        if !p.exists() {
            return Ok(base);
        }
        let text = crate::text::read_text(&p)?;
        let text = text.as_str();
        let origin = p.display().to_string();
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::msg(format!("{origin}: invalid JSON: {e}")))?;
        base.overlay_json(&v, &origin)
    }

    /// The decoder length generation stops at (start token included).
    pub(crate) fn total_max_length(&self) -> usize {
        match self.max_new_tokens {
            Some(n) => 1 + n,
            None => self.max_length,
        }
    }
}
