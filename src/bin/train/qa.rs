//! `train qa`: SQuAD-format files fine-tune a QA model, or, with none, the built-in
//! generated task trains a small DistilBERT from scratch.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;

use fusebox::data::squad::{load_squad, SquadOptions};
use fusebox::data::synth;
use fusebox::hub;
use fusebox::models::auto::load_qa_model;
use fusebox::models::distilbert::{DistilBertConfig, DistilBertForQa};
use fusebox::models::qa::QaModel;
use fusebox::models::step::{ModelConfig, ModelSource};
use fusebox::tasks::qa::{FeatureConfig, PostprocessConfig, QaExample};
use fusebox::tasks::qa_train::QaTask;
use fusebox::tokenize::train as tokenizer_train;
use fusebox::tokenize::TextTokenizer;
use fusebox::train;

use crate::evaluate_train_report;
use crate::run::{RunArgs, RunDefaults};

#[derive(ClapArgs, Debug)]
pub(crate) struct QaArgs {
    /// Model directory, HF cache entry or hub id (default distilbert-base-cased; a small
    /// DistilBERT from scratch for the built-in task).
    #[arg(long)]
    model: Option<String>,
    /// SQuAD v1.1/v2.0 JSON (official nested or HF flat layout). Without it, the built-in
    /// generated task is trained from scratch.
    #[arg(long)]
    train: Option<PathBuf>,
    /// Evaluation set in the same format, needed with --train (EM/F1 after each epoch).
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Tokens per window (question + context slice + specials).
    #[arg(long)]
    max_length: Option<usize>,
    /// Context tokens shared by consecutive windows.
    #[arg(long)]
    stride: Option<usize>,
    /// Longest answer span considered, in tokens.
    #[arg(long, default_value_t = 30)]
    max_answer_length: usize,
    /// Start and end candidates per window in the span search.
    #[arg(long, default_value_t = 20)]
    n_best: usize,
    /// SQuAD v2: unanswerable questions allowed; the v2 metric is reported.
    #[arg(long)]
    version_2_with_negative: bool,
    /// SQuAD v2: answer "" when the null score beats the best span by more than this.
    #[arg(long, default_value_t = 0.0)]
    null_score_diff_threshold: f32,
    /// Drop (and count) questions whose answer text does not match the context at
    /// answer_start, instead of failing.
    #[arg(long)]
    skip_bad_answers: bool,
    /// Built-in task only: training contexts generated (4 questions each).
    #[arg(long)]
    contexts: Option<usize>,
    /// Built-in task only: model width (DistilBERT `dim`; FFN is 4x).
    #[arg(long)]
    dim: Option<usize>,
    /// Built-in task only: transformer layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Built-in task only: attention heads (must divide --dim).
    #[arg(long)]
    heads: Option<usize>,
    #[command(flatten)]
    run: RunArgs,
}

/// Sizes of the built-in QA run: one-person biographies of four sentences (two fact
/// pairs, so every answer has a same-type distractor in another role), 10 000 training
/// questions, 10 epochs, a 2-layer DistilBERT of width 128. Measured on this 2-core
/// machine (2026-11-27): held-out EM 90.25 in 3 min 11 s, the same in a second run (the
/// tokenizer is deterministic now; with the trainer's run-to-run vocabularies EM was
/// 90.5-92.25); with the fused QKV projection (same math, another summation order, so
/// another trajectory) EM 88.75, twice. Longer
/// biographies learned slower: all five pairs (ten sentences, earlier templates whose
/// relation words sat further from the values) EM 61 after 3750 steps; three pairs EM
/// 64.5 at best within 7 epochs.
///
/// The first design (biographies of 2-4 people, so a question must be bound to the right
/// person among same-type distractors) plateaued at EM ~40 (chance ~36) whatever was
/// tried: lr 1e-4..3e-3, batch 32, 2 or 8 heads, 2-4 layers, dim 64, 8 epochs, one
/// 192-token window per question, sinusoidal-initialised positions, each person's
/// sentences grouped, first names only, name-first templates; a single fact type per
/// context (pure binding) stayed at chance even with 6 names and 3750 steps. The same
/// data and recipe in PyTorch + transformers (tools/baselines/qa_builtin_torch.py) plateau the same
/// way (EM 42.0 after 3 epochs vs our 40.75), so that is the recipe — a post-LN
/// DistilBERT from scratch in a few thousand steps — not this engine.
struct QaBuiltin {
    contexts: usize,
    /// Fact pairs per biography (of 5): 2 = four sentences, each answer with its
    /// same-type distractor.
    pairs: usize,
    epochs: usize,
    eval_contexts: usize,
    questions: usize,
    vocab: usize,
    dim: usize,
    layers: usize,
    heads: usize,
    max_length: usize,
    stride: usize,
}

const QA_BUILTIN: QaBuiltin = QaBuiltin {
    contexts: 2500,
    pairs: 2,
    epochs: 10,
    eval_contexts: 100,
    questions: 4,
    vocab: 2000,
    dim: 128,
    layers: 2,
    heads: 8,
    max_length: 128,
    stride: 48,
};

