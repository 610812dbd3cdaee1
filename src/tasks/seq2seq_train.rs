//! Text-to-text training for any encoder-decoder LM (`Seq2SeqLm`: summarization and
//! translation): tokenized pairs, DataCollatorForSeq2Seq-style batches (inputs padded
//! with pad, labels with -100), teacher-forced loss, and per-epoch evaluation by
//! generating (with the model's generation configuration and the run's overrides, as
//! Seq2SeqTrainer's `predict_with_generate` does) and scoring with ROUGE (rouge-score
//! semantics) or BLEU (sacrebleu semantics).

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::autograd::no_grad;
use crate::data::seq2seq::Seq2SeqExample;
use crate::error::{Error, Result};
use crate::metrics::{bleu, rouge};
use crate::models::seq2seq::Seq2SeqLm;
use crate::nn::Mode;
use crate::ops::softmax::IGNORE_INDEX;
use crate::shape::Device;
use crate::tasks::generate::{generate, GenerateConfig};
use crate::tensor::Tensor;
use crate::tokenize::seq2seq::Seq2SeqTokenizer;
use crate::train::Task;

/// Which metric evaluation reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seq2SeqKind {
    Summarize,
    Translate,
}

/// Tokenized training pair.
struct Pair {
    src: Vec<i32>,
    tgt: Vec<i32>,
}

pub struct Seq2SeqTask {
    pub model: Box<dyn Seq2SeqLm>,
    tokenizer: Seq2SeqTokenizer,
    tokenizer_dir: PathBuf,
    train: Vec<Pair>,
    eval: Vec<Seq2SeqExample>,
    kind: Seq2SeqKind,
    /// What evaluation generates with: the model's generation configuration with the
    /// run's overrides (checkpoints keep the model's own).
    pub generation: GenerateConfig,
    max_source: usize,
    eval_batch: usize,
    device: Device,
    pad: i32,
}

/// Pad rows to one length: ids with `pad`, and a 1/0 mask.
fn pad_rows(rows: &[&[i32]], pad: i32, device: Device) -> Result<(Tensor, Tensor)> {
    let l = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
    let mut ids = Vec::with_capacity(rows.len() * l);
    let mut mask = Vec::with_capacity(rows.len() * l);
    for r in rows {
        ids.extend_from_slice(r);
        mask.extend(std::iter::repeat_n(1, r.len()));
        ids.extend(std::iter::repeat_n(pad, l - r.len()));
        mask.extend(std::iter::repeat_n(0, l - r.len()));
    }
    Ok((
        Tensor::from_i32(ids, [rows.len(), l], device)?,
        Tensor::from_i32(mask, [rows.len(), l], device)?,
    ))
}

impl Seq2SeqTask {
    /// The longest training source and target (after truncation): batches are padded
    /// to their own longest row, so the memory plan uses these instead of the limits.
    pub fn longest_train_lengths(&self) -> (usize, usize) {
        self.train
            .iter()
            .fold((0, 0), |(s, t), p| (s.max(p.src.len()), t.max(p.tgt.len())))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: Box<dyn Seq2SeqLm>,
        tokenizer_dir: &Path,
        train: &[Seq2SeqExample],
        eval: Vec<Seq2SeqExample>,
        kind: Seq2SeqKind,
        generation: GenerateConfig,
        max_source: usize,
        max_target: usize,
        device: Device,
    ) -> Result<Seq2SeqTask> {
        let tokenizer = Seq2SeqTokenizer::from_dir(tokenizer_dir)?;
        let pad = model.pad_token_id();
        let vocab = tokenizer.vocab_size();
        let model_vocab = model.vocab_size();
        if vocab > model_vocab {
            return Err(Error::msg(format!(
                "{}: the tokenizer has {vocab} tokens but the model's embedding has {model_vocab} rows (config.json vocab_size)",
                tokenizer_dir.display()
            )));
        }
        let mut pairs = Vec::with_capacity(train.len());
        for ex in train {
            pairs.push(Pair {
                src: tokenizer.encode_source(&ex.source, Some(max_source))?,
                tgt: tokenizer.encode_target(&ex.target, Some(max_target))?,
            });
        }
        Ok(Seq2SeqTask {
            model,
            tokenizer,
            tokenizer_dir: tokenizer_dir.to_path_buf(),
            train: pairs,
            eval,
            kind,
            generation,
            max_source,
            eval_batch: 16,
            device,
            pad,
        })
    }

