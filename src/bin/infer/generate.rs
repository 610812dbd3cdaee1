//! `infer generate`: an encoder-decoder LM (T5) generating as transformers' `generate()`
//! does. With no flags it uses the model's own generation configuration (its
//! generation_config.json, else config.json, over transformers' defaults), as
//! `model.generate(**inputs)` does; each flag (generate()'s argument names) overrides
//! that one setting. A run that never emits eos stops at the model's length limit: its
//! `max_position_embeddings`, or for T5 (relative positions) config.json's `n_positions`
//! (512 when absent) or a larger `max_length` of its own configuration; a longer request
//! is capped, and stderr says so.
//!
//! Output: one line per input line. With `--json`, `{"text", "tokens"}` (plus "score",
//! HF's `sequences_scores`, with beams); with `--num-return-sequences N > 1`, a JSON list
//! of N such objects, best first (as a pipeline returns a list per input); as text, N
//! lines per input.

use anyhow::Result;
use clap::Args as ClapArgs;
use serde_json::{json, Value};

use crate::text2text::{Text2Text, Text2TextArgs};

/// Input tokens kept when --max-source-length is not given.
const MAX_SOURCE_LENGTH: usize = 512;

#[derive(ClapArgs, Debug)]
pub(crate) struct GenArgs {
    #[command(flatten)]
    common: Text2TextArgs,
    /// Prepended to every input (e.g. "summarize: ").
    #[arg(long, default_value = "")]
    prefix: String,
}

pub(crate) fn run(a: GenArgs) -> Result<()> {
    let a_ = &a.common;
    let t = Text2Text::load(a_, "generate")?;
    let cfg = a_
        .gen
        .overlay(t.model.generation_config(), "the model's", "generate")?;
    let cfg = t.finish(cfg)?;
    let max_source = a_.max_source_length.unwrap_or(MAX_SOURCE_LENGTH);
    t.run_inputs(a_, &a.prefix, Some(max_source), &cfg, |hyps| {
        let mut rows: Vec<Value> = hyps
            .into_iter()
            .map(|h| {
                let mut v = json!({"text": h.text, "tokens": h.tokens});
                if let Some(s) = h.score {
                    v["score"] = json!(s);
                }
                v
            })
            .collect();
        match rows.len() {
            1 => rows.remove(0),
            _ => Value::Array(rows),
        }
    })
}