/// Write one SQuAD document and read it back through the loader, so the built-in run
/// trains on exactly what the file on disk says.
fn write_squad(path: &std::path::Path, doc: &serde_json::Value) -> Result<Vec<QaExample>> {
    let text = serde_json::to_string(doc)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    let load = load_squad(path, SquadOptions::default())?;
    Ok(load.examples.iter().map(QaExample::from).collect())
}

/// Record the window length in tokenizer_config.json, so pipelines (`infer qa`,
/// transformers') use windows that fit the model's position table.
fn set_model_max_length(dir: &std::path::Path, n: usize) -> Result<()> {
    let p = dir.join("tokenizer_config.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let mut v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", p.display()))?;
    v.as_object_mut()
        .with_context(|| format!("{}: expected a JSON object", p.display()))?
        .insert("model_max_length".into(), serde_json::json!(n));
    std::fs::write(&p, serde_json::to_string_pretty(&v)?)
        .with_context(|| format!("writing {}", p.display()))
}

fn load_qa_file(path: &std::path::Path, skip_bad: bool) -> Result<Vec<QaExample>> {
    let load = load_squad(
        path,
        SquadOptions {
            skip_bad,
            ..Default::default()
        },
    )?;
    if !load.skipped.is_empty() {
        eprintln!(
            "{}: skipped {} questions whose answer does not match the context (first: {} — {})",
            path.display(),
            load.skipped.len(),
            load.skipped[0].id,
            load.skipped[0].reason
        );
    }
    if load.examples.is_empty() {
        bail!("{}: no questions", path.display());
    }
    Ok(load.examples.iter().map(QaExample::from).collect())
}

/// Refuse flags that do not fit the mode (built-in task or files), before anything is
/// written.
fn check_mode(a: &QaArgs) -> Result<()> {
    a.run.check_flags()?;
    if a.n_best == 0 || a.max_answer_length == 0 {
        bail!("--n-best and --max-answer-length must be at least 1");
    }
    let b = &QA_BUILTIN;
    if a.train.is_some() {
        for (set, flag) in [
            (a.contexts.is_some(), "--contexts"),
            (a.dim.is_some(), "--dim"),
            (a.layers.is_some(), "--layers"),
            (a.heads.is_some(), "--heads"),
        ] {
            if set {
                bail!("{flag} is for the built-in task only; with --train the model comes from --model");
            }
        }
        return Ok(());
    }
    if a.eval.is_some() {
        bail!("--eval without --train: give both, or neither for the built-in task");
    }
    if a.version_2_with_negative {
        bail!("--version-2-with-negative needs --train/--eval files (the built-in task is SQuAD v1.1)");
    }
    if let Some(m) = &a.model {
        bail!("--model {m} needs --train and --eval files (without them the built-in task trains a small DistilBERT from scratch)");
    }
    if a.contexts == Some(0) {
        bail!("--contexts must be at least 1");
    }
    match (a.dim, a.heads) {
        (Some(0), _) => bail!("--dim must be at least 1"),
        (_, Some(0)) => bail!("--heads must be at least 1"),
        (d, Some(h)) if !d.unwrap_or(b.dim).is_multiple_of(h) => bail!(
            "--heads {h} must divide the model width (--dim {})",
            d.unwrap_or(b.dim)
        ),
        _ => {}
    }
    if a.layers == Some(0) {
        bail!("--layers must be at least 1");
    }
    Ok(())
}

