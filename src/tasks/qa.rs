//! Extractive QA features, as HF's examples/pytorch/question-answering/run_qa.py builds
//! them (`prepare_train_features`, `prepare_validation_features`).
//!
//! Each (question, context) pair becomes one or more windows of `max_length` tokens:
//! `[CLS] question [SEP] context-slice [SEP]`, only the context truncated, consecutive
//! windows sharing `stride` context tokens. The windowing is the `tokenizers` crate's
//! own overflow logic (`Encoding::truncate` + the post-processor), i.e. the code
//! transformers' fast tokenizers run, so window boundaries, offsets and sequence ids are
//! HF's (checked against transformers in tests/qa_features.rs). Train windows get start/end token
//! positions (CLS when the answer is not wholly inside, or when there is none); eval
//! windows keep character offsets of context tokens only. Post-processing (n-best span
//! search, v2 null answers, pipeline-style decoding) lives in `qa_post.rs`.

use rayon::prelude::*;
use tokenizers::TruncationDirection;

use crate::error::{Error, Result};
use crate::models::qa::QaBatch;
use crate::shape::Device;
use crate::tokenize::TextTokenizer;

pub use super::qa_post::{
    pipeline_decode, postprocess_qa_predictions, NBest, PipelineAnswer, PipelineConfig,
    PostprocessConfig, Prediction,
};

/// One gold answer: its text and the character (not byte) offset where it starts in the
/// context, as SQuAD's `answer_start`.
#[derive(Clone, Debug, PartialEq)]
pub struct QaAnswer {
    pub text: String,
    pub start: usize,
}

/// One question about one context. No answers = unanswerable (SQuAD v2).
#[derive(Clone, Debug, PartialEq)]
pub struct QaExample {
    pub id: String,
    pub question: String,
    pub context: String,
    pub answers: Vec<QaAnswer>,
}

impl From<&crate::data::squad::QaExample> for QaExample {
    /// A loaded SQuAD question; `is_impossible` ones get no answers (run_qa.py reads
    /// only `answers`, which SQuAD v2 leaves empty for them).
    fn from(e: &crate::data::squad::QaExample) -> QaExample {
        QaExample {
            id: e.id.clone(),
            question: e.question.clone(),
            context: e.context.clone(),
            answers: if e.is_impossible {
                Vec::new()
            } else {
                e.answers
                    .iter()
                    .map(|a| QaAnswer {
                        text: a.text.clone(),
                        start: a.answer_start,
                    })
                    .collect()
            },
        }
    }
}

/// run_qa.py's defaults: `max_seq_length` 384, `doc_stride` 128, `pad_to_max_length`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FeatureConfig {
    pub max_length: usize,
    /// Context tokens shared by consecutive windows.
    pub stride: usize,
    /// Pad every window to `max_length` (else windows keep their own length).
    pub pad_to_max_length: bool,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            max_length: 384,
            stride: 128,
            pad_to_max_length: true,
        }
    }
}

/// One window of one example.
#[derive(Clone, Debug, PartialEq)]
pub struct QaFeature {
    /// Index of the example in the slice given to the feature builder.
    pub example_index: usize,
    pub example_id: String,
    pub input_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    /// Character offsets in the context of context tokens; `None` for the question,
    /// special tokens and padding (HF sets them to None in validation features).
    pub offsets: Vec<Option<(usize, usize)>>,
    /// Word index of each context token within the context (for word alignment).
    pub word_ids: Vec<Option<u32>>,
    /// Position of `[CLS]` (0 when the tokenizer has none), the "no answer" target.
    pub cls_index: usize,
    /// Train features: (start, end) token positions of the answer, or (cls, cls).
    pub positions: Option<(usize, usize)>,
}

impl QaFeature {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
}

/// A window straight from the tokenizer, padded, before HF's per-feature logic.
struct Window {
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    attention: Vec<u32>,
    offsets: Vec<(usize, usize)>,
    seq: Vec<Option<usize>>,
    words: Vec<Option<u32>>,
}

/// Builds features as HF's `truncation="only_second"` with overflowing windows does.
pub struct QaPreprocessor {
    tok: TextTokenizer,
    cfg: FeatureConfig,
    added: usize,
}

impl QaPreprocessor {
    pub fn new(tokenizer: &TextTokenizer, cfg: FeatureConfig) -> Result<QaPreprocessor> {
        if cfg.stride >= cfg.max_length {
            return Err(Error::msg(format!(
                "QA features: stride {} must be smaller than max_length {}",
                cfg.stride, cfg.max_length
            )));
        }
        Ok(QaPreprocessor {
            tok: tokenizer.clone(),
            cfg,
            added: tokenizer.added_tokens_pair(),
        })
    }

