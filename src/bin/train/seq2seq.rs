//! `train summarize` / `train translate`: an encoder-decoder LM (T5, BART or Marian) on
//! source/target files, or, with none, the built-in generated task from scratch (a
//! word-level tokenizer and a small T5, or BART / Marian with --arch). Evaluation
//! generates with the model's generation configuration, overridden by --num-beams and
//! --max-new-tokens.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, ValueEnum};

use fusebox::data::seq2seq::{load_seq2seq, Seq2SeqOptions};
use fusebox::hub;
use fusebox::models::auto::load_seq2seq_lm;
use fusebox::models::bart::{BartForConditionalGeneration, Family};
use fusebox::models::seq2seq::Seq2SeqLm;
use fusebox::models::step::{ModelConfig, ModelSource};
use fusebox::models::t5::T5ForConditionalGeneration;
use fusebox::shape::{DType, Device};
use fusebox::tasks::seq2seq_default;
use fusebox::tasks::seq2seq_train::{Seq2SeqKind, Seq2SeqTask};
use fusebox::tokenize::load_tokenizer_json;
use fusebox::tokenize::train as tokenizer_train;

use crate::evaluate_train_report;
use crate::run::{RunArgs, RunDefaults};

/// `--arch`: what `--model scratch` (and the built-in task) builds.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub(crate) enum Arch {
    T5,
    Bart,
    Marian,
}

#[derive(ClapArgs, Debug)]
pub(crate) struct Seq2SeqArgs {
    /// Model directory (T5, BART or Marian), HF cache entry or hub id (default t5-small),
    /// or `scratch`: a small model and a word-level tokenizer trained on --train (the
    /// built-in task always is). With --plan, also a built-in public configuration
    /// (t5-small, flan-t5-small, t5-base, flan-t5-base, t5-large, flan-t5-large,
    /// bart-base, bart-large-cnn, opus-mt-en-id), planned at --max-source-length ->
    /// --max-target-length without data or weights.
    #[arg(long)]
    model: Option<String>,
    /// The architecture a model from scratch has (default t5).
    #[arg(long, value_enum)]
    arch: Option<Arch>,
    /// Training file (.jsonl/.json/.csv/.tsv/.story or a directory of stories). Without
    /// it, the built-in generated task is trained from scratch.
    #[arg(long)]
    train: Option<PathBuf>,
    /// Evaluation file in the same format, needed with --train (ROUGE or BLEU after each
    /// epoch).
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Source field (dotted JSON path or CSV column), e.g. document, translation.en, english.
    #[arg(long, default_value = "source")]
    source: String,
    /// Target field, as --source.
    #[arg(long, default_value = "target")]
    target: String,
    /// Task prefix; default "summarize: " or "translate English to Romanian: "-style,
    /// per task.
    #[arg(long)]
    prefix: Option<String>,
    /// Source tokens kept (longer inputs are truncated).
    #[arg(long, default_value_t = 512)]
    max_source_length: usize,
    /// Target tokens kept for training (labels past it are truncated).
    #[arg(long, default_value_t = 128)]
    max_target_length: usize,
    /// Beams in evaluation generation (1 = greedy; default: the model's generation
    /// configuration, greedy for a model from scratch).
    #[arg(long)]
    num_beams: Option<usize>,
    /// Tokens generated per evaluation row at most (default: --max-target-length, as
    /// run_summarization.py's val_max_target_length; 24 for the built-in task).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Evaluate on at most this many rows (generation is the slow part).
    #[arg(long)]
    eval_limit: Option<usize>,
    #[command(flatten)]
    run: RunArgs,
}

