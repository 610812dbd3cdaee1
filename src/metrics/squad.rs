//! SQuAD exact-match / F1, reproducing the official `evaluate-v1.1.py` and
//! `evaluate-v2.0.py` (Rajpurkar et al.) number for number and byte for byte on stdout.
//!
//! Why it is built this way: leaderboard numbers are compared to the last printed digit,
//! so the Python semantics are copied literally — dict insertion order (a repeated id keeps
//! its first position but takes the last value), left-to-right float sums, `max` over gold
//! answers, `repr(float)` output, int-vs-float na-prob thresholds. The na-prob file is read
//! by a small order-preserving JSON reader so its key order (which decides ties in
//! `find_best_thresh`) and exact float values survive; serde_json's map would sort keys.
//! Known divergence: on Python >= 3.12 `sum()` of floats is compensated, so v2's `f1` may
//! differ there in the 16th-17th digit; we match Python <= 3.11 (plain summation).

use std::collections::HashMap;

use unicode_categories::UnicodeCategories;

use super::{py_float_repr, py_split};
use crate::error::{Error, Result};

/// Which official script's semantics to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SquadVersion {
    V1,
    V2,
}

/// One question's gold answers as the official scripts see them (texts only).
#[derive(Debug, Clone, PartialEq)]
pub struct GoldQuestion {
    pub id: String,
    pub answers: Vec<String>,
}

/// A dataset reduced to what evaluation needs, in file order (duplicate ids kept).
#[derive(Debug, Clone)]
pub struct SquadGold {
    pub version: SquadVersion,
    pub questions: Vec<GoldQuestion>,
}

/// A JSON number as Python's `json` loads it: ints stay ints (and print without `.0`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PyNum {
    Int(i64),
    Float(f64),
}

impl PyNum {
    pub fn value(self) -> f64 {
        match self {
            PyNum::Int(i) => i as f64,
            PyNum::Float(f) => f,
        }
    }
    pub fn repr(self) -> String {
        match self {
            PyNum::Int(i) => i.to_string(),
            PyNum::Float(f) => py_float_repr(f),
        }
    }
}

fn is_py_punct(c: char) -> bool {
    c.is_ascii_punctuation() // exactly Python's string.punctuation
}

/// Python `re` `\w` for str patterns: `str.isalnum()` (letters L*, numerics) or `_`.
/// Rust's `is_alphabetic` also admits Other_Alphabetic marks (Indic vowel signs) and
/// symbols (circled letters), which Python does not; those are taken out again, so
/// "केa the" loses its "a" exactly as the official script does.
fn is_word(c: char) -> bool {
    c == '_' || c.is_numeric() || (c.is_alphabetic() && !c.is_mark() && !c.is_symbol())
}

