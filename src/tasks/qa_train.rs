//! Extractive QA as a `train::Task`: HF run_qa.py's pipeline on fusebox pieces. Train
//! windows from `tasks::qa`, the loss of any `QaModel` (BERT or DistilBERT alike),
//! evaluation by utils_qa-style post-processing scored with the official SQuAD v1.1 /
//! v2.0 scripts' numbers (`metrics::squad`; v2 with every no-answer probability 0.0, as
//! run_qa.py passes it), and checkpoints in HF layout with the tokenizer beside them.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::metrics::squad::{evaluate_v1, evaluate_v2, GoldQuestion, V2Options};
use crate::models::qa::QaModel;
use crate::nn::Mode;
use crate::shape::Device;
use crate::tasks::qa::{
    make_batch, pipeline_decode, postprocess_qa_predictions, FeatureConfig, PipelineAnswer,
    PipelineConfig, PostprocessConfig, Prediction, QaExample, QaFeature, QaPreprocessor,
};
use crate::tensor::Tensor;
use crate::tokenize::TextTokenizer;
use crate::train::Task;

/// Per-window rows of logits.
pub type Rows = Vec<Vec<f32>>;

pub struct QaTask {
    pub model: Box<dyn QaModel>,
    tokenizer: TextTokenizer,
    train: Vec<QaFeature>,
    eval_examples: Vec<QaExample>,
    eval_features: Vec<QaFeature>,
    pub post: PostprocessConfig,
    pub eval_batch: usize,
    device: Device,
}

impl QaTask {
    /// Build train and eval windows. `post.version_2_with_negative` picks the v2 metric.
    pub fn new(
        model: Box<dyn QaModel>,
        tokenizer: TextTokenizer,
        train: &[QaExample],
        eval: Vec<QaExample>,
        features: FeatureConfig,
        post: PostprocessConfig,
        device: Device,
    ) -> Result<QaTask> {
        let (tv, mv) = (tokenizer.vocab_size(), model.vocab_size());
        if tv > mv {
            return Err(Error::msg(format!(
                "{}: the tokenizer has {tv} tokens but the model's embedding has {mv} rows \
                 (config.json vocab_size)",
                tokenizer.source().display()
            )));
        }
        if features.max_length > model.max_positions() {
            return Err(Error::msg(format!(
                "max_length {} exceeds the model's max_position_embeddings {}",
                features.max_length,
                model.max_positions()
            )));
        }
        let pre = QaPreprocessor::new(&tokenizer, features)?;
        let train = pre.train_features(train)?;
        let eval_features = pre.eval_features(&eval)?;
        Ok(QaTask {
            model,
            tokenizer,
            train,
            eval_examples: eval,
            eval_features,
            post,
            eval_batch: 32,
            device,
        })
    }

    /// Tokens in the longest training window: with dynamic padding no batch is longer,
    /// so the memory plan uses it instead of `max_length`.
    pub fn longest_train_window(&self) -> usize {
        self.train
            .iter()
            .map(|f| f.input_ids.len())
            .max()
            .unwrap_or(0)
    }

    pub fn eval_features(&self) -> &[QaFeature] {
        &self.eval_features
    }

    /// Start/end logits of every eval window (each row cut to its window's length).
    pub fn eval_logits(&self) -> Result<(Rows, Rows)> {
        let _g = no_grad();
        let (mut st, mut en) = (Vec::new(), Vec::new());
        let pad = self.model.pad_token_id();
        for chunk in self.eval_features.chunks(self.eval_batch.max(1)) {
            let refs: Vec<&QaFeature> = chunk.iter().collect();
            let batch = make_batch(&refs, pad, self.device)?;
            let (s, e) = self.model.forward(&batch, Mode::eval())?;
            let l = s.dims()[1];
            let (s, e) = (s.to_vec_f32()?, e.to_vec_f32()?);
            for (i, f) in chunk.iter().enumerate() {
                st.push(s[i * l..i * l + f.len()].to_vec());
                en.push(e[i * l..i * l + f.len()].to_vec());
            }
        }
        Ok((st, en))
    }

    /// One answer per eval example (utils_qa post-processing).
    pub fn predict(&self) -> Result<Vec<Prediction>> {
        let (st, en) = self.eval_logits()?;
        postprocess_qa_predictions(
            &self.eval_examples,
            &self.eval_features,
            &st,
            &en,
            &self.post,
        )
    }

