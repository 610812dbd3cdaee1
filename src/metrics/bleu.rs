//! BLEU equal to sacrebleu 2.x with its defaults: tokenizer `13a`, `exp` smoothing, case
//! kept, `force` irrelevant to the number. `corpus_bleu` and `sentence_bleu` (which differs
//! only by `use_effective_order=True`).
//!
//! A literal port of `BLEU.compute_bleu` and `Tokenizer13a`: sufficient statistics are
//! integers summed over segments, the closest reference length breaks ties toward the
//! shorter one, multi-reference n-gram counts take the max over references, and the
//! final log-average adds `my_log` terms left to right so the score matches sacrebleu's.
//! The 13a regexes are fixed one- or two-character patterns, so they are applied with a
//! left-to-right, non-overlapping scan, which is exactly what `re.sub` does for them.

use std::collections::HashMap;

use super::{py_rstrip, py_split};
use crate::error::{Error, Result};

pub const MAX_NGRAM_ORDER: usize = 4;

/// What sacrebleu's `BLEUScore` carries.
#[derive(Debug, Clone, PartialEq)]
pub struct BleuScore {
    pub score: f64,
    pub counts: [usize; MAX_NGRAM_ORDER],
    pub totals: [usize; MAX_NGRAM_ORDER],
    pub precisions: [f64; MAX_NGRAM_ORDER],
    pub bp: f64,
    pub sys_len: usize,
    pub ref_len: usize,
}

/// Options that change sacrebleu's number; `Default` is sacrebleu's corpus default.
#[derive(Debug, Clone, Copy, Default)]
pub struct BleuOptions {
    pub lowercase: bool,
    pub effective_order: bool,
}

fn is_13a_punct(c: char) -> bool {
    // [\{-\~\[-\` -\&\(-\+\:-\@\/]
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

fn sub2(s: &str, a: impl Fn(char) -> bool, b: impl Fn(char) -> bool, pre: bool) -> String {
    // pre=true: `([^0-9])([\.,])` -> `\1 \2 ` style (space after both); false: ` \1 \2`.
    let cs: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 8);
    let mut i = 0;
    while i < cs.len() {
        if i + 1 < cs.len() && a(cs[i]) && b(cs[i + 1]) {
            if pre {
                out.push(cs[i]);
                out.push(' ');
                out.push(cs[i + 1]);
                out.push(' ');
            } else {
                out.push(' ');
                out.push(cs[i]);
                out.push(' ');
                out.push(cs[i + 1]);
            }
            i += 2;
        } else {
            out.push(cs[i]);
            i += 1;
        }
    }
    out
}

/// sacrebleu's `Tokenizer13a` (mteval-v13a).
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let padded = format!(" {line} ");
    let mut s = String::with_capacity(padded.len() * 2);
    for c in padded.chars() {
        if is_13a_punct(c) {
            s.push(' ');
            s.push(c);
            s.push(' ');
        } else {
            s.push(c);
        }
    }
    let digit = |c: char| c.is_ascii_digit();
    let dot = |c: char| c == '.' || c == ',';
    let s = sub2(&s, |c| !digit(c), dot, true);
    let s = sub2(&s, dot, |c| !digit(c), false);
    let s = sub2(&s, digit, |c| c == '-', true);
    py_split(&s).collect::<Vec<_>>().join(" ")
}

fn preprocess(sent: &str, opts: &BleuOptions) -> String {
    let s = if opts.lowercase {
        sent.to_lowercase()
    } else {
        sent.to_string()
    };
    tokenize_13a(py_rstrip(&s))
}

type Ngrams<'a> = HashMap<Vec<&'a str>, usize>;

fn all_ngrams(line: &str) -> (Ngrams<'_>, usize) {
    let toks: Vec<&str> = py_split(line).collect();
    let mut m: Ngrams = HashMap::new();
    for n in 1..=MAX_NGRAM_ORDER {
        if toks.len() >= n {
            for w in toks.windows(n) {
                *m.entry(w.to_vec()).or_insert(0) += 1;
            }
        }
    }
    (m, toks.len())
}

fn closest_ref_len(hyp_len: usize, ref_lens: &[usize]) -> usize {
    let mut best: Option<(usize, usize)> = None; // (diff, len)
    for &r in ref_lens {
        let d = hyp_len.abs_diff(r);
        best = match best {
            None => Some((d, r)),
            Some((bd, bl)) if d < bd || (d == bd && r < bl) => Some((d, r)),
            keep => keep,
        };
    }
    best.map_or(0, |b| b.1)
}

