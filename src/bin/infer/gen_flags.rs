//! generate()'s arguments as command-line flags (HF names, kebab-cased), shared by
//! `infer generate`, `infer summarize` and `infer translate`: each flag given overrides
//! that one setting of the command's base settings (the model's generation configuration
//! for `generate`, the pipeline's for `summarize` / `translate`), read through the same
//! parser as generation_config.json.

use std::path::Path;

use anyhow::{bail, Result};
use clap::{Args as ClapArgs, ValueEnum};
use serde_json::Value;

use fusebox::tasks::generate::GenerateConfig;

/// generate()'s `early_stopping`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum EarlyStoppingArg {
    True,
    False,
    Never,
}

#[derive(ClapArgs, Debug)]
pub(crate) struct GenFlags {
    /// Beams (1 = greedy search).
    #[arg(long)]
    num_beams: Option<usize>,
    /// New tokens at most (takes precedence over --max-length, as in generate()).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Decoder length at most, the decoder start token included.
    #[arg(long)]
    max_length: Option<usize>,
    /// Eos is banned while the output (decoder start included) is shorter.
    #[arg(long)]
    min_length: Option<usize>,
    /// Eos is banned until this many new tokens (takes precedence over --min-length).
    #[arg(long)]
    min_new_tokens: Option<usize>,
    /// Beam scores are divided by length**length_penalty.
    #[arg(long, allow_negative_numbers = true)]
    length_penalty: Option<f64>,
    /// No n-gram of this size appears twice.
    #[arg(long)]
    no_repeat_ngram_size: Option<usize>,
    /// Beam search stops: true (when num_beams are finished), false (heuristic), never.
    #[arg(long, value_enum)]
    early_stopping: Option<EarlyStoppingArg>,
    /// Sequences returned per input, best first (beam search; at most --num-beams).
    #[arg(long)]
    num_return_sequences: Option<usize>,
}

impl GenFlags {
    /// The values checked on their own, naming the flag.
    pub(crate) fn check(&self, vocab: usize, cfg_path: &Path) -> Result<()> {
        match self.num_beams {
            Some(0) => bail!("--num-beams must be at least 1"),
            Some(n) if n > vocab => bail!(
                "--num-beams {n} exceeds the model's vocabulary ({vocab} tokens, {} vocab_size): each beam needs a distinct continuation",
                cfg_path.display()
            ),
            _ => {}
        }
        if self.max_new_tokens == Some(0) {
            bail!("--max-new-tokens must be at least 1");
        }
        if let Some(n) = self.max_length.filter(|&n| n < 2) {
            bail!("--max-length {n} leaves no room for a new token: it counts the decoder start token, so it must be at least 2");
        }
        if let Some(x) = self.length_penalty.filter(|x| !x.is_finite()) {
            bail!("--length-penalty must be a finite number (HF's default is 1.0), got {x}");
        }
        if self.num_return_sequences == Some(0) {
            bail!("--num-return-sequences must be at least 1");
        }
        Ok(())
    }

    /// `base` with each flag given overriding its one setting. `whose` names the base in
    /// messages ("the model's", "the pipeline's"), `cmd` the command warning on stderr.
    pub(crate) fn overlay(
        &self,
        base: &GenerateConfig,
        whose: &str,
        cmd: &str,
    ) -> Result<GenerateConfig> {
        let early = self.early_stopping.map(|e| match e {
            EarlyStoppingArg::True => Value::from(true),
            EarlyStoppingArg::False => Value::from(false),
            EarlyStoppingArg::Never => Value::from("never"),
        });
        let n = |x: Option<usize>| x.map(Value::from);
        // generate()'s argument names; each flag is its name kebab-cased.
        let fields = [
            ("num_beams", n(self.num_beams)),
            ("max_new_tokens", n(self.max_new_tokens)),
            ("max_length", n(self.max_length)),
            ("min_length", n(self.min_length)),
            ("min_new_tokens", n(self.min_new_tokens)),
            ("length_penalty", self.length_penalty.map(Value::from)),
            ("no_repeat_ngram_size", n(self.no_repeat_ngram_size)),
            ("early_stopping", early),
            ("num_return_sequences", n(self.num_return_sequences)),
        ];
        let given: Vec<(String, &str, Value)> = fields
            .into_iter()
            .filter_map(|(field, v)| {
                v.map(|v| (format!("--{}", field.replace('_', "-")), field, v))
            })
            .collect();
        let cfg = if given.is_empty() {
            base.clone()
        } else {
            let names: Vec<&str> = given.iter().map(|g| g.0.as_str()).collect();
            let v: serde_json::Map<String, Value> = given
                .iter()
                .map(|(_, field, v)| (field.to_string(), v.clone()))
                .collect();
            base.clone()
                .overlay_json(&Value::Object(v), &names.join(", "))?
        };
        let from = |flag: bool, name: &str| match flag {
            true => name.to_string(),
            false => format!("{whose}, {}", base.origin),
        };
        let nrs = cfg.num_return_sequences;
        if nrs > cfg.num_beams {
            let what = match self.num_return_sequences {
                Some(_) => format!("--num-return-sequences {nrs}"),
                None => format!("num_return_sequences {nrs} ({})", from(false, "")),
            };
            let beams = match self.num_beams {
                Some(_) => "--num-beams".to_string(),
                None => format!("{whose} num_beams ({})", base.origin),
            };
            bail!(
                "{what} needs beam search with at least {nrs} beams, and {beams} is {}: give \
                 --num-beams {nrs} or more (generate() returns finished beams)",
                cfg.num_beams
            );
        }
        // generate()'s precedence: a flag that another setting outranks says so.
        if let (Some(l), Some(n)) = (self.max_length, cfg.max_new_tokens) {
            let by = from(self.max_new_tokens.is_some(), "--max-new-tokens");
            eprintln!("infer {cmd}: --max-length {l} has no effect: max_new_tokens {n} ({by}) takes precedence, as in generate()");
        }
        if let (Some(l), Some(n)) = (self.min_length, cfg.min_new_tokens) {
            let by = from(self.min_new_tokens.is_some(), "--min-new-tokens");
            eprintln!("infer {cmd}: --min-length {l} has no effect: min_new_tokens {n} ({by}) takes precedence, as in generate()");
        }
        Ok(cfg)
    }
}