    /// Generate for `sources` (greedy or beam per `self.generation`) and decode.
    pub fn predict(&self, sources: &[String]) -> Result<Vec<String>> {
        let _g = no_grad();
        let mut out = Vec::with_capacity(sources.len());
        for chunk in sources.chunks(self.eval_batch.max(1)) {
            let enc: Vec<Vec<i32>> = chunk
                .iter()
                .map(|s| self.tokenizer.encode_source(s, Some(self.max_source)))
                .collect::<Result<_>>()?;
            let rows: Vec<&[i32]> = enc.iter().map(|v| v.as_slice()).collect();
            let (ids, mask) = pad_rows(&rows, self.pad, self.device)?;
            let g = generate(self.model.as_ref(), &ids, Some(&mask), &self.generation)?;
            // Scored: the best sequence of each input.
            let per_input = g.sequences.len() / chunk.len().max(1);
            for seq in g.sequences.into_iter().step_by(per_input.max(1)) {
                let ids: Vec<i32> = seq.into_iter().filter(|&t| t >= 0).collect();
                let text = self.tokenizer.decode(&ids, true)?;
                out.push(text.trim().to_string());
            }
        }
        Ok(out)
    }

    /// ROUGE (×100, F-measures) or BLEU of generated outputs on the eval set.
    pub fn score(&self, predictions: &[String]) -> Result<Map<String, Value>> {
        let refs: Vec<String> = self.eval.iter().map(|e| e.target.clone()).collect();
        let mut m = Map::new();
        match self.kind {
            Seq2SeqKind::Summarize => {
                let r = rouge::mean_scores(&refs, predictions, true)?;
                for (name, s) in r.named() {
                    m.insert(name.to_string(), json!(s.fmeasure * 100.0));
                }
            }
            Seq2SeqKind::Translate => {
                let b = bleu::corpus_bleu(predictions, &[refs], &bleu::BleuOptions::default())?;
                m.insert("bleu".into(), json!(b.score));
                m.insert("bleu_bp".into(), json!(b.bp));
                m.insert("bleu_precisions".into(), json!(b.precisions));
            }
        }
        m.insert("eval_examples".into(), json!(predictions.len()));
        Ok(m)
    }
}

impl Task for Seq2SeqTask {
    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn loss(&mut self, idx: &[usize], seed: u64) -> Result<(Tensor, usize)> {
        let srcs: Vec<&[i32]> = idx.iter().map(|&i| self.train[i].src.as_slice()).collect();
        let (ids, mask) = pad_rows(&srcs, self.pad, self.device)?;
        let tl = idx
            .iter()
            .map(|&i| self.train[i].tgt.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let mut labels = Vec::with_capacity(idx.len() * tl);
        let mut tokens = 0;
        for &i in idx {
            let t = &self.train[i].tgt;
            labels.extend_from_slice(t);
            labels.extend(std::iter::repeat_n(IGNORE_INDEX, tl - t.len()));
            tokens += t.len() + self.train[i].src.len();
        }
        let labels = Tensor::from_i32(labels, [idx.len(), tl], self.device)?;
        let (loss, _) = self
            .model
            .loss(&ids, Some(&mask), &labels, Mode::Train { seed })?;
        Ok((loss, tokens))
    }

    fn evaluate(&mut self) -> Result<Map<String, Value>> {
        let sources: Vec<String> = self.eval.iter().map(|e| e.source.clone()).collect();
        let preds = self.predict(&sources)?;
        self.score(&preds)
    }

    fn params(&self) -> Vec<(String, Tensor)> {
        self.model.trainable()
    }

    fn save(&self, dir: &Path) -> Result<()> {
        self.model.save(dir)?;
        // The files AutoTokenizer reads back (T5, BART or Marian), and a T5's
        // SentencePiece model for its slow tokenizer.
        self.tokenizer.save_to(dir)?;
        let (src, dst) = (
            self.tokenizer_dir.join("spiece.model"),
            dir.join("spiece.model"),
        );
        if src.is_file() && src != dst {
            std::fs::copy(&src, &dst).map_err(|e| Error::io(&dst, e))?;
        }
        Ok(())
    }

    fn headline_metric(&self) -> &'static str {
        match self.kind {
            Seq2SeqKind::Summarize => "rougeL",
            Seq2SeqKind::Translate => "bleu",
        }
    }
    fn data_fingerprint(&self) -> String {
        crate::train::fingerprint(self.train.iter().flat_map(|p| {
            let sep = [u64::MAX];
            p.src
                .iter()
                .map(|&x| x as u64)
                .chain(sep)
                .chain(p.tgt.iter().map(|&x| x as u64))
                .chain(sep)
        }))
    }
}