pub(crate) fn seq2seq(kind: Seq2SeqKind, a: Seq2SeqArgs) -> Result<()> {
    a.run.check_flags()?;
    let scratch = a.train.is_none() || a.model.as_deref() == Some("scratch");
    if let (false, Some(arch)) = (scratch, a.arch) {
        bail!(
            "--arch {} is for a model from scratch (--model scratch, or the built-in task); \
             a checkpoint's config.json names its own architecture",
            format!("{arch:?}").to_lowercase()
        );
    }
    if a.max_source_length == 0 || a.max_target_length == 0 {
        bail!("--max-source-length and --max-target-length must be at least 1");
    }
    if a.eval_limit == Some(0) {
        bail!("--eval-limit must be at least 1 (the metrics need rows to score)");
    }
    if let Some(config) = builtin_for_plan(&a)? {
        return plan_builtin(&a, config);
    }
    if a.train.is_none() {
        if a.eval.is_some() {
            bail!("--eval without --train: give both, or neither for the built-in task");
        }
        if let Some(m) = a.model.as_deref().filter(|m| *m != "scratch") {
            bail!("--model {m} needs --train and --eval files (without them the built-in task trains a small T5 from scratch)");
        }
    }
    let (device, dtype, fp16) = a.run.device_dtype()?;
    let task_name = match kind {
        Seq2SeqKind::Summarize => "summarize",
        Seq2SeqKind::Translate => "translate",
    };
    let builtin = a.train.is_none();
    let out = a.run.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "out/{task_name}{}",
            if builtin { "-default" } else { "" }
        ))
    });
    a.run.prepare_out(&out, a.model.as_deref())?;
    let (train_rows, mut eval_rows) = if builtin {
        let (n_train, n_eval) = match kind {
            Seq2SeqKind::Summarize => (3000, 100),
            Seq2SeqKind::Translate => (4000, 200),
        };
        let rows = seq2seq_default::dataset(kind, a.run.seed, n_train, n_eval, &out)?;
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
        let load = |path: &PathBuf| -> Result<_> {
            let rows = load_seq2seq(path, &opts)?;
            if rows.is_empty() {
                bail!(
                    "{}: no rows (expected records with the fields --source {:?} and --target {:?})",
                    path.display(),
                    a.source,
                    a.target
                );
            }
            // Only eos to learn (or to score against): a wrong --target, or a column
            // left blank, rather than a dataset.
            if rows.iter().all(|r| r.target.trim().is_empty()) {
                bail!(
                    "{}: the target field {:?} (--target) is empty in all {} rows; expected the text to generate",
                    path.display(),
                    a.target,
                    rows.len()
                );
            }
            Ok(rows)
        };
        (load(train_path)?, load(eval_path)?)
    };
    // After the files are read, so a refused run leaves no directory behind.
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    // From scratch (`scratch`): the built-in task, or `--model scratch` on the user's files.
    let (mut model, tok_dir, scratch_config): (Box<dyn Seq2SeqLm>, _, _) = if scratch {
        let tok_dir = out.join("tokenizer");
        let texts: Vec<String> = train_rows
            .iter()
            .flat_map(|r| [r.source.clone(), r.target.clone()])
            .collect();
        tokenizer_train::train_wordlevel_t5(&texts, 16000, &tok_dir)?;
        let vocab = load_tokenizer_json(&tok_dir.join("tokenizer.json"))?.get_vocab_size(true);
        let (model, cfg) = scratch_model(&a, vocab, device, dtype)?;
        a.run
            .check_model_fits_cpu(&ModelSource::config(cfg.clone()), device)?;
        (model, tok_dir, Some(cfg))
    } else {
        let spec = a.model.clone().unwrap_or_else(|| "t5-small".to_string());
        let dir = hub::resolve_model(&spec)?;
        (load_seq2seq_lm(&dir, device, dtype)?, dir, None)
    };
    if let Some(n) = a.eval_limit {
        eval_rows.truncate(n);
    }
    // Evaluation: the model's generation configuration, each flag overriding its setting.
    let mut gen = model.generation_config().clone();
    if let Some(n) = a.num_beams {
        gen.num_beams = n;
        gen.overridden_by("--num-beams");
    }
    gen.max_new_tokens =
        Some(
            a.max_new_tokens
                .unwrap_or(if builtin { 24 } else { a.max_target_length }),
        );
    gen.overridden_by(match (a.max_new_tokens, builtin) {
        (Some(_), _) => "--max-new-tokens",
        (None, true) => "the built-in task's max_new_tokens 24",
        (None, false) => "--max-target-length (as max_new_tokens)",
    });
    // Evaluation scores one sequence per input.
    gen.num_return_sequences = 1;
    gen.validate(model.vocab_size())?;
    if scratch {
        // A model from scratch has no generation configuration of its own: its
        // checkpoints carry the one its evaluation used, for `infer` to generate with.
        model.set_generation_config(gen.clone());
    }
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
    let mut cfg = a.run.train_config(defaults(scratch), out.clone(), fp16)?;
    cfg.settings = serde_json::json!({ "model": a.model, "train": a.train, "eval": a.eval });
    // The planner builds the same model on the meta device: the checkpoint's header when
    // there is one, else the configuration.
    let spec = match scratch_config {
        Some(c) => ModelSource::config(c),
        None => ModelSource::dir(&tok_dir)?,
    };
    let lengths = task.longest_train_lengths();
    let rows = fusebox::train::Task::train_len(&task);
    let plan = a.run.memory_plan(&spec, &mut cfg, lengths, rows, device)?;
    if a.run.mem.plan {
        return Ok(());
    }
    task.model.set_checkpointing(plan.work.checkpointing);
    evaluate_train_report(&mut task, &cfg)
}

