//! `infer`: use a checkpoint from the command line. Thin over the library:
//!
//!   infer qa --model DIR --question Q --context C [--top-k K] [--json]
//!   infer qa --model DIR --file SQUAD.json --out PREDS.json [--version-2-with-negative]
//!   infer generate --model DIR (--input TEXT | --file F) [--num-beams N] [--json]
//!
//! One question is answered as `pipeline("question-answering")` does (its defaults:
//! max_seq_len min(model_max_length, 384), doc_stride min(max_seq_len/2, 128),
//! max_answer_len 15, top_k 1), a SQuAD file as run_qa.py predicts it (batched windows,
//! utils_qa post-processing, {id: answer} JSON the official scripts read). `generate`
//! runs T5 with the model's generation_config.json overlaid by the flags given. A run
//! that never emits `</s>` stops at the model's length limit: config.json's
//! `n_positions` (T5's released checkpoints say 512; 512 when absent) or a larger
//! `max_length` in config.json / generation_config.json; a longer request is capped,
//! and stderr says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args as ClapArgs, Parser, Subcommand};
use serde_json::json;

use fusebox::data::squad::{load_squad, SquadOptions};
use fusebox::models::auto::load_trained_qa_model;
use fusebox::models::hf::config_text;
use fusebox::models::qa::QaModel;
use fusebox::models::t5::T5ForConditionalGeneration;
use fusebox::tasks::generate::{generate, GenerateConfig};
use fusebox::tasks::qa::{FeatureConfig, PipelineConfig, PostprocessConfig, QaExample};
use fusebox::tasks::qa_train::{answer_question, QaTask};
use fusebox::tasks::seq2seq_train::encode;
use fusebox::tensor::Tensor;
use fusebox::tokenize::{load_tokenizer_json, TextTokenizer};
use fusebox::{DType, Device};

#[derive(Parser, Debug)]
#[command(
    name = "infer",
    about = "Answer questions or generate text with a fusebox / HF checkpoint"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Extractive QA with a BERT/DistilBERT QA checkpoint.
    Qa(QaArgs),
    /// T5 text-to-text generation (greedy or beam search).
    Generate(GenArgs),
}

#[derive(ClapArgs, Debug)]
struct QaArgs {
    /// Model directory (config.json, model.safetensors, tokenizer files).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, requires = "context", conflicts_with = "file")]
    question: Option<String>,
    #[arg(long, requires = "question")]
    context: Option<String>,
    /// Answers to return for --question (the pipeline's top_k).
    #[arg(long, default_value_t = 1)]
    top_k: usize,
    /// SQuAD JSON (either layout) to predict every question of.
    #[arg(long, requires = "out")]
    file: Option<PathBuf>,
    /// With --file: where the {id: answer} predictions go.
    #[arg(long)]
    out: Option<PathBuf>,
    /// With --file: allow empty answers and write a null-odds file beside --out.
    #[arg(long)]
    version_2_with_negative: bool,
    /// Window length (default as the pipeline: min(model_max_length, 384)).
    #[arg(long)]
    max_length: Option<usize>,
    /// Context tokens shared by consecutive windows (default min(max_length/2, 128)).
    #[arg(long)]
    stride: Option<usize>,
    /// Longest answer in tokens (default 15 for --question as the pipeline, 30 for
    /// --file as run_qa.py).
    #[arg(long)]
    max_answer_length: Option<usize>,
    /// Print the --question answers as JSON.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "auto")]
    device: String,
}

#[derive(ClapArgs, Debug)]
#[command(group(ArgGroup::new("inputs").required(true).args(["input", "file"])))]
struct GenArgs {
    /// T5 model directory (config.json, model.safetensors, tokenizer.json).
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
    #[arg(long)]
    num_beams: Option<usize>,
    #[arg(long)]
    max_new_tokens: Option<usize>,
    #[arg(long)]
    length_penalty: Option<f64>,
    #[arg(long)]
    no_repeat_ngram_size: Option<usize>,
    /// Inputs longer than this many tokens are cut (eos kept).
    #[arg(long, default_value_t = 512)]
    max_source_length: usize,
    /// One JSON object per input: {"text", "tokens"} (and "score" with beams).
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "auto")]
    device: String,
}