    pub fn config(&self) -> FeatureConfig {
        self.cfg
    }

    fn windows(&self, ex: &QaExample) -> Result<Vec<Window>> {
        // run_qa.py strips leading whitespace from questions: some SQuAD questions carry a
        // lot of it, and it would eat the context's budget.
        let question = ex.question.trim_start();
        let q = self.tok.encode(question, false)?;
        let mut ctx = self.tok.encode(ex.context.as_str(), false)?;
        let budget = self
            .cfg
            .max_length
            .saturating_sub(self.added)
            .saturating_sub(q.len());
        if q.len() + ctx.len() + self.added > self.cfg.max_length && budget <= self.cfg.stride {
            return Err(Error::msg(format!(
                "example {:?}: the question has {} tokens, leaving {budget} context tokens per \
                 window of {}, not more than the stride {} (shorten the question, raise --max-length or lower --stride)",
                ex.id,
                q.len(),
                self.cfg.max_length,
                self.cfg.stride
            )));
        }
        // The windows are `Encoding::truncate`'s overflow parts, as in HF; we cut them
        // ourselves because tokenizers 0.23.2's `encode` with OnlySecond truncation stops
        // tokenizing the second sequence at `max_length` tokens before the overflow is
        // computed, which silently drops every window past the context's first
        // `max_length` tokens (transformers' Python binding does not).
        ctx.truncate(budget, self.cfg.stride, TruncationDirection::Right);
        let rest = ctx.take_overflowing();
        let mut encs = Vec::with_capacity(1 + rest.len());
        for part in std::iter::once(ctx).chain(rest) {
            encs.push(
                self.tok
                    .inner()
                    .post_process(q.clone(), Some(part), true)
                    .map_err(|e| Error::msg(format!("example {:?}: {e}", ex.id)))?,
            );
        }
        let pad_id = self.tok.pad_id;
        let mut out = Vec::with_capacity(encs.len());
        for e in encs {
            let mut w = Window {
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
                attention: e.get_attention_mask().to_vec(),
                offsets: e.get_offsets().to_vec(),
                seq: e.get_sequence_ids(),
                words: e.get_word_ids().to_vec(),
            };
            if self.cfg.pad_to_max_length && w.ids.len() < self.cfg.max_length {
                let n = self.cfg.max_length - w.ids.len();
                w.ids.extend(std::iter::repeat_n(pad_id, n));
                w.type_ids.extend(std::iter::repeat_n(0, n));
                w.attention.extend(std::iter::repeat_n(0, n));
                w.offsets.extend(std::iter::repeat_n((0, 0), n));
                w.seq.extend(std::iter::repeat_n(None, n));
                w.words.extend(std::iter::repeat_n(None, n));
            }
            out.push(w);
        }
        Ok(out)
    }

    fn cls_index(&self, ids: &[u32]) -> usize {
        self.tok
            .cls_id
            .and_then(|c| ids.iter().position(|&i| i == c))
            .unwrap_or(0)
    }

    /// `prepare_train_features`: windows with answer token positions. Only the first
    /// answer is used, as in run_qa.py.
    pub fn train_features(&self, examples: &[QaExample]) -> Result<Vec<QaFeature>> {
        let per: Vec<Vec<QaFeature>> = examples
            .par_iter()
            .enumerate()
            .map(|(i, ex)| self.train_example(i, ex))
            .collect::<Result<_>>()?;
        Ok(per.into_iter().flatten().collect())
    }

    fn train_example(&self, index: usize, ex: &QaExample) -> Result<Vec<QaFeature>> {
        let answer = match ex.answers.first() {
            Some(a) => Some(answer_chars(ex, a)?),
            None => None,
        };
        let mut out = Vec::new();
        for w in self.windows(ex)? {
            let cls = self.cls_index(&w.ids);
            let positions = match answer {
                None => (cls, cls),
                Some((start_char, end_char)) => {
                    answer_positions(&w.offsets, &w.seq, start_char, end_char).unwrap_or((cls, cls))
                }
            };
            out.push(self.feature(index, ex, w, cls, Some(positions)));
        }
        Ok(out)
    }