/// Segment statistics `[hyp_len, ref_len, correct x4, total x4]`.
fn segment_stats(hyp: &str, refs: &[String]) -> [usize; 2 + 2 * MAX_NGRAM_ORDER] {
    let mut ref_max: Ngrams = HashMap::new();
    let mut ref_lens = Vec::with_capacity(refs.len());
    for r in refs {
        let (ng, len) = all_ngrams(r);
        ref_lens.push(len);
        for (g, c) in ng {
            let e = ref_max.entry(g).or_insert(0);
            *e = (*e).max(c);
        }
    }
    let (hyp_ng, hyp_len) = all_ngrams(hyp);
    let mut st = [0usize; 2 + 2 * MAX_NGRAM_ORDER];
    st[0] = hyp_len;
    st[1] = closest_ref_len(hyp_len, &ref_lens);
    for (g, c) in &hyp_ng {
        let n = g.len() - 1;
        st[2 + MAX_NGRAM_ORDER + n] += c;
        if let Some(rc) = ref_max.get(g) {
            st[2 + n] += (*c).min(*rc);
        }
    }
    st
}

fn my_log(x: f64) -> f64 {
    if x == 0.0 {
        -9_999_999_999.0
    } else {
        x.ln()
    }
}

/// `BLEU.compute_bleu` with `exp` smoothing.
pub fn compute_bleu(
    counts: [usize; MAX_NGRAM_ORDER],
    totals: [usize; MAX_NGRAM_ORDER],
    sys_len: usize,
    ref_len: usize,
    effective_order: bool,
) -> BleuScore {
    let mut bp = 1.0;
    if sys_len < ref_len {
        bp = if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        };
    }
    let mut precisions = [0.0f64; MAX_NGRAM_ORDER];
    let mk = |score, precisions| BleuScore {
        score,
        counts,
        totals,
        precisions,
        bp,
        sys_len,
        ref_len,
    };
    if counts.iter().all(|&c| c == 0) {
        return mk(0.0, precisions);
    }
    let mut smooth = 1.0f64;
    let mut eff_order = MAX_NGRAM_ORDER;
    for n in 1..=MAX_NGRAM_ORDER {
        if totals[n - 1] == 0 {
            break;
        }
        if effective_order {
            eff_order = n;
        }
        precisions[n - 1] = if counts[n - 1] == 0 {
            smooth *= 2.0;
            100.0 / (smooth * totals[n - 1] as f64)
        } else {
            100.0 * counts[n - 1] as f64 / totals[n - 1] as f64
        };
    }
    let mut log_sum = 0.0;
    for p in &precisions[..eff_order] {
        log_sum += my_log(*p);
    }
    mk(bp * (log_sum / eff_order as f64).exp(), precisions)
}

/// `sacrebleu.corpus_bleu(hypotheses, references)`: `references` is a list of reference
/// streams, each as long as `hypotheses` (one stream = single reference per line).
pub fn corpus_bleu(
    hypotheses: &[String],
    references: &[Vec<String>],
    opts: &BleuOptions,
) -> Result<BleuScore> {
    if hypotheses.is_empty() {
        return Err(Error::msg("bleu: no hypotheses to score"));
    }
    if references.is_empty() {
        return Err(Error::msg("bleu: no reference stream given"));
    }
    for (k, stream) in references.iter().enumerate() {
        if stream.len() != hypotheses.len() {
            return Err(Error::msg(format!(
                "bleu: reference stream {k} has {} lines but there are {} hypotheses",
                stream.len(),
                hypotheses.len()
            )));
        }
    }
    let mut sum = [0usize; 2 + 2 * MAX_NGRAM_ORDER];
    for (i, hyp) in hypotheses.iter().enumerate() {
        let refs: Vec<String> = references.iter().map(|s| preprocess(&s[i], opts)).collect();
        let st = segment_stats(&preprocess(hyp, opts), &refs);
        for (a, b) in sum.iter_mut().zip(st) {
            *a += b;
        }
    }
    let mut counts = [0; MAX_NGRAM_ORDER];
    let mut totals = [0; MAX_NGRAM_ORDER];
    counts.copy_from_slice(&sum[2..2 + MAX_NGRAM_ORDER]);
    totals.copy_from_slice(&sum[2 + MAX_NGRAM_ORDER..]);
    Ok(compute_bleu(
        counts,
        totals,
        sum[0],
        sum[1],
        opts.effective_order,
    ))
}

/// `sacrebleu.sentence_bleu(hypothesis, references)`: exp smoothing with effective order.
pub fn sentence_bleu(hypothesis: &str, references: &[String]) -> Result<BleuScore> {
    let streams: Vec<Vec<String>> = references.iter().map(|r| vec![r.clone()]).collect();
    let opts = BleuOptions {
        lowercase: false,
        effective_order: true,
    };
    corpus_bleu(&[hypothesis.to_string()], &streams, &opts)
}
