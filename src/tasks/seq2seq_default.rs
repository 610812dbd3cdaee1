//! The built-in `train summarize` / `train translate` runs: a generated dataset (see
//! data/synth.rs) written as JSONL, a word-level tokenizer trained on it, and a small T5 built
//! from scratch, sized to learn in minutes on two CPU cores.

use std::path::Path;

use crate::data::seq2seq::Seq2SeqExample;
use crate::data::synth;
use crate::error::{Error, Result};
use crate::models::bart::{BartConfig, Family};
use crate::models::t5::T5Config;
use crate::tasks::seq2seq_train::Seq2SeqKind;

/// A generator of (source, target) rows from (seed, count).
type Generator = fn(u64, usize) -> Vec<(String, String)>;

/// Train/eval rows of the built-in task, also written to `dir/data/{train,eval}.jsonl`.
pub fn dataset(
    kind: Seq2SeqKind,
    seed: u64,
    n_train: usize,
    n_eval: usize,
    dir: &Path,
) -> Result<(Vec<Seq2SeqExample>, Vec<Seq2SeqExample>)> {
    let (prefix, make): (&str, Generator) = match kind {
        Seq2SeqKind::Summarize => ("summarize: ", synth::summarize_dataset),
        Seq2SeqKind::Translate => ("translate English to Toy: ", synth::translate_dataset),
    };
    let to_ex = |rows: Vec<(String, String)>| -> Vec<Seq2SeqExample> {
        rows.into_iter()
            .map(|(s, t)| Seq2SeqExample {
                source: format!("{prefix}{s}"),
                target: t,
            })
            .collect()
    };
    let train = to_ex(make(seed, n_train));
    // A different seed: held-out rows, not a slice of the training stream.
    let eval = to_ex(make(seed.wrapping_add(1_000_003), n_eval));
    let data = dir.join("data");
    std::fs::create_dir_all(&data).map_err(|e| Error::io(&data, e))?;
    for (name, rows) in [("train.jsonl", &train), ("eval.jsonl", &eval)] {
        let p = data.join(name);
        let text: String = rows
            .iter()
            .map(|r| serde_json::json!({"source": r.source, "target": r.target}).to_string() + "\n")
            .collect();
        std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
    }
    Ok((train, eval))
}

/// A small T5 v1.0 (ReLU, tied head) for the built-in tasks.
pub fn small_config(vocab: usize) -> T5Config {
    T5Config {
        vocab_size: vocab,
        d_model: 128,
        d_kv: 32,
        num_heads: 4,
        d_ff: 256,
        num_layers: 2,
        num_decoder_layers: Some(2),
        relative_attention_num_buckets: 16,
        relative_attention_max_distance: 64,
        dropout_rate: 0.0,
        decoder_start_token_id: Some(0),
        ..T5Config::default()
    }
}

/// A BART or Marian of the same size as [`small_config`], for `--model scratch --arch
/// bart|marian` on the word-level tokenizer (pad 0, eos 1): BART starts decoding from eos,
/// Marian from pad, as their checkpoints do; `positions` is `max_position_embeddings`.
pub fn small_bart_config(family: Family, vocab: usize, positions: usize) -> Result<BartConfig> {
    let (start, act, scale) = match family {
        Family::Bart => (1, "gelu", false),
        Family::Marian => (0, "swish", true),
    };
    let raw = serde_json::json!({
        "model_type": family.model_type(), "vocab_size": vocab,
        "max_position_embeddings": positions, "d_model": 128,
        "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
        "decoder_attention_heads": 4, "encoder_ffn_dim": 256, "decoder_ffn_dim": 256,
        "activation_function": act, "dropout": 0.0, "scale_embedding": scale,
        "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": null,
        "decoder_start_token_id": start, "forced_eos_token_id": null,
    });
    BartConfig::from_value(&raw, "the built-in small configuration")
}
