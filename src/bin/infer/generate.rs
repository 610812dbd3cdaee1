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

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args as ClapArgs, ValueEnum};
use serde_json::{json, Value};

use fusebox::models::auto::load_seq2seq_lm;
use fusebox::models::hf::config_text;
use fusebox::models::seq2seq::Seq2SeqLm;
use fusebox::tasks::generate::{generate, GenerateConfig};
use fusebox::tasks::seq2seq_train::encode;
use fusebox::tensor::Tensor;
use fusebox::tokenize::load_tokenizer_json;
use fusebox::{DType, Device};

/// generate()'s `early_stopping`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum EarlyStoppingArg {
    True,
    False,
    Never,
}

#[derive(ClapArgs, Debug)]
#[command(group(ArgGroup::new("inputs").required(true).args(["input", "file"])))]
pub(crate) struct GenArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// One input text.
    #[arg(long, conflicts_with = "file")]
    input: Option<String>,
    /// One input per line.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Prepended to every input (e.g. "summarize: ").
    #[arg(long, default_value = "")]
    prefix: String,
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
    /// Inputs longer than this many tokens are cut (eos kept).
    #[arg(long, default_value_t = 512)]
    max_source_length: usize,
    /// One JSON value per input: {"text", "tokens"} (and "score" with beams), or a list
    /// of them with --num-return-sequences > 1.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "auto")]
    device: String,
}

/// The flags' values checked on their own, naming the flag.
fn check_flags(a: &GenArgs, vocab: usize, cfg_path: &Path) -> Result<()> {
    match a.num_beams {
        Some(0) => bail!("--num-beams must be at least 1"),
        Some(n) if n > vocab => bail!(
            "--num-beams {n} exceeds the model's vocabulary ({vocab} tokens, {} vocab_size): each beam needs a distinct continuation",
            cfg_path.display()
        ),
        _ => {}
    }
    if a.max_new_tokens == Some(0) {
        bail!("--max-new-tokens must be at least 1");
    }
    if let Some(n) = a.max_length.filter(|&n| n < 2) {
        bail!("--max-length {n} leaves no room for a new token: it counts the decoder start token, so it must be at least 2");
    }
    if let Some(x) = a.length_penalty.filter(|x| !x.is_finite()) {
        bail!("--length-penalty must be a finite number (HF's default is 1.0), got {x}");
    }
    if a.num_return_sequences == Some(0) {
        bail!("--num-return-sequences must be at least 1");
    }
    if a.max_source_length == 0 {
        bail!("--max-source-length must be at least 1 (input tokens kept, eos included)");
    }
    Ok(())
}

/// The model's configuration with each flag given overriding its one setting (the
/// flags are generate()'s arguments under their HF names).
fn settings(a: &GenArgs, own: &GenerateConfig) -> Result<GenerateConfig> {
    let early = a.early_stopping.map(|e| match e {
        EarlyStoppingArg::True => Value::from(true),
        EarlyStoppingArg::False => Value::from(false),
        EarlyStoppingArg::Never => Value::from("never"),
    });
    let flags = [
        ("--num-beams", "num_beams", a.num_beams.map(Value::from)),
        (
            "--max-new-tokens",
            "max_new_tokens",
            a.max_new_tokens.map(Value::from),
        ),
        ("--max-length", "max_length", a.max_length.map(Value::from)),
        ("--min-length", "min_length", a.min_length.map(Value::from)),
        (
            "--min-new-tokens",
            "min_new_tokens",
            a.min_new_tokens.map(Value::from),
        ),
        (
            "--length-penalty",
            "length_penalty",
            a.length_penalty.map(Value::from),
        ),
        (
            "--no-repeat-ngram-size",
            "no_repeat_ngram_size",
            a.no_repeat_ngram_size.map(Value::from),
        ),
        ("--early-stopping", "early_stopping", early),
        (
            "--num-return-sequences",
            "num_return_sequences",
            a.num_return_sequences.map(Value::from),
        ),
    ];
    let given: Vec<_> = flags
        .into_iter()
        .filter_map(|(flag, field, v)| v.map(|v| (flag, field, v)))
        .collect();
    let cfg = if given.is_empty() {
        own.clone()
    } else {
        let names: Vec<&str> = given.iter().map(|g| g.0).collect();
        let v: serde_json::Map<String, Value> = given
            .into_iter()
            .map(|(_, field, v)| (field.to_string(), v))
            .collect();
        own.clone()
            .overlay_json(&Value::Object(v), &names.join(", "))?
    };
    let nrs = cfg.num_return_sequences;
    if nrs > cfg.num_beams {
        let what = match a.num_return_sequences {
            Some(_) => format!("--num-return-sequences {nrs}"),
            None => format!("num_return_sequences {nrs} (the model's, {})", own.origin),
        };
        let beams = match a.num_beams {
            Some(_) => "--num-beams".to_string(),
            None => format!("the model's num_beams ({})", own.origin),
        };
        bail!(
            "{what} needs beam search with at least {nrs} beams, and {beams} is {}: give \
             --num-beams {nrs} or more (generate() returns finished beams)",
            cfg.num_beams
        );
    }
    // generate()'s precedence: a flag that another setting outranks says so.
    let from = |flag: bool, name: &str| match flag {
        true => name.to_string(),
        false => format!("the model's, {}", own.origin),
    };
    if let (Some(l), Some(n)) = (a.max_length, cfg.max_new_tokens) {
        let by = from(a.max_new_tokens.is_some(), "--max-new-tokens");
        eprintln!("infer generate: --max-length {l} has no effect: max_new_tokens {n} ({by}) takes precedence, as in generate()");
    }
    if let (Some(l), Some(n)) = (a.min_length, cfg.min_new_tokens) {
        let by = from(a.min_new_tokens.is_some(), "--min-new-tokens");
        eprintln!("infer generate: --min-length {l} has no effect: min_new_tokens {n} ({by}) takes precedence, as in generate()");
    }
    Ok(cfg)
}

