//! Every model family behind one face, for the code that runs "one training step of
//! whatever model this is": the VRAM planner (which runs it on the meta device) and its
//! tests (which run the same step on the CPU and compare). A family added to the crate
//! adds its arm here — config parsing and a synthetic batch — and the planner covers it
//! with no code of its own.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::models::auto::load_qa_model;
use crate::models::bart::{BartConfig, BartForConditionalGeneration, Family};
use crate::models::bert::{BertConfig, BertForQa};
use crate::models::distilbert::{DistilBertConfig, DistilBertForQa};
use crate::models::hf::config_text;
use crate::models::qa::{QaBatch, QaModel};
use crate::models::seq2seq::Seq2SeqLm;
use crate::models::t5::{T5Config, T5ForConditionalGeneration};
use crate::nn::Mode;
use crate::shape::{DType, Device};
use crate::tensor::Tensor;

/// A model's configuration, by family, as its config.json gives it.
#[derive(Clone, Debug)]
pub enum ModelConfig {
    DistilBert(DistilBertConfig),
    Bert(BertConfig),
    T5(T5Config),
    /// BART or Marian (one family, `model_type` "bart" / "marian").
    Bart(BartConfig),
}

impl ModelConfig {
    /// Read `dir/config.json` and pick the family by its `model_type`.
    pub fn from_dir(dir: &Path) -> Result<ModelConfig> {
        let (path, text) = config_text(dir)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
        let bad = |e: serde_json::Error| Error::msg(format!("{}: {e}", path.display()));
        match v.get("model_type").and_then(|m| m.as_str()) {
            Some("distilbert") => {
                let c: DistilBertConfig = serde_json::from_value(v).map_err(bad)?;
                c.validate(&path)?;
                Ok(ModelConfig::DistilBert(c))
            }
            Some("bert") => {
                let c: BertConfig = serde_json::from_value(v).map_err(bad)?;
                c.validate(&path)?;
                Ok(ModelConfig::Bert(c))
            }
            Some("t5") => Ok(ModelConfig::T5(T5Config::from_json_str(
                &text,
                &path.display().to_string(),
            )?)),
            Some("bart" | "marian") => Ok(ModelConfig::Bart(BartConfig::from_json_str(
                &text,
                &path.display().to_string(),
            )?)),
            other => Err(Error::msg(format!(
                "{}: model_type {other:?} is not a model fusebox runs (expected distilbert, \
                 bert, t5, bart or marian)",
                path.display()
            ))),
        }
    }

    /// The task head and family, as plans and reports name it.
    pub fn name(&self) -> &'static str {
        match self {
            ModelConfig::DistilBert(_) => "DistilBERT-QA",
            ModelConfig::Bert(_) => "BERT-QA",
            ModelConfig::T5(_) => "T5",
            ModelConfig::Bart(c) => match c.family() {
                Family::Bart => "BART",
                Family::Marian => "Marian",
            },
        }
    }

    /// Does a step take a target sequence (seq2seq) besides the source?
    pub fn has_target(&self) -> bool {
        matches!(self, ModelConfig::T5(_) | ModelConfig::Bart(_))
    }
}

/// Where a model comes from: its configuration, and the checkpoint directory when there
/// is one (its safetensors file decides which tensors exist, e.g. an untied LM head).
#[derive(Clone, Debug)]
pub struct ModelSource {
    pub config: ModelConfig,
    pub checkpoint: Option<PathBuf>,
}

impl ModelSource {
    /// A model built from its configuration alone (a built-in or `scratch` model).
    pub fn config(config: ModelConfig) -> ModelSource {
        ModelSource {
            config,
            checkpoint: None,
        }
    }

    /// An HF model directory (config.json + model.safetensors).
    pub fn dir(dir: &Path) -> Result<ModelSource> {
        Ok(ModelSource {
            config: ModelConfig::from_dir(dir)?,
            checkpoint: Some(dir.to_path_buf()),
        })
    }

    /// Build the model on `device` in `dtype` (on a meta device: shapes only, and a
    /// checkpoint's header is all that is read).
    pub fn build(&self, device: Device, dtype: DType, seed: u64) -> Result<Box<dyn StepModel>> {
        let dir = self.checkpoint.as_deref();
        Ok(match (&self.config, dir) {
            (ModelConfig::T5(c), None) => Box::new(T5ForConditionalGeneration::new_random(
                c.clone(),
                device,
                dtype,
                seed,
            )?),
            (ModelConfig::T5(_), Some(d)) => {
                Box::new(T5ForConditionalGeneration::load(d, device, dtype)?)
            }
            (ModelConfig::Bart(c), None) => Box::new(BartForConditionalGeneration::new_random(
                c.clone(),
                device,
                dtype,
                seed,
            )?),
            (ModelConfig::Bart(_), Some(d)) => {
                Box::new(BartForConditionalGeneration::load(d, device, dtype)?)
            }
            (ModelConfig::DistilBert(c), None) => Box::new(Qa(Box::new(DistilBertForQa::new(
                c.clone(),
                device,
                dtype,
                seed,
            )?))),
            (ModelConfig::Bert(c), None) => Box::new(Qa(Box::new(BertForQa::new(
                c.clone(),
                device,
                dtype,
                seed,
            )?))),
            (_, Some(d)) => Box::new(Qa(load_qa_model(d, device, dtype, seed)?)),
        })
    }
}