/// `model_max_length` from the tokenizer_config.json beside the model, if given.
fn model_max_length(dir: &Path) -> Result<Option<usize>> {
    let p = dir.join("tokenizer_config.json");
    if !p.exists() {
        return Ok(None);
    }
    let text = fusebox::text::read_text(&p)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", p.display()))?;
    // transformers writes a huge sentinel when the length is unknown; treat it as absent.
    let n = v
        .get("model_max_length")
        .and_then(|x| x.as_u64())
        .filter(|&n| n < 1_000_000);
    if n == Some(0) {
        bail!(
            "{}: model_max_length is 0; expected the tokenizer's longest input in tokens (at least 1)",
            p.display()
        );
    }
    Ok(n.map(|n| n as usize))
}

/// The pipeline's window settings, kept inside the model's position table.
fn windows(a: &QaArgs, model: &dyn QaModel) -> Result<FeatureConfig> {
    let positions = model.max_positions();
    let max_length = match a.max_length {
        Some(0) => bail!("--max-length must be at least 1 (tokens per window)"),
        Some(n) if n > positions => bail!(
            "--max-length {n} exceeds the model's max_position_embeddings {positions} ({})",
            a.model.join("config.json").display()
        ),
        Some(n) => n,
        None => model_max_length(&a.model)?
            .unwrap_or(384)
            .min(384)
            .min(positions),
    };
    let stride = a.stride.unwrap_or((max_length / 2).min(128));
    if stride >= max_length {
        bail!("--stride {stride} must be smaller than the window length {max_length}");
    }
    Ok(FeatureConfig {
        max_length,
        stride,
        pad_to_max_length: false,
    })
}

fn qa(a: QaArgs) -> Result<()> {
    let device = Device::parse(&a.device)?.resolve();
    if a.max_answer_length == Some(0) {
        bail!("--max-answer-length must be at least 1 (the longest answer, in tokens)");
    }
    let model = load_trained_qa_model(&a.model, device, DType::F32)?;
    let tok = TextTokenizer::from_dir(&a.model)?;
    let (tv, mv) = (tok.vocab_size(), model.vocab_size());
    if tv > mv {
        bail!(
            "{}: the tokenizer has {tv} tokens but the model's embedding has {mv} rows ({} vocab_size)",
            tok.source().display(),
            a.model.join("config.json").display()
        );
    }
    let features = windows(&a, model.as_ref())?;
    if let (Some(q), Some(c)) = (&a.question, &a.context) {
        if a.top_k == 0 {
            bail!("--top-k must be at least 1");
        }
        let decode = PipelineConfig {
            top_k: a.top_k,
            max_answer_len: a.max_answer_length.unwrap_or(15),
            ..PipelineConfig::default()
        };
        let answers = answer_question(model.as_ref(), &tok, q, c, features, &decode, device)?;
        if a.json {
            let rows: Vec<_> = answers
                .iter()
                .map(|x| json!({"score": x.score, "start": x.start, "end": x.end, "answer": x.answer}))
                .collect();
            // One answer prints as an object, several as a list (as the pipeline returns).
            match rows.as_slice() {
                [one] => println!("{one}"),
                _ => println!("{}", serde_json::Value::Array(rows)),
            }
        } else {
            for x in &answers {
                println!(
                    "answer: {}\nscore: {:.4}\nstart: {}\nend: {}",
                    x.answer, x.score, x.start, x.end
                );
            }
        }
        return Ok(());
    }
    let (Some(file), Some(out)) = (&a.file, &a.out) else {
        bail!("give --question and --context, or --file SQUAD.json --out PREDS.json");
    };
    // Prediction never reads the gold answers: a question whose answer does not line up
    // with its context is still answered (a dropped one would score 0 in `eval squad`).
    let load = load_squad(
        file,
        SquadOptions {
            keep_questions: true,
            ..Default::default()
        },
    )?;
    if let Some(first) = load.skipped.first() {
        eprintln!(
            "{}: {} gold answers do not match their context (first: question {} — {}); their questions are answered all the same",
            file.display(),
            load.skipped.len(),
            first.id,
            first.reason
        );
    }
    let examples: Vec<QaExample> = load.examples.iter().map(QaExample::from).collect();
    if examples.is_empty() {
        bail!("{}: no questions", file.display());
    }
    // The predictions file is {id: answer}, as the official scripts read it: a repeated
    // id would keep one answer of two and score the other question as unanswered.
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = examples.iter().find(|e| !seen.insert(e.id.as_str())) {
        bail!(
            "{}: question id {:?} appears more than once; ids key the {{id: answer}} predictions, so each must be unique",
            file.display(),
            dup.id
        );
    }
    let post = PostprocessConfig {
        max_answer_length: a.max_answer_length.unwrap_or(30),
        version_2_with_negative: a.version_2_with_negative,
        ..PostprocessConfig::default()
    };
    let task = QaTask::new(model, tok, &[], examples, features, post, device)?;
    let preds = task.predict()?;
    let answers: BTreeMap<&str, &str> = preds
        .iter()
        .map(|p| (p.id.as_str(), p.text.as_str()))
        .collect();
    write_json(out, &json!(answers))?;
    eprintln!(
        "{} predictions ({} windows) written to {}",
        preds.len(),
        task.eval_features().len(),
        out.display()
    );
    if a.version_2_with_negative {
        // run_qa.py's null_odds.json: null score minus best span score per question.
        let odds: BTreeMap<&str, f32> = preds
            .iter()
            .map(|p| (p.id.as_str(), p.null_score_diff.unwrap_or(0.0)))
            .collect();
        let stem = out
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "predictions".into());
        let na = out.with_file_name(format!("{stem}_null_odds.json"));
        write_json(&na, &json!(odds))?;
        eprintln!("no-answer odds written to {}", na.display());
    }
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, serde_json::to_string_pretty(v)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