pub(crate) fn run(a: GenArgs) -> Result<()> {
    let device = Device::parse(&a.device)?.resolve();
    let (cfg_path, text) = config_text(&a.model)?;
    let raw: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid JSON", cfg_path.display()))?;
    let model = load_seq2seq_lm(&a.model, device, DType::F32)?;
    let tok_path = a.model.join("tokenizer.json");
    let tok = load_tokenizer_json(&tok_path)?;
    let vocab = tok.get_vocab_size(true);
    let model_vocab = model.vocab_size();
    if vocab > model_vocab {
        bail!(
            "{} has {vocab} tokens but {} says vocab_size {model_vocab}: the tokenizer does not belong to this model",
            tok_path.display(),
            cfg_path.display(),
        );
    }
    check_flags(&a, model_vocab, &cfg_path)?;
    let mut cfg = settings(&a, model.generation_config())?;
    cap_length(&mut cfg, model.as_ref(), &raw, &a.model)?;
    cfg.validate(model_vocab)?;
    let inputs: Vec<String> = match (&a.input, &a.file) {
        (Some(t), _) => vec![t.clone()],
        (None, Some(f)) => {
            let text = fusebox::text::read_text(f)?;
            text.lines().map(str::to_string).collect()
        }
        (None, None) => bail!("give --input TEXT or --file F"),
    };
    let eos = model.eos_token_ids().first().copied().unwrap_or(1);
    let pad = cfg.pad_token_id.unwrap_or(0);
    let nrs = cfg.num_return_sequences;
    let print = |rows: Vec<Value>| {
        if a.json {
            match rows.as_slice() {
                [one] => println!("{one}"),
                _ => println!("{}", Value::Array(rows)),
            }
        } else {
            for r in rows {
                println!("{}", r["text"].as_str().unwrap_or_default());
            }
        }
    };
    for text in &inputs {
        if text.trim().is_empty() {
            // One output per input line, so outputs still pair up with references.
            print(vec![json!({"text": "", "tokens": []}); nrs]);
            continue;
        }
        let src = format!("{}{text}", a.prefix);
        let ids = encode(&tok, &a.model, &src, a.max_source_length, eos)?;
        let n = ids.len();
        let input = Tensor::from_i32(ids, [1, n], device)?;
        // The tokenizer's mask, as the pipeline passes it: every input token attended.
        let mask = Tensor::from_i32(vec![1; n], [1, n], device)?;
        let g = generate(model.as_ref(), &input, Some(&mask), &cfg)?;
        let mut rows = Vec::with_capacity(g.sequences.len());
        for (i, seq) in g.sequences.iter().enumerate() {
            // Drop the decoder start token; stop after the first eos (the rest is padding).
            let mut tokens: Vec<i32> = Vec::new();
            for &t in seq.iter().skip(1) {
                tokens.push(t);
                if cfg.eos_token_id.contains(&t) {
                    break;
                }
            }
            let plain: Vec<u32> = tokens
                .iter()
                .filter(|&&t| t >= 0 && t != pad)
                .map(|&t| t as u32)
                .collect();
            let out = tok
                .decode(&plain, true)
                .map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
            let mut v = json!({"text": out.trim(), "tokens": tokens});
            if let Some(s) = g.scores.as_ref().and_then(|s| s.get(i)) {
                v["score"] = json!(s);
            }
            rows.push(v);
        }
        print(rows);
    }
    Ok(())
}

/// The decoder length (start token included) a T5 without `n_positions` in its
/// config.json may generate to: what every released T5 checkpoint states.
const DEFAULT_POSITIONS: usize = 512;

/// Keep generation within the model's length limit, so a model that never emits eos
/// stops: its position table (`max_position_embeddings`), or for T5, whose relative
/// positions have no table, config.json's `n_positions` (the checkpoints were trained
/// and are documented to that length; 512 when absent) or a larger `max_length` of the
/// model's own generation configuration. A request beyond it is capped, and stderr says
/// so.
fn cap_length(
    cfg: &mut GenerateConfig,
    model: &dyn Seq2SeqLm,
    config: &Value,
    dir: &Path,
) -> Result<()> {
    let cfg_path = dir.join("config.json");
    let (cap, why) = match model.max_position_embeddings() {
        Some(p) => (
            p,
            format!("max_position_embeddings in {}", cfg_path.display()),
        ),
        None => {
            let mut limit = match config.get("n_positions").and_then(|x| x.as_u64()) {
                Some(n) => (n as usize, format!("n_positions in {}", cfg_path.display())),
                None => (
                    DEFAULT_POSITIONS,
                    format!(
                        "{DEFAULT_POSITIONS} positions, T5's own, as config.json states no n_positions"
                    ),
                ),
            };
            let own = model.generation_config();
            if let Some(n) = own.max_length.filter(|&n| n > limit.0) {
                limit = (n, format!("max_length in {}", own.origin));
            }
            limit
        }
    };
    if cap < 2 {
        bail!("{why} is {cap}: no room for a generated token");
    }
    let asked = cfg.total_max_length(model.max_position_embeddings());
    if asked > cap {
        eprintln!(
            "infer generate: {} new tokens asked for; capped at {} ({why}): a model that never emits its eos would otherwise run on",
            asked - 1,
            cap - 1
        );
        cfg.max_new_tokens = Some(cap - 1);
    }
    Ok(())
}
