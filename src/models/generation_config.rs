//! `GenerateConfig`: the settings of transformers' `GenerationConfig` that
//! `tasks::generate` follows, under HF's field names and with its defaults, and where a
//! model directory keeps them.
//!
//! Where they come from, as transformers 5.x `from_pretrained` + `generate()` read them
//! (`GenerationMixin.adjust_generation_fn`, `_prepare_generation_config`):
//! `generation_config.json` when the directory has one, else the generation fields of
//! `config.json` (`GenerationConfig.from_model_config`); unset fields take the library
//! defaults (`_get_default_generation_params`); arguments given to `generate()` (our
//! command-line flags) override one field each. One leniency: the special ids (eos, pad,
//! decoder start) start from the model's config.json, so a hand-written
//! generation_config.json that omits them still generates (transformers would refuse a
//! missing decoder start, and pad with eos where pad is missing).
//!
//! Settings that change greedy or beam output but are not implemented here
//! (`repetition_penalty`, `suppress_tokens`, sampling, ...) are kept as read and refused
//! by [`GenerateConfig::validate`], naming the field and the file, instead of being
//! silently ignored.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

use super::seq2seq::Seq2SeqLm;

/// transformers' default `max_length` when nothing sets one: 20 new tokens (the decoder
/// start is added on top, `_prepare_generated_length`).
pub const DEFAULT_MAX_NEW_TOKENS: usize = 20;

/// HF's `early_stopping`: `True`, `False` (default) or `"never"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EarlyStopping {
    True,
    False,
    Never,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GenerateConfig {
    /// Total decoder length, decoder start included. `None`: set nowhere, so generate()
    /// makes 20 new tokens (capped at the model's `max_position_embeddings`).
    pub max_length: Option<usize>,
    /// New tokens at most; takes precedence over `max_length`.
    pub max_new_tokens: Option<usize>,
    /// Eos is banned while the sequence (decoder start included) is shorter.
    pub min_length: usize,
    /// Eos is banned until this many tokens are new; takes precedence over `min_length`.
    pub min_new_tokens: Option<usize>,
    pub num_beams: usize,
    /// Finished beams returned per input (at most `num_beams`; 1 for greedy).
    pub num_return_sequences: usize,
    pub length_penalty: f64,
    pub early_stopping: EarlyStopping,
    pub no_repeat_ngram_size: usize,
    /// Token sequences never generated (single tokens always banned, longer ones banned
    /// as their last token after their prefix).
    pub bad_words_ids: Option<Vec<Vec<i32>>>,
    /// The first generated token.
    pub forced_bos_token_id: Option<i32>,
    /// The token(s) forced at `max_length - 1`.
    pub forced_eos_token_id: Option<Vec<i32>>,
    /// log_softmax after the processors (beam scores stay normalised).
    pub renormalize_logits: bool,
    pub eos_token_id: Vec<i32>,
    pub pad_token_id: Option<i32>,
    pub decoder_start_token_id: i32,
    /// Where the settings came from (files, flags), for error messages.
    pub origin: String,
    /// Fields read that are not modelled above (`transformers_version`, sampling
    /// settings, ...): checked by `validate`, written back by `to_json`.
    pub other: Map<String, Value>,
}

/// A setting of transformers' GenerationConfig that changes greedy or beam output and is
/// not implemented, when `v` is not the value that leaves it off.
fn unimplemented(key: &str, v: &Value) -> bool {
    let off = match key {
        "do_sample" | "remove_invalid_values" | "token_healing" => v.is_null() || v == false,
        "repetition_penalty" | "encoder_repetition_penalty" | "guidance_scale" => {
            v.is_null() || v.as_f64() == Some(1.0)
        }
        "encoder_no_repeat_ngram_size" | "diversity_penalty" | "penalty_alpha" => {
            v.is_null() || v.as_f64() == Some(0.0)
        }
        "num_beam_groups" => v.is_null() || v.as_f64() == Some(1.0),
        "suppress_tokens"
        | "begin_suppress_tokens"
        | "sequence_bias"
        | "exponential_decay_length_penalty"
        | "force_words_ids"
        | "constraints"
        | "forced_decoder_ids" => v.is_null() || v.as_array().is_some_and(|a| a.is_empty()),
        _ => return false,
    };
    !off
}

/// The fields `overlay` models, so a config.json's other keys are told apart.
const MODELLED: [&str; 16] = [
    "max_length",
    "max_new_tokens",
    "min_length",
    "min_new_tokens",
    "num_beams",
    "num_return_sequences",
    "length_penalty",
    "early_stopping",
    "no_repeat_ngram_size",
    "bad_words_ids",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "renormalize_logits",
    "eos_token_id",
    "pad_token_id",
    "decoder_start_token_id",
];

