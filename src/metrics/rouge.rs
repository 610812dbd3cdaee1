//! ROUGE-1/2/L/Lsum equal to google-research `rouge-score` 0.1.2 (`RougeScorer` with its
//! default tokenizer; optional Porter stemmer as that package runs it, see `porter`).
//!
//! Built as a literal port: tokens are the `[a-z0-9]` runs of the Unicode-lowercased text,
//! tokens longer than 3 characters are stemmed when asked, n-gram overlap is clipped
//! counts, rougeL is token LCS and rougeLsum is the summary-level union-LCS over lines
//! (split on "\n", empty lines dropped) with the double-count guard of ROUGE-1.5.5.
//! Integer counts and one division per value keep results bit-identical to Python.

use std::collections::HashMap;

use super::porter;
use crate::error::{Error, Result};

/// Precision, recall and F1 of one ROUGE variant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Score {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
}

impl Score {
    fn new(precision: f64, recall: f64) -> Score {
        // rouge_score.scoring.fmeasure
        let fmeasure = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Score {
            precision,
            recall,
            fmeasure,
        }
    }
}

/// The four variants fusebox reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RougeScores {
    pub rouge1: Score,
    pub rouge2: Score,
    pub rouge_l: Score,
    pub rouge_lsum: Score,
}

impl RougeScores {
    /// `(name, score)` in rouge-score's naming, for printing.
    pub fn named(&self) -> [(&'static str, Score); 4] {
        [
            ("rouge1", self.rouge1),
            ("rouge2", self.rouge2),
            ("rougeL", self.rouge_l),
            ("rougeLsum", self.rouge_lsum),
        ]
    }
}

/// `rouge_score.tokenize.tokenize` with the default tokenizer.
pub fn tokenize(text: &str, use_stemmer: bool) -> Vec<String> {
    let lower = text.to_lowercase();
    lower
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(|t| {
            if use_stemmer && t.len() > 3 {
                porter::stem(t)
            } else {
                t.to_string()
            }
        })
        .filter(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        .collect()
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut m = HashMap::new();
    if n > 0 && tokens.len() >= n {
        for w in tokens.windows(n) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

/// ROUGE-N from token lists (`_score_ngrams`).
pub fn rouge_n(target: &[String], prediction: &[String], n: usize) -> Score {
    let t = ngrams(target, n);
    let p = ngrams(prediction, n);
    let inter: usize = t
        .iter()
        .map(|(g, c)| (*c).min(p.get(g).copied().unwrap_or(0)))
        .sum();
    let tc: usize = t.values().sum();
    let pc: usize = p.values().sum();
    Score::new(
        inter as f64 / pc.max(1) as f64,
        inter as f64 / tc.max(1) as f64,
    )
}

fn lcs_table(r: &[String], c: &[String]) -> Vec<Vec<usize>> {
    let mut t = vec![vec![0usize; c.len() + 1]; r.len() + 1];
    for i in 1..=r.len() {
        for j in 1..=c.len() {
            t[i][j] = if r[i - 1] == c[j - 1] {
                t[i - 1][j - 1] + 1
            } else {
                t[i - 1][j].max(t[i][j - 1])
            };
        }
    }
    t
}

/// ROUGE-L from token lists (`_score_lcs`).
pub fn rouge_l(target: &[String], prediction: &[String]) -> Score {
    if target.is_empty() || prediction.is_empty() {
        return Score::default();
    }
    let lcs = lcs_table(target, prediction)[target.len()][prediction.len()];
    Score::new(
        lcs as f64 / prediction.len() as f64,
        lcs as f64 / target.len() as f64,
    )
}

/// Indices into `r` of one LCS, chosen the way `_backtrack_norec` chooses it.
fn lcs_indices(r: &[String], c: &[String]) -> Vec<usize> {
    let t = lcs_table(r, c);
    let (mut i, mut j) = (r.len(), c.len());
    let mut out = Vec::new();
    while i > 0 && j > 0 {
        if r[i - 1] == c[j - 1] {
            out.push(i - 1);
            i -= 1;
            j -= 1;
        } else if t[i][j - 1] > t[i - 1][j] {
            j -= 1;
        } else {
            i -= 1;
        }
    }
    out.reverse();
    out
}

/// Summary-level ROUGE-L over sentence token lists (`_summary_level_lcs`).
pub fn rouge_lsum_tokens(refs: &[Vec<String>], cands: &[Vec<String>]) -> Score {
    if refs.is_empty() || cands.is_empty() {
        return Score::default();
    }
    let m: usize = refs.iter().map(Vec::len).sum();
    let n: usize = cands.iter().map(Vec::len).sum();
    if m == 0 || n == 0 {
        return Score::default();
    }
    let mut cnt_r: HashMap<&str, usize> = HashMap::new();
    let mut cnt_c: HashMap<&str, usize> = HashMap::new();
    for t in refs.iter().flatten() {
        *cnt_r.entry(t).or_default() += 1;
    }
    for t in cands.iter().flatten() {
        *cnt_c.entry(t).or_default() += 1;
    }
    let mut hits = 0usize;
    for r in refs {
        let mut union: Vec<usize> = cands.iter().flat_map(|c| lcs_indices(r, c)).collect();
        union.sort_unstable();
        union.dedup();
        for i in union {
            let t = r[i].as_str();
            let (Some(cc), Some(cr)) = (cnt_c.get(t).copied(), cnt_r.get(t).copied()) else {
                continue;
            };
            if cc > 0 && cr > 0 {
                hits += 1;
                cnt_c.insert(t, cc - 1);
                cnt_r.insert(t, cr - 1);
            }
        }
    }
    Score::new(hits as f64 / n as f64, hits as f64 / m as f64)
}

fn sentences(text: &str, use_stemmer: bool) -> Vec<Vec<String>> {
    text.split('\n')
        .filter(|s| !s.is_empty())
        .map(|s| tokenize(s, use_stemmer))
        .collect()
}

/// `RougeScorer(['rouge1','rouge2','rougeL','rougeLsum'], use_stemmer).score(target, prediction)`.
pub fn score(target: &str, prediction: &str, use_stemmer: bool) -> RougeScores {
    let t = tokenize(target, use_stemmer);
    let p = tokenize(prediction, use_stemmer);
    RougeScores {
        rouge1: rouge_n(&t, &p, 1),
        rouge2: rouge_n(&t, &p, 2),
        rouge_l: rouge_l(&t, &p),
        rouge_lsum: rouge_lsum_tokens(
            &sentences(target, use_stemmer),
            &sentences(prediction, use_stemmer),
        ),
    }
}

/// Mean of each precision/recall/F over pairs (a plain left-to-right mean, not the
/// bootstrap "mid" of `BootstrapAggregator`).
pub fn mean_scores(
    targets: &[String],
    predictions: &[String],
    use_stemmer: bool,
) -> Result<RougeScores> {
    if targets.len() != predictions.len() {
        return Err(Error::msg(format!(
            "rouge: {} references but {} predictions; they must pair up one to one",
            targets.len(),
            predictions.len()
        )));
    }
    if targets.is_empty() {
        return Err(Error::msg("rouge: no texts to score"));
    }
    let all: Vec<RougeScores> = targets
        .iter()
        .zip(predictions)
        .map(|(t, p)| score(t, p, use_stemmer))
        .collect();
    let n = all.len() as f64;
    let mean = |f: &dyn Fn(&RougeScores) -> Score| {
        let (mut p, mut r, mut f1) = (0.0, 0.0, 0.0);
        for s in &all {
            let x = f(s);
            p += x.precision;
            r += x.recall;
            f1 += x.fmeasure;
        }
        Score {
            precision: p / n,
            recall: r / n,
            fmeasure: f1 / n,
        }
    };
    Ok(RougeScores {
        rouge1: mean(&|s| s.rouge1),
        rouge2: mean(&|s| s.rouge2),
        rouge_l: mean(&|s| s.rouge_l),
        rouge_lsum: mean(&|s| s.rouge_lsum),
    })
}