    /// SQuAD EM/F1 of `predictions` (×100, as the official scripts print them).
    pub fn score(&self, predictions: &[Prediction]) -> Result<Map<String, Value>> {
        let gold: Vec<GoldQuestion> = self
            .eval_examples
            .iter()
            .map(|e| GoldQuestion {
                id: e.id.clone(),
                answers: e.answers.iter().map(|a| a.text.clone()).collect(),
            })
            .collect();
        let preds: HashMap<String, String> = predictions
            .iter()
            .map(|p| (p.id.clone(), p.text.clone()))
            .collect();
        let mut m = Map::new();
        if self.post.version_2_with_negative {
            let r = evaluate_v2(&gold, &preds, &V2Options::default())?;
            for (k, v) in &r.entries {
                m.insert(k.clone(), json!(v.value()));
            }
        } else {
            let r = evaluate_v1(&gold, &preds)?;
            m.insert("exact_match".into(), json!(r.exact_match));
            m.insert("f1".into(), json!(r.f1));
        }
        m.insert("eval_examples".into(), json!(predictions.len()));
        m.insert("eval_windows".into(), json!(self.eval_features.len()));
        Ok(m)
    }
}

/// `pipeline("question-answering")(question=..., context=...)`: windows of `features`
/// (the pipeline's defaults are max_length 384, stride 128, no padding), one forward in
/// evaluation mode, and the pipeline's decoding.
pub fn answer_question(
    model: &dyn QaModel,
    tokenizer: &TextTokenizer,
    question: &str,
    context: &str,
    features: FeatureConfig,
    decode: &PipelineConfig,
    device: Device,
) -> Result<Vec<PipelineAnswer>> {
    let _g = no_grad();
    let ex = QaExample {
        id: String::new(),
        question: question.to_string(),
        context: context.to_string(),
        answers: Vec::new(),
    };
    let feats =
        QaPreprocessor::new(tokenizer, features)?.eval_features(std::slice::from_ref(&ex))?;
    let refs: Vec<&QaFeature> = feats.iter().collect();
    let batch = make_batch(&refs, model.pad_token_id(), device)?;
    let (s, e) = model.forward(&batch, Mode::eval())?;
    let l = s.dims()[1];
    let (s, e) = (s.to_vec_f32()?, e.to_vec_f32()?);
    let rows = |v: &[f32]| -> Rows {
        feats
            .iter()
            .enumerate()
            .map(|(i, f)| v[i * l..i * l + f.len()].to_vec())
            .collect()
    };
    pipeline_decode(&ex, &refs, &rows(&s), &rows(&e), decode)
}

impl Task for QaTask {
    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn loss(&mut self, idx: &[usize], seed: u64) -> Result<(Tensor, usize)> {
        let feats: Vec<&QaFeature> = idx
            .iter()
            .map(|&i| {
                self.train
                    .get(i)
                    .ok_or_else(|| Error::msg(format!("QA task: row {i} of {}", self.train.len())))
            })
            .collect::<Result<_>>()?;
        let tokens = feats
            .iter()
            .map(|f| f.attention_mask.iter().filter(|&&m| m != 0).count())
            .sum();
        let batch = make_batch(&feats, self.model.pad_token_id(), self.device)?;
        let (s, e) = self.model.forward(&batch, Mode::train(seed))?;
        Ok((self.model.loss(&s, &e, &batch)?, tokens))
    }

    fn evaluate(&mut self) -> Result<Map<String, Value>> {
        let preds = self.predict()?;
        self.score(&preds)
    }

    fn params(&self) -> Vec<(String, Tensor)> {
        self.model.params().trainable()
    }

    fn save(&self, dir: &Path) -> Result<()> {
        self.model.save(dir)?;
        self.tokenizer.save_to(dir)
    }

    fn headline_metric(&self) -> &'static str {
        "f1"
    }

    fn data_fingerprint(&self) -> String {
        crate::train::fingerprint(self.train.iter().flat_map(|f| {
            let (s, e) = f.positions.unwrap_or((usize::MAX, usize::MAX));
            f.input_ids
                .iter()
                .chain(&f.token_type_ids)
                .map(|&x| x as u64)
                .chain([s as u64, e as u64])
        }))
    }
}