impl GenerateConfig {
    /// transformers' defaults (greedy, 20 new tokens) with the model's special ids.
    pub fn with_special_tokens(
        decoder_start_token_id: i32,
        eos_token_id: Vec<i32>,
        pad_token_id: Option<i32>,
    ) -> GenerateConfig {
        GenerateConfig {
            max_length: None,
            max_new_tokens: None,
            min_length: 0,
            min_new_tokens: None,
            num_beams: 1,
            num_return_sequences: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::False,
            no_repeat_ngram_size: 0,
            bad_words_ids: None,
            forced_bos_token_id: None,
            forced_eos_token_id: None,
            renormalize_logits: false,
            eos_token_id,
            pad_token_id,
            decoder_start_token_id,
            origin: "transformers' generation defaults".into(),
            other: Map::new(),
        }
    }

    /// transformers' defaults with `model`'s special ids (not its own configuration:
    /// that is `model.generation_config()`).
    pub fn for_model(model: &dyn Seq2SeqLm) -> GenerateConfig {
        GenerateConfig::with_special_tokens(
            model.decoder_start_token_id(),
            model.eos_token_ids(),
            Some(model.pad_token_id()),
        )
    }

    /// Overlay HF generation fields (a generation_config.json, or `generate()` keyword
    /// arguments) on `self`: each field present and not null replaces ours. `origin`
    /// names the source in errors and is added to `self.origin`. Fields not modelled are
    /// kept in `other`.
    pub fn overlay_json(self, v: &Value, origin: &str) -> Result<Self> {
        self.overlay(v, origin, true)
    }

    /// `self` overlaid with the generation fields of a model's config.json (HF
    /// `GenerationConfig.from_model_config`): its other keys are not generation settings.
    pub fn from_model_config(self, config: &Value, origin: &str) -> Result<Self> {
        self.overlay(config, origin, false)
    }