fn gen(a: GenArgs) -> Result<()> {
    let device = Device::parse(&a.device)?.resolve();
    // A clear refusal of other architectures, before the weights loader lists every
    // missing T5 tensor.
    let (cfg_path, text) = config_text(&a.model)?;
    let raw: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid JSON", cfg_path.display()))?;
    match raw.get("model_type").and_then(|m| m.as_str()) {
        Some("t5") | None => {}
        Some(other) => bail!(
            "{}: model_type {other:?}; `infer generate` runs T5 checkpoints (use `infer qa` for QA models)",
            cfg_path.display()
        ),
    }
    let model = T5ForConditionalGeneration::load(&a.model, device, DType::F32)?;
    let tok_path = a.model.join("tokenizer.json");
    let tok = load_tokenizer_json(&tok_path)?;
    let vocab = tok.get_vocab_size(true);
    if vocab > model.config.vocab_size {
        bail!(
            "{} has {vocab} tokens but {} says vocab_size {}: the tokenizer does not belong to this model",
            tok_path.display(),
            cfg_path.display(),
            model.config.vocab_size
        );
    }
    let model_vocab = model.config.vocab_size;
    match a.num_beams {
        Some(0) => bail!("--num-beams must be at least 1"),
        Some(n) if n > model_vocab => bail!(
            "--num-beams {n} exceeds the model's vocabulary ({model_vocab} tokens, {} vocab_size): each beam needs a distinct continuation",
            cfg_path.display()
        ),
        _ => {}
    }
    if a.max_new_tokens == Some(0) {
        bail!("--max-new-tokens must be at least 1");
    }
    if let Some(x) = a.length_penalty.filter(|x| !x.is_finite()) {
        bail!("--length-penalty must be a finite number (HF's default is 1.0), got {x}");
    }
    if a.max_source_length == 0 {
        bail!("--max-source-length must be at least 1 (input tokens kept, eos included)");
    }
    let mut cfg = GenerateConfig::from_model_dir(&model.config, &a.model)?;
    if let Some(n) = a.num_beams {
        cfg.num_beams = n;
    }
    if let Some(n) = a.max_new_tokens {
        cfg.max_new_tokens = Some(n);
    }
    if let Some(x) = a.length_penalty {
        cfg.length_penalty = x;
    }
    if let Some(n) = a.no_repeat_ngram_size {
        cfg.no_repeat_ngram_size = n;
    }
    cap_length(&mut cfg, &raw, &a.model)?;
    let inputs: Vec<String> = match (&a.input, &a.file) {
        (Some(t), _) => vec![t.clone()],
        (None, Some(f)) => {
            let text = fusebox::text::read_text(f)?;
            text.lines().map(str::to_string).collect()
        }
        (None, None) => bail!("give --input TEXT or --file F"),
    };
    let eos = cfg.eos_token_id.first().copied().unwrap_or(1);
    let pad = cfg.pad_token_id.unwrap_or(0);
    for text in &inputs {
        if text.trim().is_empty() {
            // One output line per input line, so outputs still pair up with references.
            if a.json {
                println!("{}", json!({"text": "", "tokens": []}));
            } else {
                println!();
            }
            continue;
        }
        let src = format!("{}{text}", a.prefix);
        let ids = encode(&tok, &a.model, &src, a.max_source_length, eos)?;
        let n = ids.len();
        let input = Tensor::from_i32(ids, [1, n], device)?;
        let g = generate(&model, &input, None, &cfg)?;
        let seq = g
            .sequences
            .first()
            .context("generate returned no sequence")?;
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
        let out = out.trim();
        if a.json {
            let mut v = json!({"text": out, "tokens": tokens});
            if let Some(s) = g.scores.as_ref().and_then(|s| s.first()) {
                v["score"] = json!(s);
            }
            println!("{v}");
        } else {
            println!("{out}");
        }
    }
    Ok(())
}

