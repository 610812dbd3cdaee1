//! `train`: fine-tune (or, with no data given, train a built-in task from scratch) and
//! write a checkpoint in Hugging Face layout. Thin over `fusebox::train` and the tasks.
//!
//!   train summarize|translate [--model M --train F --eval F --source COL --target COL ...]
//!
//! Progress bar with loss, lr, tokens/s and ETA; metrics appended to OUT/metrics.jsonl and
//! drawn in OUT/curves.svg; the last line printed is one JSON object of final metrics.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

use fusebox::data::seq2seq::{load_seq2seq, Seq2SeqOptions};
use fusebox::hub;
use fusebox::models::t5::T5ForConditionalGeneration;
use fusebox::tasks::generate::GenerateConfig;
use fusebox::tasks::seq2seq_default;
use fusebox::tasks::seq2seq_train::{Seq2SeqKind, Seq2SeqTask};
use fusebox::tokenizer_train;
use fusebox::train::{self, TrainConfig};
use fusebox::{DType, Device};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Precision {
    Fp32,
    Fp16,
}

#[derive(Parser, Debug)]
#[command(about = "Train QA, summarization or translation models on fusebox")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// T5 summarization (ROUGE after each epoch).
    Summarize(Seq2SeqArgs),
    /// T5 translation (BLEU after each epoch).
    Translate(Seq2SeqArgs),
}

#[derive(ClapArgs, Debug)]
struct Seq2SeqArgs {
    /// Model directory, HF cache entry or hub id (default t5-small), or `scratch`: a small
    /// T5 and a word-level tokenizer trained on --train (the built-in task always is).
    #[arg(long)]
    model: Option<String>,
    /// Training file (.jsonl/.json/.csv/.tsv/.story or a directory of stories). Without
    /// it, the built-in generated task is trained from scratch.
    #[arg(long)]
    train: Option<PathBuf>,
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Source field (dotted JSON path or CSV column), e.g. document, translation.en, english.
    #[arg(long, default_value = "source")]
    source: String,
    #[arg(long, default_value = "target")]
    target: String,
    /// Task prefix; default "summarize: " or "translate English to Romanian: "-style,
    /// per task.
    #[arg(long)]
    prefix: Option<String>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long)]
    grad_accum: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0.0)]
    warmup_ratio: f64,
    #[arg(long, default_value_t = 512)]
    max_source_length: usize,
    #[arg(long, default_value_t = 128)]
    max_target_length: usize,
    #[arg(long, default_value_t = 1)]
    num_beams: usize,
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Evaluate on at most this many rows (generation is the slow part).
    #[arg(long)]
    eval_limit: Option<usize>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long)]
    out: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, value_enum, default_value = "fp32")]
    precision: Precision,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long)]
    quiet: bool,
}