/// The shape of one micro-batch: rows, source tokens, target tokens (seq2seq only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchShape {
    pub rows: usize,
    pub seq: usize,
    pub tgt: usize,
}

/// One training (or inference) step of a model, whatever its family.
pub trait StepModel {
    /// The trainable parameters under their HF names.
    fn trainable(&self) -> Vec<(String, Tensor)>;
    fn set_checkpointing(&mut self, on: bool);
    /// The training loss of a synthetic batch of `shape` on `device` (dropout seeded by
    /// `seed`): the batch is built, used and dropped as a task's `loss` does.
    fn train_loss(&self, shape: BatchShape, device: Device, seed: u64) -> Result<Tensor>;
    /// The forward an inference step runs (`bench --mode infer`): evaluation mode, the
    /// caller under `no_grad`; T5 computes its loss too.
    fn infer(&self, shape: BatchShape, device: Device) -> Result<()>;
}

/// Token ids `1 + (i·7 mod (vocab−1))`: in range, not all the same, never padding 0.
fn ids(shape: [usize; 2], vocab: usize, device: Device) -> Result<Tensor> {
    let n = shape[0] * shape[1];
    let v = (0..n)
        .map(|i| 1 + (i * 7 % vocab.saturating_sub(1).max(1)) as i32)
        .collect();
    Tensor::from_i32(v, shape, device)
}

/// A QA model (DistilBERT or BERT) under the step face.
struct Qa(Box<dyn QaModel>);

impl Qa {
    fn batch(&self, s: BatchShape, device: Device, labels: bool) -> Result<QaBatch> {
        let (b, l) = (s.rows, s.seq);
        let pos = |off: usize| {
            let v = (0..b).map(|i| ((i * 3 + off) % l.max(1)) as i32).collect();
            Tensor::from_i32(v, [b], device)
        };
        Ok(QaBatch {
            input_ids: ids([b, l], self.0.vocab_size(), device)?,
            attention_mask: Tensor::from_i32(vec![1; b * l], [b, l], device)?,
            // The QA task's batches always carry segment ids (zeros where the model ignores
            // them), so the planned step holds them too.
            token_type_ids: Some(Tensor::from_i32(vec![0; b * l], [b, l], device)?),
            start_positions: labels.then(|| pos(0)).transpose()?,
            end_positions: labels.then(|| pos(2)).transpose()?,
        })
    }
}

impl StepModel for Qa {
    fn trainable(&self) -> Vec<(String, Tensor)> {
        self.0.params().trainable()
    }
    fn set_checkpointing(&mut self, on: bool) {
        self.0.set_checkpointing(on)
    }
    fn train_loss(&self, shape: BatchShape, device: Device, seed: u64) -> Result<Tensor> {
        let batch = self.batch(shape, device, true)?;
        let (s, e) = self.0.forward(&batch, Mode::train(seed))?;
        self.0.loss(&s, &e, &batch)
    }
    fn infer(&self, shape: BatchShape, device: Device) -> Result<()> {
        let batch = self.batch(shape, device, false)?;
        self.0.forward(&batch, Mode::eval()).map(drop)
    }
}

/// A seq2seq batch for a model of `vocab` tokens: source ids, mask and labels (the
/// last three of each row ignored, as padding is).
fn seq2seq_batch(s: BatchShape, vocab: usize, device: Device) -> Result<[Tensor; 3]> {
    let tgt = s.tgt.max(1);
    let labels: Vec<i32> = (0..s.rows * tgt)
        .map(|i| match i % tgt {
            j if j + 3 >= tgt && tgt > 3 => -100,
            _ => 2 + (i * 5 % vocab.saturating_sub(2).max(1)) as i32,
        })
        .collect();
    Ok([
        ids([s.rows, s.seq], vocab, device)?,
        Tensor::from_i32(vec![1; s.rows * s.seq], [s.rows, s.seq], device)?,
        Tensor::from_i32(labels, [s.rows, tgt], device)?,
    ])
}

/// The step face of an encoder-decoder LM: its `trainable`,
/// `set_checkpointing` and `loss` (its `Seq2SeqLm` face) on
/// [`seq2seq_batch`].
macro_rules! seq2seq_step_model {
    ($model:ty) => {
        impl StepModel for $model {
            fn trainable(&self) -> Vec<(String, Tensor)> {
                Seq2SeqLm::trainable(self)
            }
            fn set_checkpointing(&mut self, on: bool) {
                Seq2SeqLm::set_checkpointing(self, on)
            }
            fn train_loss(&self, shape: BatchShape, device: Device, seed: u64) -> Result<Tensor> {
                let [ids, mask, labels] = seq2seq_batch(shape, self.config.vocab_size, device)?;
                let (loss, _) = self.loss(&ids, Some(&mask), &labels, Mode::Train { seed })?;
                Ok(loss)
            }
            fn infer(&self, shape: BatchShape, device: Device) -> Result<()> {
                let [ids, mask, labels] = seq2seq_batch(shape, self.config.vocab_size, device)?;
                self.loss(&ids, Some(&mask), &labels, Mode::Eval).map(drop)
            }
        }
    };
}

seq2seq_step_model!(T5ForConditionalGeneration);
seq2seq_step_model!(BartForConditionalGeneration);