/// The task's defaults: the seed's (t5-small fine-tuning) unless built-in from scratch.
fn defaults(scratch: bool) -> RunDefaults {
    RunDefaults {
        epochs: if scratch { 8 } else { 3 },
        batch: if scratch { 32 } else { 8 },
        grad_accum: if scratch { 1 } else { 4 },
        lr: if scratch { 2e-3 } else { 3e-5 },
        warmup_ratio: if scratch { 0.05 } else { 0.0 },
    }
}

/// With --plan, a --model that names a built-in public configuration (t5-small ...
/// flan-t5-large, bart-base, bart-large-cnn; not a directory of that name): its
/// configuration, planned without data, tokenizer or weights.
fn builtin_for_plan(a: &Seq2SeqArgs) -> Result<Option<ModelConfig>> {
    match a.model.as_deref() {
        Some(name) if a.run.mem.plan && !std::path::Path::new(name).exists() => {
            Ok(fusebox::models::presets::preset(name)?)
        }
        _ => Ok(None),
    }
}

/// The plan of fine-tuning a built-in configuration at --max-source-length →
/// --max-target-length: the longest batch any data can make (dynamic padding only
/// shortens it), with the fine-tuning defaults' batch unless --batch says otherwise.
fn plan_builtin(a: &Seq2SeqArgs, config: ModelConfig) -> Result<()> {
    let (device, _, fp16) = a.run.device_dtype()?;
    let mut cfg = a
        .run
        .train_config(defaults(false), PathBuf::from("out"), fp16)?;
    let lengths = (a.max_source_length, a.max_target_length);
    let rows = cfg.batch;
    let spec = ModelSource::config(config);
    a.run.memory_plan(&spec, &mut cfg, lengths, rows, device)?;
    Ok(())
}

/// A small model from scratch of `--arch` (T5 unless given) for a `vocab`-token
/// word-level tokenizer, with its configuration for the planner.
fn scratch_model(
    a: &Seq2SeqArgs,
    vocab: usize,
    device: Device,
    dtype: DType,
) -> Result<(Box<dyn Seq2SeqLm>, ModelConfig)> {
    let seed = a.run.seed;
    let family = match a.arch.unwrap_or(Arch::T5) {
        Arch::T5 => {
            let cfg = seq2seq_default::small_config(vocab);
            eprintln!(
                "from scratch: word-level tokenizer ({vocab} tokens) trained on the training rows, T5 d_model {} with {}+{} layers",
                cfg.d_model,
                cfg.num_layers,
                cfg.num_decoder_layers.unwrap_or(cfg.num_layers)
            );
            let model = T5ForConditionalGeneration::new_random(cfg.clone(), device, dtype, seed)?;
            return Ok((Box::new(model), ModelConfig::T5(cfg)));
        }
        Arch::Bart => Family::Bart,
        Arch::Marian => Family::Marian,
    };
    // Positions for the longest source, label row or generated row.
    let longest = a.max_source_length.max(a.max_target_length);
    let positions = longest.max(a.max_new_tokens.unwrap_or(0) + 1);
    let cfg = seq2seq_default::small_bart_config(family, vocab, positions)?;
    eprintln!(
        "from scratch: word-level tokenizer ({vocab} tokens) trained on the training rows, {} d_model {} with {}+{} layers",
        family.class(),
        cfg.d_model,
        cfg.encoder_layers,
        cfg.decoder_layers
    );
    let model = BartForConditionalGeneration::new_random(cfg.clone(), device, dtype, seed)?;
    Ok((Box::new(model), ModelConfig::Bart(cfg)))
}