pub(crate) fn qa(a: QaArgs) -> Result<()> {
    check_mode(&a)?;
    let (device, dtype, fp16) = a.run.device_dtype()?;
    let builtin = a.train.is_none();
    let out = a
        .run
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(if builtin { "out/qa-default" } else { "out/qa" }));
    a.run.prepare_out(&out, a.model.as_deref())?;
    let b = &QA_BUILTIN;
    let features = FeatureConfig {
        max_length: a
            .max_length
            .unwrap_or(if builtin { b.max_length } else { 384 }),
        stride: a.stride.unwrap_or(if builtin { b.stride } else { 128 }),
        // Dynamic padding: the same logits as run_qa.py's pad_to_max_length, less work.
        pad_to_max_length: false,
    };
    let (spec, model, tokenizer, train_rows, eval_rows): (_, Box<dyn QaModel>, _, _, _) = if builtin
    {
        let data = out.join("data");
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let n = a.contexts.unwrap_or(b.contexts);
        let train_rows = write_squad(
            &data.join("train.json"),
            &synth::qa_dataset(a.run.seed, n, b.pairs, b.questions, "synth-train"),
        )?;
        // A different seed: held-out contexts, not a slice of the training stream.
        let eval_rows = write_squad(
            &data.join("eval.json"),
            &synth::qa_dataset(
                a.run.seed.wrapping_add(1_000_003),
                b.eval_contexts,
                b.pairs,
                b.questions,
                "synth-eval",
            ),
        )?;
        let tok_dir = out.join("tokenizer");
        let mut texts: Vec<String> = Vec::new();
        let mut last_context = "";
        for e in &train_rows {
            if e.context != last_context {
                texts.push(e.context.clone());
                last_context = &e.context;
            }
            texts.push(e.question.clone());
        }
        tokenizer_train::train_wordpiece(&texts, b.vocab, false, &tok_dir)?;
        set_model_max_length(&tok_dir, features.max_length)?;
        let tokenizer = TextTokenizer::from_dir(&tok_dir)?;
        let dim = a.dim.unwrap_or(b.dim);
        let heads = match a.heads {
            Some(h) => h,
            None if dim.is_multiple_of(b.heads) => b.heads,
            None => 1,
        };
        let cfg: DistilBertConfig = serde_json::from_value(serde_json::json!({
            "model_type": "distilbert",
            "vocab_size": tokenizer.vocab_size(),
            "max_position_embeddings": features.max_length,
            "n_layers": a.layers.unwrap_or(b.layers),
            "n_heads": heads,
            "dim": dim,
            "hidden_dim": 4 * dim,
            "dropout": 0.0,
            "attention_dropout": 0.0,
            "qa_dropout": 0.0,
        }))?;
        eprintln!(
            "built-in qa task: {} train / {} held-out questions in {}, WordPiece tokenizer ({} tokens), DistilBERT from scratch (dim {}, {} layers, {} heads), windows of {} tokens, stride {}",
            train_rows.len(),
            eval_rows.len(),
            data.display(),
            tokenizer.vocab_size(),
            cfg.dim,
            cfg.n_layers,
            cfg.n_heads,
            features.max_length,
            features.stride,
        );
        let spec = ModelSource::config(ModelConfig::DistilBert(cfg.clone()));
        a.run.check_model_fits_cpu(&spec, device)?;
        let model = DistilBertForQa::new(cfg, device, dtype, a.run.seed)?;
        (
            spec,
            Box::new(model) as Box<dyn QaModel>,
            tokenizer,
            train_rows,
            eval_rows,
        )
    } else {
        let spec = a
            .model
            .clone()
            .unwrap_or_else(|| "distilbert-base-cased".to_string());
        let dir = hub::resolve_model(&spec)?;
        let train_path = a.train.as_ref().context("--train")?;
        let eval_path = a
            .eval
            .as_ref()
            .context("--eval FILE is needed with --train (EM/F1 after each epoch)")?;
        let train_rows = load_qa_file(train_path, a.skip_bad_answers)?;
        let eval_rows = load_qa_file(eval_path, a.skip_bad_answers)?;
        if !a.version_2_with_negative {
            let unanswerable =
                |rows: &[QaExample]| rows.iter().filter(|e| e.answers.is_empty()).count();
            let n = unanswerable(&eval_rows);
            if n > 0 {
                bail!(
                    "{}: {n} of {} questions have no answer (SQuAD v2.0 data); pass --version-2-with-negative to train and score with unanswerable questions",
                    eval_path.display(),
                    eval_rows.len()
                );
            }
            let n = unanswerable(&train_rows);
            if n > 0 {
                eprintln!(
                    "{}: {n} questions have no answer; they train toward the [CLS] span, as run_qa.py does, but without --version-2-with-negative the model is never asked to answer \"\"",
                    train_path.display()
                );
            }
        }
        (
            ModelSource::dir(&dir)?,
            load_qa_model(&dir, device, dtype, a.run.seed)?,
            TextTokenizer::from_dir(&dir)?,
            train_rows,
            eval_rows,
        )
    };
    // After every input check, so a refused run leaves no directory behind.
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let post = PostprocessConfig {
        n_best: a.n_best,
        max_answer_length: a.max_answer_length,
        version_2_with_negative: a.version_2_with_negative,
        null_score_diff_threshold: a.null_score_diff_threshold,
    };
    let mut task = QaTask::new(
        model,
        tokenizer,
        &train_rows,
        eval_rows,
        features,
        post,
        device,
    )?;
    // Defaults: the seed's (distilbert-base-cased on SQuAD) unless built-in from scratch.
    let mut cfg = a.run.train_config(
        RunDefaults {
            epochs: if builtin { b.epochs } else { 3 },
            batch: 16,
            grad_accum: 1,
            lr: if builtin { 1e-3 } else { 2e-5 },
            warmup_ratio: if builtin { 0.1 } else { 0.0 },
        },
        out.clone(),
        fp16,
    )?;
    cfg.settings = serde_json::json!({ "model": a.model, "train": a.train, "eval": a.eval });
    let (longest, rows) = (task.longest_train_window(), train::Task::train_len(&task));
    let plan = a
        .run
        .memory_plan(&spec, &mut cfg, (longest, 0), rows, device)?;
    if a.run.mem.plan {
        return Ok(());
    }
    task.model.set_checkpointing(plan.work.checkpointing);
    eprintln!(
        "{} train windows from {} questions",
        train::Task::train_len(&task),
        train_rows.len()
    );
    evaluate_train_report(&mut task, &cfg)
}
