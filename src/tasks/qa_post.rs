//! From start/end logits back to answer text, two ways HF does it:
//!
//! - [`postprocess_qa_predictions`]: HF's examples/pytorch/question-answering/utils_qa.py
//!   (what run_qa.py scores SQuAD with): per window the `n_best` highest start and end
//!   logits, spans inside the context with end ≥ start and at most `max_answer_length`
//!   tokens, ranked by start_logit + end_logit across all windows of an example. SQuAD
//!   v2: the null score is the *minimum* over windows of CLS start + end logit (HF's
//!   choice: every window must agree there is no answer), and the answer is empty when
//!   `null_score − best span's logit sum > null_score_diff_threshold`. That difference
//!   is returned per question as `null_score_diff` (HF's null_odds.json); run_qa.py
//!   itself passes `no_answer_probability = 0.0` to the squad_v2 metric.
//! - [`pipeline_decode`]: `pipeline("question-answering")` of transformers 4.57
//!   (`select_starts_ends` / `decode_spans` / `postprocess`): probabilities, not logits.
//!   Implemented in plain Rust on the host (the logits of one example are small); the
//!   backend's `span_search` is the batched device version of the same scoring.

use crate::error::{Error, Result};
use crate::tasks::qa::{char_to_byte, slice_chars, QaExample, QaFeature};

/// utils_qa.py's arguments (run_qa.py defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PostprocessConfig {
    pub n_best: usize,
    pub max_answer_length: usize,
    pub version_2_with_negative: bool,
    pub null_score_diff_threshold: f32,
}

impl Default for PostprocessConfig {
    fn default() -> Self {
        PostprocessConfig {
            n_best: 20,
            max_answer_length: 30,
            version_2_with_negative: false,
            null_score_diff_threshold: 0.0,
        }
    }
}

/// One n-best entry (HF's nbest_predictions.json).
#[derive(Clone, Debug, PartialEq)]
pub struct NBest {
    pub text: String,
    pub start_logit: f32,
    pub end_logit: f32,
    /// Softmax of the n-best scores.
    pub probability: f32,
}

/// The answer for one example.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub id: String,
    pub text: String,
    /// v2 only: null score − best non-null score (HF's null_odds).
    pub null_score_diff: Option<f32>,
    pub nbest: Vec<NBest>,
}

#[derive(Clone, Copy)]
struct Cand {
    offsets: (usize, usize),
    score: f32,
    start_logit: f32,
    end_logit: f32,
}

/// Indices of the `n` largest values, largest first (numpy's
/// `argsort(x)[-1:-n-1:-1]`: among equal values the later index comes first).
fn top_n(x: &[f32], n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]).then(a.cmp(&b)));
    idx.into_iter().rev().take(n).collect()
}

/// One row of start and one of end logits per window; `[who, unit]` name the caller
/// and its windows in the error.
fn check_rows(
    [who, unit]: [&str; 2],
    windows: usize,
    start: &[Vec<f32>],
    end: &[Vec<f32>],
) -> Result<()> {
    if start.len() != windows || end.len() != windows {
        return Err(Error::msg(format!(
            "{who}: {} start and {} end rows for {windows} {unit}",
            start.len(),
            end.len(),
        )));
    }
    Ok(())
}