/// `re.sub(r'\b(a|an|the)\b', ' ', text)`: leftmost match, alternatives tried in order,
/// word boundaries judged on the original text.
fn remove_articles(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let word_at = |i: usize| i < chars.len() && is_word(chars[i]);
    let boundary = |i: usize| (i > 0 && word_at(i - 1)) != word_at(i);
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    'outer: while i < chars.len() {
        if boundary(i) {
            for alt in ["a", "an", "the"] {
                let n = alt.len();
                let hit = i + n <= chars.len() && chars[i..i + n].iter().copied().eq(alt.chars());
                if hit && boundary(i + n) {
                    out.push(' ');
                    i += n;
                    continue 'outer;
                }
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// The official `normalize_answer` (identical in v1.1 and v2.0 under Python 3).
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punc: String = lower.chars().filter(|&c| !is_py_punct(c)).collect();
    let no_art = remove_articles(&no_punc);
    py_split(&no_art).collect::<Vec<_>>().join(" ")
}

fn tokens(s: &str) -> Vec<String> {
    py_split(&normalize_answer(s)).map(str::to_string).collect()
}

fn num_same(a: &[String], b: &[String]) -> usize {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in a {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0;
    for t in b {
        if let Some(c) = counts.get_mut(t.as_str()) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    same
}

fn f1_from(pred: &[String], gold: &[String], same: usize) -> f64 {
    let precision = same as f64 / pred.len() as f64;
    let recall = same as f64 / gold.len() as f64;
    (2.0 * precision * recall) / (precision + recall)
}

/// v1.1 `exact_match_score` (v2's `compute_exact` is the same test).
pub fn exact_match(prediction: &str, ground_truth: &str) -> bool {
    normalize_answer(prediction) == normalize_answer(ground_truth)
}

/// v1.1 `f1_score`: 0 when nothing overlaps, even if both sides are empty.
pub fn f1_v1(prediction: &str, ground_truth: &str) -> f64 {
    let p = tokens(prediction);
    let g = tokens(ground_truth);
    let same = num_same(&p, &g);
    if same == 0 {
        return 0.0;
    }
    f1_from(&p, &g, same)
}

/// v2.0 `compute_f1`: if either side is empty, 1 when both are, else 0.
pub fn f1_v2(gold: &str, prediction: &str) -> f64 {
    let g = tokens(gold);
    let p = tokens(prediction);
    if g.is_empty() || p.is_empty() {
        return f64::from(u8::from(g == p));
    }
    let same = num_same(&p, &g);
    if same == 0 {
        return 0.0;
    }
    f1_from(&p, &g, same)
}

fn max_over(scores: impl Iterator<Item = f64>) -> Option<f64> {
    // Python's max keeps the first of equal values; for numbers that is invisible.
    scores.fold(None, |m, s| {
        Some(m.map_or(s, |m: f64| if s > m { s } else { m }))
    })
}

/// Python-dict-like map: a repeated key keeps its first position, takes the last value.
#[derive(Debug, Default)]
struct OrderedMap<V> {
    keys: Vec<String>,
    vals: Vec<V>,
    index: HashMap<String, usize>,
}

impl<V> OrderedMap<V> {
    fn insert(&mut self, k: &str, v: V) {
        match self.index.get(k) {
            Some(&i) => self.vals[i] = v,
            None => {
                self.index.insert(k.to_string(), self.keys.len());
                self.keys.push(k.to_string());
                self.vals.push(v);
            }
        }
    }
    fn get(&self, k: &str) -> Option<&V> {
        self.index.get(k).map(|&i| &self.vals[i])
    }
    fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.keys.iter().map(String::as_str).zip(self.vals.iter())
    }
    fn len(&self) -> usize {
        self.keys.len()
    }
}

/// Result of the v1.1 script.
#[derive(Debug, Clone, PartialEq)]
pub struct V1Result {
    pub exact_match: f64,
    pub f1: f64,
    /// Ids with no prediction (scored 0; the official script names them on stderr).
    pub unanswered: Vec<String>,
}

impl V1Result {
    /// Exactly what `evaluate-v1.1.py` writes to stdout.
    pub fn official_stdout(&self) -> String {
        format!(
            "{{\"exact_match\": {}, \"f1\": {}}}\n",
            py_float_repr(self.exact_match),
            py_float_repr(self.f1)
        )
    }
    /// What it writes to stderr about missing predictions.
    pub fn official_stderr(&self) -> String {
        self.unanswered
            .iter()
            .map(|id| format!("Unanswered question {id} will receive score 0.\n"))
            .collect()
    }
}

/// `evaluate()` of evaluate-v1.1.py.
pub fn evaluate_v1(gold: &[GoldQuestion], preds: &HashMap<String, String>) -> Result<V1Result> {
    let total = gold.len();
    if total == 0 {
        return Err(Error::msg(
            "SQuAD v1.1 evaluation: the dataset has no questions",
        ));
    }
    let (mut em, mut f1, mut unanswered) = (0.0f64, 0.0f64, Vec::new());
    for q in gold {
        let Some(pred) = preds.get(&q.id) else {
            unanswered.push(q.id.clone());
            continue;
        };
        let best_em = max_over(
            q.answers
                .iter()
                .map(|g| f64::from(u8::from(exact_match(pred, g)))),
        );
        let best_f1 = max_over(q.answers.iter().map(|g| f1_v1(pred, g)));
        match (best_em, best_f1) {
            (Some(e), Some(f)) => {
                em += e;
                f1 += f;
            }
            _ => {
                return Err(Error::msg(format!(
                    "SQuAD v1.1 evaluation: question {} has no gold answers (a v2.0 file? \
                     v1.1 needs at least one answer per question)",
                    q.id
                )))
            }
        }
    }
    Ok(V1Result {
        exact_match: 100.0 * em / total as f64,
        f1: 100.0 * f1 / total as f64,
        unanswered,
    })
}

/// Options of evaluate-v2.0.py that change the numbers.
#[derive(Debug, Clone)]
pub struct V2Options {
    /// The `--na-prob-file` contents in file order; `None` means every prob is 0.0.
    pub na_probs: Option<Vec<(String, PyNum)>>,
    /// `--na-prob-thresh` (default 1.0).
    pub na_prob_thresh: f64,
}

impl Default for V2Options {
    fn default() -> Self {
        V2Options {
            na_probs: None,
            na_prob_thresh: 1.0,
        }
    }
}

/// The v2.0 output dictionary, in the official key order.
#[derive(Debug, Clone, PartialEq)]
pub struct V2Result {
    pub entries: Vec<(String, PyNum)>,
}

impl V2Result {
    pub fn get(&self, key: &str) -> Option<f64> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.value())
    }
    /// Exactly what `evaluate-v2.0.py` prints: `json.dumps(out_eval, indent=2)`.
    pub fn official_stdout(&self) -> String {
        let body: Vec<String> = self
            .entries
            .iter()
            .map(|(k, v)| format!("  \"{k}\": {}", v.repr()))
            .collect();
        format!("{{\n{}\n}}\n", body.join(",\n"))
    }
}

fn eval_dict(
    out: &mut Vec<(String, PyNum)>,
    prefix: &str,
    exact: &OrderedMap<f64>,
    f1: &OrderedMap<f64>,
    qids: Option<&[String]>,
) -> Result<()> {
    let (e, f, total) = match qids {
        None => (
            exact.iter().map(|(_, v)| *v).sum::<f64>(),
            f1.iter().map(|(_, v)| *v).sum::<f64>(),
            exact.len(),
        ),
        Some(list) => {
            let (mut e, mut f) = (0.0, 0.0);
            for k in list {
                let missing = || Error::msg(format!("SQuAD v2.0: missing prediction for {k}"));
                e += *exact.get(k).ok_or_else(missing)?;
                f += *f1.get(k).ok_or_else(missing)?;
            }
            (e, f, list.len())
        }
    };
    if total == 0 {
        return Err(Error::msg("SQuAD v2.0 evaluation: no scored questions"));
    }
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}_{k}")
        }
    };
    out.push((key("exact"), PyNum::Float(100.0 * e / total as f64)));
    out.push((key("f1"), PyNum::Float(100.0 * f / total as f64)));
    out.push((key("total"), PyNum::Int(total as i64)));
    Ok(())
}