    /// The model directory's settings over `base` (the model's special ids): its
    /// generation_config.json when present, else the generation fields of its config.json
    /// (`config`, as read).
    pub fn from_model_dir(base: GenerateConfig, dir: &Path, config: &Value) -> Result<Self> {
        let p = dir.join("generation_config.json");
        let base = GenerateConfig {
            origin: String::new(),
            ..base
        };
        if !p.is_file() {
            let origin = dir.join("config.json").display().to_string();
            return base.from_model_config(config, &origin);
        }
        let text = crate::text::read_text(&p)?;
        let origin = p.display().to_string();
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::msg(format!("{origin}: invalid JSON: {e}")))?;
        if !v.is_object() {
            return Err(Error::msg(format!(
                "{origin}: expected a JSON object of generation settings"
            )));
        }
        base.overlay_json(&v, &origin)
    }

    /// Record that `what` (e.g. a flag) changed settings, for error messages.
    pub fn overridden_by(&mut self, what: &str) {
        self.origin = if self.origin.is_empty() {
            what.to_string()
        } else {
            format!("{} overridden by {what}", self.origin)
        };
    }

    fn overlay(mut self, v: &Value, origin: &str, keep_other: bool) -> Result<Self> {
        let bad = |field: &str, want: &str| {
            Error::msg(format!("{origin}: field `{field}`: expected {want}"))
        };
        let get = |k: &str| v.get(k).filter(|x| !x.is_null());
        let uint = |k: &str| -> Result<Option<usize>> {
            get(k)
                .map(|x| {
                    x.as_u64()
                        .map(|n| n as usize)
                        .ok_or_else(|| bad(k, "a non-negative integer"))
                })
                .transpose()
        };
        let id = |x: &Value, k: &str| -> Result<i32> {
            x.as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| bad(k, "an integer token id"))
        };
        // An id or a list of ids (HF accepts both for eos and forced eos).
        let ids = |k: &str| -> Result<Option<Vec<i32>>> {
            get(k)
                .map(|x| match x {
                    Value::Array(a) => a.iter().map(|t| id(t, k)).collect(),
                    t => Ok(vec![id(t, k)?]),
                })
                .transpose()
        };
        self.max_length = uint("max_length")?.or(self.max_length);
        self.max_new_tokens = uint("max_new_tokens")?.or(self.max_new_tokens);
        self.min_length = uint("min_length")?.unwrap_or(self.min_length);
        self.min_new_tokens = uint("min_new_tokens")?.or(self.min_new_tokens);
        self.num_beams = uint("num_beams")?.unwrap_or(self.num_beams);
        self.num_return_sequences =
            uint("num_return_sequences")?.unwrap_or(self.num_return_sequences);
        self.no_repeat_ngram_size =
            uint("no_repeat_ngram_size")?.unwrap_or(self.no_repeat_ngram_size);
        if let Some(x) = get("length_penalty") {
            self.length_penalty = x
                .as_f64()
                .ok_or_else(|| bad("length_penalty", "a number"))?;
        }
        if let Some(x) = get("early_stopping") {
            self.early_stopping = match x {
                Value::Bool(true) => EarlyStopping::True,
                Value::Bool(false) => EarlyStopping::False,
                Value::String(s) if s == "never" => EarlyStopping::Never,
                _ => return Err(bad("early_stopping", "true, false or \"never\"")),
            };
        }
        if let Some(x) = get("renormalize_logits") {
            self.renormalize_logits = x
                .as_bool()
                .ok_or_else(|| bad("renormalize_logits", "true or false"))?;
        }
        if let Some(x) = get("bad_words_ids") {
            let want = "a list of token id lists, e.g. [[5], [7, 8]]";
            let rows = x.as_array().ok_or_else(|| bad("bad_words_ids", want))?;
            let parsed = rows
                .iter()
                .map(|r| {
                    r.as_array()
                        .ok_or_else(|| bad("bad_words_ids", want))?
                        .iter()
                        .map(|t| id(t, "bad_words_ids"))
                        .collect::<Result<Vec<i32>>>()
                })
                .collect::<Result<_>>()?;
            self.bad_words_ids = Some(parsed);
        }
        if let Some(x) = get("forced_bos_token_id") {
            self.forced_bos_token_id = Some(id(x, "forced_bos_token_id")?);
        }
        self.forced_eos_token_id = ids("forced_eos_token_id")?.or(self.forced_eos_token_id);
        if let Some(e) = ids("eos_token_id")? {
            self.eos_token_id = e;
        }
        if let Some(x) = get("pad_token_id") {
            self.pad_token_id = Some(id(x, "pad_token_id")?);
        }
        if let Some(x) = get("decoder_start_token_id") {
            self.decoder_start_token_id = id(x, "decoder_start_token_id")?;
        }
        if let Some(m) = v.as_object() {
            for (k, x) in m {
                if MODELLED.contains(&k.as_str()) {
                    continue;
                }
                if keep_other || unimplemented(k, x) {
                    self.other.insert(k.clone(), x.clone());
                }
            }
        }
        self.overridden_by(origin);
        Ok(self)
    }

    /// The decoder length generation stops at (decoder start included), as generate()
    /// computes it: `1 + max_new_tokens`, else `max_length`, else 20 new tokens capped at
    /// the model's `max_position_embeddings` (T5 has none).
    pub fn total_max_length(&self, max_position_embeddings: Option<usize>) -> usize {
        match (self.max_new_tokens, self.max_length) {
            (Some(n), _) => n.saturating_add(1),
            (None, Some(l)) => l,
            (None, None) => {
                let l = DEFAULT_MAX_NEW_TOKENS + 1;
                max_position_embeddings.map_or(l, |p| l.min(p))
            }
        }
    }

    /// The length (decoder start included) below which eos is banned: `min_new_tokens`
    /// takes precedence over `min_length`, as in `_prepare_generated_length`.
    pub fn total_min_length(&self) -> usize {
        match self.min_new_tokens {
            Some(n) => n.saturating_add(1),
            None => self.min_length,
        }
    }

    /// Refuse settings generate() cannot follow for a model of `vocab` tokens, naming the
    /// field and where it came from.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        let fail = |msg: String| Err(Error::msg(format!("generate: {msg} ({})", self.origin)));
        if let Some((k, v)) = self.other.iter().find(|(k, v)| unimplemented(k, v)) {
            return fail(format!(
                "`{k}` = {v} is not implemented by fusebox's generate() (greedy and beam \
                 search with {}); remove it or set it to its default",
                MODELLED.join(", ")
            ));
        }
        if self.num_beams == 0 {
            return fail("num_beams must be at least 1".into());
        }
        if self.num_beams > vocab {
            return fail(format!(
                "num_beams {} exceeds the vocabulary ({vocab} tokens): each beam needs a \
                 distinct continuation",
                self.num_beams
            ));
        }
        let nrs = self.num_return_sequences;
        if nrs == 0 {
            return fail("num_return_sequences must be at least 1".into());
        }
        if nrs > 1 && self.num_beams == 1 {
            return fail(format!(
                "num_return_sequences {nrs} needs beam search: greedy search returns one \
                 sequence per input (set num_beams >= {nrs})"
            ));
        }
        if nrs > self.num_beams {
            return fail(format!(
                "num_return_sequences ({nrs}) has to be smaller or equal to num_beams ({})",
                self.num_beams
            ));
        }
        if self.max_new_tokens == Some(0) {
            return fail("max_new_tokens must be greater than 0".into());
        }
        if self.max_new_tokens.is_none() && self.max_length.is_some_and(|l| l < 2) {
            return fail(format!(
                "max_length {} leaves no room for a new token after the decoder start \
                 (set max_length >= 2 or max_new_tokens)",
                self.max_length.unwrap_or(0)
            ));
        }
        if !self.length_penalty.is_finite() {
            return fail(format!(
                "length_penalty must be a finite number, got {}",
                self.length_penalty
            ));
        }
        let outside = |id: i32| id < 0 || id as usize >= vocab;
        let singles = [
            ("decoder_start_token_id", Some(self.decoder_start_token_id)),
            ("pad_token_id", self.pad_token_id),
            ("forced_bos_token_id", self.forced_bos_token_id),
        ];
        let lists: [(&str, &[i32]); 2] = [
            ("eos_token_id", &self.eos_token_id),
            (
                "forced_eos_token_id",
                self.forced_eos_token_id.as_deref().unwrap_or_default(),
            ),
        ];
        let all = singles
            .iter()
            .filter_map(|(f, i)| i.map(|i| (*f, i)))
            .chain(
                lists
                    .iter()
                    .flat_map(|(f, l)| l.iter().map(move |&i| (*f, i))),
            );
        for (field, id) in all {
            if outside(id) {
                let also = if field == "eos_token_id" && self.pad_token_id.is_none() {
                    " (also used as padding: no pad_token_id)"
                } else {
                    ""
                };
                return fail(format!(
                    "{field} {id}{also} is not a token of the model (vocab_size {vocab})"
                ));
            }
        }
        if let Some(bad) = &self.bad_words_ids {
            if bad.is_empty() || bad.iter().any(|w| w.is_empty()) {
                return fail(format!(
                    "bad_words_ids must be a non-empty list of non-empty token id lists, got \
                     {bad:?}"
                ));
            }
            if let Some(&id) = bad.iter().flatten().find(|&&t| outside(t)) {
                return fail(format!(
                    "bad_words_ids holds {id}, not a token of the model (vocab_size {vocab})"
                ));
            }
        }
        Ok(())
    }

    /// generation_config.json as `save_pretrained` writes it: the special ids, every
    /// setting that differs from transformers' defaults, and the other fields as read.
    pub fn to_json(&self) -> Value {
        let mut m = self.other.clone();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        let one_or_list = |l: &[i32]| match l {
            [one] => Value::from(*one),
            _ => Value::from(l.to_vec()),
        };
        put("decoder_start_token_id", self.decoder_start_token_id.into());
        if !self.eos_token_id.is_empty() {
            put("eos_token_id", one_or_list(&self.eos_token_id));
        }
        if let Some(p) = self.pad_token_id {
            put("pad_token_id", p.into());
        }
        let d = GenerateConfig::with_special_tokens(0, Vec::new(), None);
        let opt = |x: Option<usize>| x.map(Value::from);
        let unless = |x: usize, default: usize| (x != default).then(|| Value::from(x));
        let fields: [(&str, Option<Value>); 13] = [
            ("max_length", opt(self.max_length)),
            ("max_new_tokens", opt(self.max_new_tokens)),
            ("min_length", unless(self.min_length, d.min_length)),
            ("min_new_tokens", opt(self.min_new_tokens)),
            ("num_beams", unless(self.num_beams, d.num_beams)),
            (
                "num_return_sequences",
                unless(self.num_return_sequences, d.num_return_sequences),
            ),
            (
                "length_penalty",
                (self.length_penalty != d.length_penalty).then(|| self.length_penalty.into()),
            ),
            (
                "early_stopping",
                match self.early_stopping {
                    EarlyStopping::False => None,
                    EarlyStopping::True => Some(true.into()),
                    EarlyStopping::Never => Some("never".into()),
                },
            ),
            (
                "no_repeat_ngram_size",
                unless(self.no_repeat_ngram_size, d.no_repeat_ngram_size),
            ),
            (
                "bad_words_ids",
                self.bad_words_ids.as_ref().map(|b| serde_json::json!(b)),
            ),
            (
                "forced_bos_token_id",
                self.forced_bos_token_id.map(Value::from),
            ),
            (
                "forced_eos_token_id",
                self.forced_eos_token_id.as_deref().map(one_or_list),
            ),
            (
                "renormalize_logits",
                self.renormalize_logits.then_some(Value::Bool(true)),
            ),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                put(k, v);
            }
        }
        Value::Object(m)
    }
}

#[cfg(test)]
#[path = "generation_config_tests.rs"]
mod tests;