/// utils_qa.py `postprocess_qa_predictions`; `start_logits[i]`/`end_logits[i]` belong to
/// `features[i]`. One prediction per example, in example order.
pub fn postprocess_qa_predictions(
    examples: &[QaExample],
    features: &[QaFeature],
    start_logits: &[Vec<f32>],
    end_logits: &[Vec<f32>],
    cfg: &PostprocessConfig,
) -> Result<Vec<Prediction>> {
    let who = ["QA post-processing", "features"];
    check_rows(who, features.len(), start_logits, end_logits)?;
    let mut per_example: Vec<Vec<usize>> = vec![Vec::new(); examples.len()];
    for (i, f) in features.iter().enumerate() {
        per_example
            .get_mut(f.example_index)
            .ok_or_else(|| {
                Error::msg(format!(
                    "QA post-processing: feature {i} names example {} of {}",
                    f.example_index,
                    examples.len()
                ))
            })?
            .push(i);
    }
    let mut out = Vec::with_capacity(examples.len());
    for (ex, feats) in examples.iter().zip(&per_example) {
        let mut min_null: Option<Cand> = None;
        let mut prelim = Vec::new();
        for &fi in feats {
            let (sl, el, f) = (&start_logits[fi], &end_logits[fi], &features[fi]);
            if sl.is_empty() || el.is_empty() {
                continue;
            }
            let null = sl[0] + el[0];
            if min_null.as_ref().is_none_or(|m| m.score > null) {
                min_null = Some(Cand {
                    offsets: (0, 0),
                    score: null,
                    start_logit: sl[0],
                    end_logit: el[0],
                });
            }
            let ends = top_n(el, cfg.n_best);
            for s in top_n(sl, cfg.n_best) {
                for &e in &ends {
                    let (Some(Some(so)), Some(Some(eo))) = (f.offsets.get(s), f.offsets.get(e))
                    else {
                        continue;
                    };
                    if e < s || e - s + 1 > cfg.max_answer_length {
                        continue;
                    }
                    prelim.push(Cand {
                        offsets: (so.0, eo.1),
                        score: sl[s] + el[e],
                        start_logit: sl[s],
                        end_logit: el[e],
                    });
                }
            }
        }
        let null_score = min_null.as_ref().map(|m| m.score);
        if cfg.version_2_with_negative {
            if let Some(m) = &min_null {
                prelim.push(*m);
            }
        }
        // Python's sorted(reverse=True) is stable: equal scores keep their order.
        prelim.sort_by(|a, b| b.score.total_cmp(&a.score));
        prelim.truncate(cfg.n_best);
        if cfg.version_2_with_negative && !prelim.iter().any(|p| p.offsets == (0, 0)) {
            if let Some(m) = min_null {
                prelim.push(m);
            }
        }
        let map = char_to_byte(&ex.context);
        let mut preds: Vec<(String, Cand)> = prelim
            .into_iter()
            .map(|c| {
                let t = slice_chars(&ex.context, &map, c.offsets.0, c.offsets.1).to_string();
                (t, c)
            })
            .collect();
        if preds.is_empty() || (preds.len() == 1 && preds[0].0.is_empty()) {
            preds.insert(
                0,
                (
                    "empty".into(),
                    Cand {
                        offsets: (0, 0),
                        score: 0.0,
                        start_logit: 0.0,
                        end_logit: 0.0,
                    },
                ),
            );
        }
        let max = preds
            .iter()
            .map(|p| p.1.score)
            .fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = preds.iter().map(|p| (p.1.score - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        let nbest: Vec<NBest> = preds
            .iter()
            .zip(&exps)
            .map(|((t, c), x)| NBest {
                text: t.clone(),
                start_logit: c.start_logit,
                end_logit: c.end_logit,
                probability: x / sum,
            })
            .collect();
        let (text, diff) = if !cfg.version_2_with_negative {
            (nbest[0].text.clone(), None)
        } else {
            // HF indexes past the end when every candidate is empty; we answer "".
            match nbest.iter().find(|p| !p.text.is_empty()) {
                Some(best) => {
                    let diff = null_score.unwrap_or(0.0) - best.start_logit - best.end_logit;
                    let text = if diff > cfg.null_score_diff_threshold {
                        String::new()
                    } else {
                        best.text.clone()
                    };
                    (text, Some(diff))
                }
                None => (String::new(), None),
            }
        };
        out.push(Prediction {
            id: ex.id.clone(),
            text,
            null_score_diff: diff,
            nbest,
        });
    }
    Ok(out)
}

/// `pipeline("question-answering")` arguments (its defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PipelineConfig {
    pub top_k: usize,
    pub max_answer_len: usize,
    pub handle_impossible_answer: bool,
    pub align_to_words: bool,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            top_k: 1,
            max_answer_len: 15,
            handle_impossible_answer: false,
            align_to_words: true,
        }
    }
}

/// One pipeline answer: score, character span in the context, text.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineAnswer {
    pub score: f32,
    pub start: usize,
    pub end: usize,
    pub answer: String,
}