    /// `prepare_validation_features`: windows with context-only offsets and the example id.
    pub fn eval_features(&self, examples: &[QaExample]) -> Result<Vec<QaFeature>> {
        let per: Vec<Vec<QaFeature>> = examples
            .par_iter()
            .enumerate()
            .map(|(i, ex)| {
                let ws = self.windows(ex)?;
                Ok(ws
                    .into_iter()
                    .map(|w| {
                        let cls = self.cls_index(&w.ids);
                        self.feature(i, ex, w, cls, None)
                    })
                    .collect())
            })
            .collect::<Result<_>>()?;
        Ok(per.into_iter().flatten().collect())
    }

    fn feature(
        &self,
        index: usize,
        ex: &QaExample,
        w: Window,
        cls: usize,
        positions: Option<(usize, usize)>,
    ) -> QaFeature {
        let in_context = |k: usize| w.seq[k] == Some(1);
        QaFeature {
            example_index: index,
            example_id: ex.id.clone(),
            offsets: (0..w.ids.len())
                .map(|k| in_context(k).then_some(w.offsets[k]))
                .collect(),
            word_ids: (0..w.ids.len())
                .map(|k| if in_context(k) { w.words[k] } else { None })
                .collect(),
            input_ids: w.ids,
            attention_mask: w.attention,
            token_type_ids: w.type_ids,
            cls_index: cls,
            positions,
        }
    }
}

/// The answer's character span `[start, end)`, checked against the context.
fn answer_chars(ex: &QaExample, a: &QaAnswer) -> Result<(usize, usize)> {
    let n_chars = a.text.chars().count();
    let end = a.start + n_chars;
    let found: String = ex.context.chars().skip(a.start).take(n_chars).collect();
    if found != a.text {
        return Err(Error::msg(format!(
            "example {:?}: answer {:?} at character {} does not match the context there ({:?})",
            ex.id, a.text, a.start, found
        )));
    }
    Ok((a.start, end))
}

/// run_qa.py's token positions for an answer `[start_char, end_char)`, or None when it
/// is not wholly inside this window's context. Kept exactly as HF writes it, including
/// that the start scan walks past the context into `[SEP]`/padding (offsets (0, 0)) when
/// the answer starts in the window's last context token.
fn answer_positions(
    offsets: &[(usize, usize)],
    seq: &[Option<usize>],
    start_char: usize,
    end_char: usize,
) -> Option<(usize, usize)> {
    let first = seq.iter().position(|s| *s == Some(1))?;
    let last = seq.iter().rposition(|s| *s == Some(1))?;
    if !(offsets[first].0 <= start_char && offsets[last].1 >= end_char) {
        return None;
    }
    let mut s = first;
    while s < offsets.len() && offsets[s].0 <= start_char {
        s += 1;
    }
    let mut e = last;
    while offsets[e].1 >= end_char {
        if e == 0 {
            break;
        }
        e -= 1;
    }
    Some((s - 1, e + 1))
}

/// Character index → byte index of `text` (one entry per char, plus the end).
pub fn char_to_byte(text: &str) -> Vec<usize> {
    let mut v: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
    v.push(text.len());
    v
}

/// `text[start..end]` in characters, empty when out of range or reversed.
pub fn slice_chars<'a>(text: &'a str, map: &[usize], start: usize, end: usize) -> &'a str {
    if start >= end || end >= map.len() {
        return "";
    }
    &text[map[start]..map[end]]
}

/// Stack features into a model batch, right-padding each row to the longest in the
/// batch with `pad_id` (no-op for features already padded to `max_length`); positions
/// are included when every feature has them, clamped on the host to [0, L] with L the
/// padded length (HF's clamp; `QaBatch::from_rows`), so the loss reads nothing back.
pub fn make_batch(features: &[&QaFeature], pad_id: u32, device: Device) -> Result<QaBatch> {
    let l = features.iter().map(|f| f.len()).max().unwrap_or(0);
    let pad = |v: &[u32], with: u32| -> Vec<u32> {
        let mut r = v.to_vec();
        r.resize(l, with);
        r
    };
    let ids: Vec<Vec<u32>> = features.iter().map(|f| pad(&f.input_ids, pad_id)).collect();
    let mask: Vec<Vec<u32>> = features.iter().map(|f| pad(&f.attention_mask, 0)).collect();
    let tt: Vec<Vec<u32>> = features.iter().map(|f| pad(&f.token_type_ids, 0)).collect();
    let pos: Option<Vec<(usize, usize)>> = features.iter().map(|f| f.positions).collect();
    let (s, e): (Vec<usize>, Vec<usize>) = pos.clone().unwrap_or_default().into_iter().unzip();
    QaBatch::from_rows(
        &ids,
        &mask,
        Some(&tt),
        pos.as_ref().map(|_| (s.as_slice(), e.as_slice())),
        device,
    )
}
