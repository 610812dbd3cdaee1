//! `infer`: use a checkpoint from the command line. Thin over the library:
//!
//!   infer qa --model DIR --question Q --context C [--top-k K] [--json]
//!   infer qa --model DIR --file SQUAD.json --out PREDS.json [--version-2-with-negative]
//!   infer generate --model DIR (--input TEXT | --file F) [generate() flags] [--json]
//!   infer summarize --model DIR (--input TEXT | --file F) [generate() flags] [--json]
//!   infer translate --model DIR [--task translation_XX_to_YY] (--input TEXT | --file F) ...
//!
//! One question is answered as `pipeline("question-answering")` does (its defaults:
//! max_seq_len min(model_max_length, 384), doc_stride min(max_seq_len/2, 128),
//! max_answer_len 15, top_k 1), a SQuAD file as run_qa.py predicts it (batched windows,
//! utils_qa post-processing, {id: answer} JSON the official scripts read). `generate`
//! (generate.rs) runs an encoder-decoder LM as transformers' `generate()` does, `summarize`
//! and `translate` (pipeline.rs) as transformers' summarization / translation pipelines;
//! the three share text2text.rs (model, inputs, output loop; the tokenizer is
//! `tokenize::seq2seq::Seq2SeqTokenizer`: T5, BART and Marian files) and gen_flags.rs
//! (generate()'s flags).

mod gen_flags;
mod generate;
mod pipeline;
mod text2text;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Parser, Subcommand};
use serde_json::json;

use fusebox::data::squad::{load_squad, SquadOptions};
use fusebox::models::auto::load_trained_qa_model;
use fusebox::models::qa::QaModel;
use fusebox::tasks::qa::{FeatureConfig, PipelineConfig, PostprocessConfig, QaExample};
use fusebox::tasks::qa_train::{answer_question, QaTask};
use fusebox::tokenize::TextTokenizer;
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
    /// Text-to-text generation (T5, BART, Marian) as transformers' generate(): greedy or beam search
    /// with the model's generation configuration, each flag overriding one setting.
    Generate(generate::GenArgs),
    /// Summarization as transformers' pipeline("summarization"): the model's
    /// task_specific_params prefix and settings, each flag overriding one setting.
    Summarize(pipeline::SummarizeArgs),
    /// Translation as transformers' pipeline("translation_XX_to_YY"): --task picks the
    /// model's task_specific_params entry (its prefix and settings).
    Translate(pipeline::TranslateArgs),
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

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Qa(a) => qa(a),
        Cmd::Generate(a) => generate::run(a),
        Cmd::Summarize(a) => pipeline::summarize(a),
        Cmd::Translate(a) => pipeline::translate(a),
    }
}