/// The decoder length (start token included) a T5 without `n_positions` in its
/// config.json may generate to: what every released T5 checkpoint states.
const DEFAULT_POSITIONS: usize = 512;

/// Keep generation within the model's length limit, so a model that never emits `</s>`
/// stops: config.json's `n_positions` (T5's relative positions have no table, but the
/// checkpoints were trained and are documented to that length; 512 when absent), or a
/// larger `max_length` that config.json or generation_config.json states. A request
/// beyond it is capped, and stderr says so.
fn cap_length(cfg: &mut GenerateConfig, config: &serde_json::Value, dir: &Path) -> Result<()> {
    let uint = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_u64());
    let mut limit = match uint(config, "n_positions") {
        Some(n) => (
            n as usize,
            format!("n_positions in {}", dir.join("config.json").display()),
        ),
        None => (
            DEFAULT_POSITIONS,
            format!(
                "{DEFAULT_POSITIONS} positions, T5's own, as config.json states no n_positions"
            ),
        ),
    };
    let gen_path = dir.join("generation_config.json");
    let gen: Option<serde_json::Value> = fusebox::text::read_text(&gen_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    for (v, file) in [
        (Some(config), "config.json"),
        (gen.as_ref(), "generation_config.json"),
    ] {
        if let Some(n) = v.and_then(|v| uint(v, "max_length")) {
            if n as usize > limit.0 {
                limit = (
                    n as usize,
                    format!("max_length in {}", dir.join(file).display()),
                );
            }
        }
    }
    let (cap, why) = limit;
    if cap < 2 {
        bail!("{why} is {cap}: no room for a generated token");
    }
    let asked = cfg
        .max_new_tokens
        .map_or(cfg.max_length, |n| n.saturating_add(1));
    if asked > cap {
        eprintln!(
            "infer generate: {} new tokens asked for; capped at {} ({why}): a model that never emits </s> would otherwise run on",
            asked - 1,
            cap - 1
        );
        cfg.max_new_tokens = Some(cap - 1);
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Qa(a) => qa(a),
        Cmd::Generate(a) => gen(a),
    }
}