fn find_best_thresh(
    preds: &HashMap<String, String>,
    scores: &OrderedMap<f64>,
    na_probs: &[(String, PyNum)],
    has_ans: &OrderedMap<bool>,
) -> (f64, PyNum) {
    let num_no_ans = has_ans.iter().filter(|(_, v)| !**v).count();
    let mut cur = num_no_ans as f64;
    let mut best = cur;
    let mut best_thresh = PyNum::Float(0.0);
    let mut order: Vec<&(String, PyNum)> = na_probs.iter().collect();
    // Stable, as Python's sorted; the loader refuses NaN, and `+ 0.0` keeps -0 == +0.
    order.sort_by(|a, b| (a.1.value() + 0.0).total_cmp(&(b.1.value() + 0.0)));
    for (qid, p) in order {
        let Some(&s) = scores.get(qid) else { continue };
        let diff = if has_ans.get(qid).copied().unwrap_or(false) {
            s
        } else if preds.get(qid).is_some_and(|t| !t.is_empty()) {
            -1.0
        } else {
            0.0
        };
        cur += diff;
        if cur > best {
            best = cur;
            best_thresh = *p;
        }
    }
    (100.0 * best / scores.len() as f64, best_thresh)
}

/// `main()` of evaluate-v2.0.py (without the optional plots).
pub fn evaluate_v2(
    gold: &[GoldQuestion],
    preds: &HashMap<String, String>,
    opts: &V2Options,
) -> Result<V2Result> {
    let mut has_ans = OrderedMap::default();
    for q in gold {
        has_ans.insert(&q.id, !q.answers.is_empty());
    }
    let has_ids: Vec<String> = has_ans
        .iter()
        .filter(|(_, v)| **v)
        .map(|(k, _)| k.to_string())
        .collect();
    let no_ids: Vec<String> = has_ans
        .iter()
        .filter(|(_, v)| !**v)
        .map(|(k, _)| k.to_string())
        .collect();

    let (mut exact_raw, mut f1_raw) = (OrderedMap::default(), OrderedMap::default());
    for q in gold {
        let mut golds: Vec<&str> = q
            .answers
            .iter()
            .map(String::as_str)
            .filter(|a| !normalize_answer(a).is_empty())
            .collect();
        if golds.is_empty() {
            golds.push("");
        }
        let Some(pred) = preds.get(&q.id) else {
            // The official script prints this and then dies on a KeyError; we stop here.
            return Err(Error::msg(format!(
                "SQuAD v2.0: missing prediction for {}",
                q.id
            )));
        };
        let em = max_over(
            golds
                .iter()
                .map(|g| f64::from(u8::from(exact_match(g, pred)))),
        );
        let f1 = max_over(golds.iter().map(|g| f1_v2(g, pred)));
        exact_raw.insert(&q.id, em.unwrap_or(0.0));
        f1_raw.insert(&q.id, f1.unwrap_or(0.0));
    }

    let na_lookup: Option<HashMap<&str, f64>> = opts
        .na_probs
        .as_ref()
        .map(|v| v.iter().map(|(k, p)| (k.as_str(), p.value())).collect());
    let threshold = |scores: &OrderedMap<f64>| -> Result<OrderedMap<f64>> {
        let mut out = OrderedMap::default();
        for (qid, &s) in scores.iter() {
            let p = match &na_lookup {
                None => 0.0,
                Some(m) => *m.get(qid).ok_or_else(|| {
                    Error::msg(format!("SQuAD v2.0: na-prob file has no entry for {qid}"))
                })?,
            };
            let v = if p > opts.na_prob_thresh {
                f64::from(u8::from(!has_ans.get(qid).copied().unwrap_or(false)))
            } else {
                s
            };
            out.insert(qid, v);
        }
        Ok(out)
    };
    let exact_t = threshold(&exact_raw)?;
    let f1_t = threshold(&f1_raw)?;

    let mut entries = Vec::new();
    eval_dict(&mut entries, "", &exact_t, &f1_t, None)?;
    if !has_ids.is_empty() {
        eval_dict(&mut entries, "HasAns", &exact_t, &f1_t, Some(&has_ids))?;
    }
    if !no_ids.is_empty() {
        eval_dict(&mut entries, "NoAns", &exact_t, &f1_t, Some(&no_ids))?;
    }
    if let Some(na) = &opts.na_probs {
        let (be, bet) = find_best_thresh(preds, &exact_raw, na, &has_ans);
        let (bf, bft) = find_best_thresh(preds, &f1_raw, na, &has_ans);
        entries.push(("best_exact".into(), PyNum::Float(be)));
        entries.push(("best_exact_thresh".into(), bet));
        entries.push(("best_f1".into(), PyNum::Float(bf)));
        entries.push(("best_f1_thresh".into(), bft));
    }
    Ok(V2Result { entries })
}

mod io;
pub use io::{parse_na_probs, parse_predictions, read_na_probs, read_predictions};
