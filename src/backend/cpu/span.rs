//! QA span search, inference only (mirrors kernels/span.cu).
//!
//! Per window: softmax of the start and end logits over the allowed positions plus the
//! CLS position 0 (HF's pipeline keeps CLS in the denominator, then zeroes its
//! probability), then every span start ≤ end < start + max_len over allowed positions
//! is scored by p_start·p_end and the `top_k` best are kept. Probabilities are computed
//! in f64 whatever the logits' dtype, so the ranking does not depend on it. Windows are
//! independent and run on rayon threads; the result lists window 0's candidates first,
//! each window's by descending score (ties: smaller start, then smaller end).

use rayon::prelude::*;

use super::{check_len, rows_of, CpuStorage, Real};
use crate::backend::SpanCandidate;
use crate::error::Result;

/// Softmax over positions kept by `keep`; others get probability 0.
fn masked_softmax(x: &[f64], keep: impl Fn(usize) -> bool) -> Vec<f64> {
    let m = (0..x.len())
        .filter(|&i| keep(i))
        .map(|i| x[i])
        .fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return vec![0.0; x.len()];
    }
    let e: Vec<f64> = (0..x.len())
        .map(|i| if keep(i) { (x[i] - m).exp() } else { 0.0 })
        .collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

pub(super) fn span_search<T: Real>(
    start: &CpuStorage,
    end: &CpuStorage,
    allowed: &CpuStorage,
    cols: usize,
    max_len: usize,
    top_k: usize,
) -> Result<Vec<SpanCandidate>> {
    const OP: &str = "span_search";
    let (s, e, a) = (
        start.floats::<T>(OP)?,
        end.floats::<T>(OP)?,
        allowed.ints(OP)?,
    );
    let rows = rows_of(OP, s.len(), cols)?;
    check_len(OP, "end_logits", s.len(), e.len())?;
    check_len(OP, "allowed", s.len(), a.len())?;
    if top_k == 0 || max_len == 0 || cols == 0 {
        return Ok(Vec::new());
    }
    let per_row: Vec<Vec<SpanCandidate>> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let sl: Vec<f64> = s[r * cols..(r + 1) * cols]
                .iter()
                .map(|v| v.f64())
                .collect();
            let el: Vec<f64> = e[r * cols..(r + 1) * cols]
                .iter()
                .map(|v| v.f64())
                .collect();
            let ok = |i: usize| a[r * cols + i] != 0;
            let ps = masked_softmax(&sl, |i| i == 0 || ok(i));
            let pe = masked_softmax(&el, |i| i == 0 || ok(i));
            let mut c = Vec::new();
            for i in (0..cols).filter(|&i| ok(i)) {
                for j in (i..cols.min(i + max_len)).filter(|&j| ok(j)) {
                    c.push(SpanCandidate {
                        row: r,
                        start: i,
                        end: j,
                        score: (ps[i] * pe[j]) as f32,
                        logit_sum: (sl[i] + el[j]) as f32,
                    });
                }
            }
            let order = |x: &SpanCandidate, y: &SpanCandidate| {
                y.score
                    .total_cmp(&x.score)
                    .then(x.start.cmp(&y.start))
                    .then(x.end.cmp(&y.end))
            };
            if c.len() > top_k {
                c.select_nth_unstable_by(top_k - 1, order);
                c.truncate(top_k);
            }
            c.sort_by(order);
            c
        })
        .collect();
    Ok(per_row.into_iter().flatten().collect())
}