fn seq2seq(kind: Seq2SeqKind, a: Seq2SeqArgs) -> Result<()> {
    let device = Device::parse(&a.device)?.resolve();
    let fp16 = a.precision == Precision::Fp16;
    if fp16 && !device.is_cuda() {
        bail!(
            "--precision fp16 needs a CUDA device; got --device {}",
            a.device
        );
    }
    let dtype = if fp16 { DType::F16 } else { DType::F32 };
    let task_name = match kind {
        Seq2SeqKind::Summarize => "summarize",
        Seq2SeqKind::Translate => "translate",
    };
    let builtin = a.train.is_none();
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "out/{task_name}{}",
            if builtin { "-default" } else { "" }
        ))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let (train_rows, mut eval_rows) = if builtin {
        if a.eval.is_some() {
            bail!("--eval without --train: give both, or neither for the built-in task");
        }
        let (n_train, n_eval) = match kind {
            Seq2SeqKind::Summarize => (3000, 100),
            Seq2SeqKind::Translate => (4000, 200),
        };
        let rows = seq2seq_default::dataset(kind, a.seed, n_train, n_eval, &out)?;
        eprintln!(
            "built-in {task_name} task: {} train / {} held-out rows written to {}",
            rows.0.len(),
            rows.1.len(),
            out.join("data").display()
        );
        rows
    } else {
        let prefix = a.prefix.clone().unwrap_or_else(|| match kind {
            Seq2SeqKind::Summarize => "summarize: ".to_string(),
            Seq2SeqKind::Translate => String::new(),
        });
        let opts = Seq2SeqOptions::new(&a.source, &a.target).with_prefix(&prefix);
        let train_path = a.train.as_ref().context("--train")?;
        let eval_path = a
            .eval
            .as_ref()
            .context("--eval FILE is needed with --train (generation metrics after each epoch)")?;
        (
            load_seq2seq(train_path, &opts)?,
            load_seq2seq(eval_path, &opts)?,
        )
    };
    // From scratch: the built-in task, or `--model scratch` on the user's files.
    let scratch = builtin || a.model.as_deref() == Some("scratch");
    let (model, tok_dir) = if scratch {
        let tok_dir = out.join("tokenizer");
        let texts: Vec<String> = train_rows
            .iter()
            .flat_map(|r| [r.source.clone(), r.target.clone()])
            .collect();
        tokenizer_train::train_wordlevel_t5(&texts, 16000, &tok_dir)?;
        let vocab = tokenizers::Tokenizer::from_file(tok_dir.join("tokenizer.json"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", tok_dir.display()))?
            .get_vocab_size(true);
        let cfg = seq2seq_default::small_config(vocab);
        eprintln!(
            "from scratch: word-level tokenizer ({vocab} tokens) trained on the training rows, T5 d_model {} with {}+{} layers",
            cfg.d_model,
            cfg.num_layers,
            cfg.num_decoder_layers.unwrap_or(cfg.num_layers)
        );
        (
            T5ForConditionalGeneration::new_random(cfg, device, dtype, a.seed)?,
            tok_dir,
        )
    } else {
        let spec = a.model.clone().unwrap_or_else(|| "t5-small".to_string());
        let dir = hub::resolve_model(&spec)?;
        (T5ForConditionalGeneration::load(&dir, device, dtype)?, dir)
    };
    if let Some(n) = a.eval_limit {
        eval_rows.truncate(n);
    }
    let mut gen = GenerateConfig::for_model(&model.config);
    gen.num_beams = a.num_beams;
    gen.max_new_tokens =
        Some(
            a.max_new_tokens
                .unwrap_or(if builtin { 24 } else { a.max_target_length }),
        );
    let mut task = Seq2SeqTask::new(
        model,
        &tok_dir,
        &train_rows,
        eval_rows,
        kind,
        gen,
        a.max_source_length,
        a.max_target_length,
        device,
    )?;
    // Defaults: the seed's (t5-small fine-tuning) unless built-in from scratch.
    let cfg = TrainConfig {
        epochs: a.epochs.unwrap_or(if scratch { 8 } else { 3 }),
        batch: a.batch.unwrap_or(if scratch { 32 } else { 8 }),
        grad_accum: a.grad_accum.unwrap_or(if scratch { 1 } else { 4 }),
        lr: a.lr.unwrap_or(if scratch { 2e-3 } else { 3e-5 }),
        weight_decay: a.weight_decay,
        warmup_ratio: if scratch && a.warmup_ratio == 0.0 {
            0.05
        } else {
            a.warmup_ratio
        },
        max_grad_norm: Some(1.0),
        seed: a.seed,
        out_dir: out.clone(),
        loss_scaling: fp16,
        log_every: 10,
        max_steps: a.max_steps,
        quiet: a.quiet,
    };
    eprintln!(
        "untrained model: {}",
        serde_json::Value::Object(train::Task::evaluate(&mut task)?)
    );
    let fin = train::run(&mut task, &cfg)?;
    eprintln!(
        "checkpoint, metrics.jsonl and curves.svg in {}",
        out.display()
    );
    println!("{fin}");
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Summarize(a) => seq2seq(Seq2SeqKind::Summarize, a),
        Task::Translate(a) => seq2seq(Seq2SeqKind::Translate, a),
    }
}