/// Softmax over a window with undesired positions at -10000 (numpy, float32).
fn masked_softmax(logits: &[f32], desired: &[bool]) -> Vec<f32> {
    let x: Vec<f32> = logits
        .iter()
        .zip(desired)
        .map(|(&l, &d)| if d { l } else { -10000.0 })
        .collect();
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - max).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// The context character span of word `w` in this window (HF `word_to_chars`).
fn word_chars(f: &QaFeature, w: u32) -> Option<(usize, usize)> {
    let mut span: Option<(usize, usize)> = None;
    for (k, o) in f.offsets.iter().enumerate() {
        if let (Some(o), Some(wk)) = (o, f.word_ids[k]) {
            if wk == w {
                span = Some(span.map_or(*o, |(s, _)| (s, o.1)));
            }
        }
    }
    span
}

/// Decode one example from the logits of its windows as the 4.57 pipeline does:
/// per window p_mask keeps context tokens and `[CLS]`, masked logits become -10000,
/// softmax over the window, `[CLS]` probability then zeroed; span score = p_start·p_end
/// with end ≥ start and at most `max_answer_len` tokens; `2·top_k + 10` candidates per
/// window when aligning to words (spans widened to whole words); candidates with the
/// same text (case-insensitive) summed across and within windows; the best `top_k`.
pub fn pipeline_decode(
    example: &QaExample,
    features: &[&QaFeature],
    start_logits: &[Vec<f32>],
    end_logits: &[Vec<f32>],
    cfg: &PipelineConfig,
) -> Result<Vec<PipelineAnswer>> {
    let who = ["pipeline decode", "windows"];
    check_rows(who, features.len(), start_logits, end_logits)?;
    let map = char_to_byte(&example.context);
    let pre_topk = if cfg.align_to_words {
        cfg.top_k * 2 + 10
    } else {
        cfg.top_k
    };
    let mut min_null = 1_000_000f32;
    let mut answers: Vec<PipelineAnswer> = Vec::new();
    for ((f, sl), el) in features.iter().zip(start_logits).zip(end_logits) {
        let n = f.len();
        if sl.len() != n || el.len() != n {
            return Err(Error::msg(format!(
                "pipeline decode: logits of length {}/{} for a window of {n} tokens",
                sl.len(),
                el.len()
            )));
        }
        let desired: Vec<bool> = (0..n)
            .map(|k| (f.offsets[k].is_some() || k == f.cls_index) && f.attention_mask[k] != 0)
            .collect();
        let mut ps = masked_softmax(sl, &desired);
        let mut pe = masked_softmax(el, &desired);
        if n == 0 {
            continue;
        }
        if cfg.handle_impossible_answer {
            min_null = min_null.min(ps[0] * pe[0]);
        }
        ps[0] = 0.0;
        pe[0] = 0.0;
        let mut cands: Vec<(usize, usize, f32)> = Vec::new();
        for s in (0..n).filter(|&s| desired[s]) {
            for e in (s..n.min(s + cfg.max_answer_len)).filter(|&e| desired[e]) {
                cands.push((s, e, ps[s] * pe[e]));
            }
        }
        // numpy's argsort of -score; ties keep row-major order here.
        cands.sort_by(|a, b| b.2.total_cmp(&a.2));
        cands.truncate(pre_topk);
        for (s, e, score) in cands {
            let plain = || {
                (
                    f.offsets[s].map_or(0, |o| o.0),
                    f.offsets[e].map_or(0, |o| o.1),
                )
            };
            let (cs, ce) = if cfg.align_to_words {
                match (f.word_ids[s], f.word_ids[e]) {
                    (Some(ws), Some(we)) => match (word_chars(f, ws), word_chars(f, we)) {
                        (Some(a), Some(b)) => (a.0, b.1),
                        _ => plain(),
                    },
                    _ => plain(),
                }
            } else {
                plain()
            };
            let text = slice_chars(&example.context, &map, cs, ce).to_string();
            let lower = text.to_lowercase();
            match answers
                .iter_mut()
                .find(|a| a.answer.to_lowercase() == lower)
            {
                Some(a) => a.score += score,
                None => answers.push(PipelineAnswer {
                    score,
                    start: cs,
                    end: ce,
                    answer: text,
                }),
            }
        }
    }
    if cfg.handle_impossible_answer {
        answers.push(PipelineAnswer {
            score: min_null,
            start: 0,
            end: 0,
            answer: String::new(),
        });
    }
    answers.sort_by(|a, b| b.score.total_cmp(&a.score));
    answers.truncate(cfg.top_k);
    Ok(answers)
}
