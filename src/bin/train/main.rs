//! `train`: fine-tune (or, with no data given, train a built-in task from scratch) and
//! write a checkpoint in Hugging Face layout. Thin over `fusebox::train` and the tasks.
//!
//!   train qa [--model M --train F.json --eval F.json --max-length N --stride N ...]
//!   train summarize|translate [--model M --train F --eval F --source COL --target COL ...]
//!
//! With no --train, each task trains its built-in generated dataset from scratch (a
//! tokenizer trained on it and a small model), so the whole pipeline runs anywhere in
//! minutes; with --train it fine-tunes --model with the seed recipes' defaults.
//!
//! Progress bar with loss, lr, tokens/s and ETA; metrics appended to OUT/metrics.jsonl and
//! drawn in OUT/curves.svg; the last line printed is one JSON object of final metrics.

#[path = "../common/memory_args.rs"]
mod memory_args;
mod qa;
mod run;
mod seq2seq;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

use fusebox::tasks::seq2seq_train::Seq2SeqKind;
use fusebox::train::{self, TrainConfig};

use qa::QaArgs;
use seq2seq::Seq2SeqArgs;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub(crate) enum Precision {
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
    /// Extractive QA on SQuAD-format JSON (EM/F1 after each epoch).
    Qa(QaArgs),
    /// Summarization with T5, BART or Marian (ROUGE after each epoch).
    Summarize(Seq2SeqArgs),
    /// Translation with T5, BART or Marian (BLEU after each epoch).
    Translate(Seq2SeqArgs),
}

/// The common end of every task: evaluate the untrained model, train, say where the
/// checkpoint went, and print the final metrics as the last line (one JSON object).
pub(crate) fn evaluate_train_report<T: train::Task>(task: &mut T, cfg: &TrainConfig) -> Result<()> {
    if cfg.resume.is_none() {
        eprintln!(
            "untrained model: {}",
            serde_json::Value::Object(task.evaluate()?)
        );
    }
    let fin = train::run(task, cfg)?;
    eprintln!(
        "checkpoint (with tokenizer), metrics.jsonl and curves.svg in {}",
        cfg.out_dir.display()
    );
    println!("{fin}");
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let done = match cli.task {
        Task::Qa(a) => qa::qa(a),
        Task::Summarize(a) => seq2seq::seq2seq(Seq2SeqKind::Summarize, a),
        Task::Translate(a) => seq2seq::seq2seq(Seq2SeqKind::Translate, a),
    };
    // A run stopped with its work saved (a signal, --max-time) says how to continue and
    // exits with its own status (130, 75), not as a failure.
    if let Some(fusebox::Error::Stopped { code, message }) = done
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<fusebox::Error>())
    {
        eprintln!("{message}");
        std::process::exit(*code);
    }
    done
}
