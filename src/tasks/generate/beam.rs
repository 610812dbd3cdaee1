//! Beam search as transformers 5.25 `GenerationMixin._beam_search` runs it: HF's
//! vectorised state machine (the top `max(2, 1 + n_eos) · num_beams` continuations per
//! input, the best unfinished ones run on, finished ones scored `score / len**
//! length_penalty` and merged into the best `num_beams`, the `early_stopping`
//! heuristics), host code over the step's log-probabilities with HF's order of f32
//! operations so near-ties resolve the same way. The output holds the best
//! `num_return_sequences` finished hypotheses per input, padded to the longest with
//! `pad_token_id or eos_token_id[0]` as HF pads them.

use crate::error::Result;
use crate::models::generation_config::{EarlyStopping, GenerateConfig};
use crate::models::seq2seq::{DecoderCache, Seq2SeqLm};
use crate::shape::DType;
use crate::tensor::Tensor;

use super::logits::Processors;
use super::Generated;

/// HF's "very large negative" score of masked candidates.
const NEG: f32 = -1.0e9;

/// One hypothesis slot: tokens (start included) and score.
#[derive(Clone)]
struct Hyp {
    seq: Vec<i32>,
    score: f32,
    finished: bool,
}

/// Per-input beam state (HF keeps the same as `[batch, beams]` tensors).
struct BeamState {
    running: Vec<Hyp>,
    finished: Vec<Hyp>,
    improvable: bool,
}

/// The `k` largest of `scores`, descending; ties keep the lower index first.
///
/// One pass keeping the best `k` so far in order: a step's `beams × vocab` scores
/// (128 512 for T5 with 4 beams) are ranked without an index vector of their size,
/// whose fresh megabyte each call cost a page fault per page.
pub(super) fn topk(scores: &[f32], k: usize) -> Vec<usize> {
    // total_cmp: a total order even with NaN scores (fp16 overflow). Every NaN ranks
    // above +inf, as in torch.topk (x86 makes inf - inf a negative NaN, which total_cmp
    // alone would put last); `+ 0.0` makes -0 equal to +0, so that tie still goes to
    // the lower index.
    let key = |i: usize| {
        let x = scores[i];
        if x.is_nan() {
            f32::NAN
        } else {
            x + 0.0
        }
    };
    // `a` ranks before `b`: larger key, or the same key and the lower index.
    let before = |a: usize, b: usize| key(a).total_cmp(&key(b)).then(b.cmp(&a)).is_gt();
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for i in 0..scores.len() {
        if best.len() == k && !before(i, best[k - 1]) {
            continue;
        }
        let at = best.partition_point(|&j| before(j, i));
        best.insert(at, i);
        best.truncate(k);
    }
    best
}

pub(super) fn beam_search(
    model: &dyn Seq2SeqLm,
    input_ids: &Tensor,
    mask: Option<&Tensor>,
    cfg: &GenerateConfig,
    max_len: usize,
) -> Result<Generated> {
    let b = input_ids.dims()[0];
    let nb = cfg.num_beams;
    let v = model.vocab_size();
    let lp = cfg.length_penalty;
    let keep = (1 + cfg.eos_token_id.len()).max(2) * nb;
    let start = cfg.decoder_start_token_id;
    let processors = Processors::new(cfg, max_len);
    // HF `_beam_search`: `pad_token_id or eos_token_id[0] if eos_token_id is not None else -1`.
    let fill = match cfg.eos_token_id.first() {
        Some(&e) => cfg.pad_token_id.filter(|&p| p != 0).unwrap_or(e),
        None => -1,
    };

    let enc = model.encoder_state(input_ids, mask)?;
    let rows: Vec<i32> = (0..b as i32)
        .flat_map(|r| std::iter::repeat_n(r, nb))
        .collect();
    let enc = enc.select(&rows)?;
    let mut cache = DecoderCache::new();
    let fresh = |score| Hyp {
        seq: vec![start],
        score,
        finished: false,
    };
    let mut states: Vec<BeamState> = (0..b)
        .map(|_| BeamState {
            running: (0..nb)
                .map(|k| fresh(if k == 0 { 0.0 } else { NEG }))
                .collect(),
            finished: vec![fresh(NEG); nb],
            improvable: true,
        })
        .collect();
    let mut cur_len = 1usize;
    // One input's scores over beams × vocab, reused every step.
    let mut acc: Vec<f32> = Vec::with_capacity(nb * v);
    loop {
        let last: Vec<i32> = states
            .iter()
            .flat_map(|s| s.running.iter().map(|h| h.seq[h.seq.len() - 1]))
            .collect();
        let logits = model.decode_step(&last, &enc, &mut cache)?;
        // HF casts the step's logits to f32 before log_softmax.
        let logp = logits
            .to_dtype(DType::F32)?
            .log_softmax_infer()?
            .to_vec_f32()?;
        let mut parents = Vec::with_capacity(b * nb);
        let mut all_hit = true;
        for (bi, st) in states.iter_mut().enumerate() {
            // b. processed log-probs plus each beam's running score, over beams × vocab.
            acc.clear();
            for (k, h) in st.running.iter().enumerate() {
                let row = bi * nb + k;
                acc.extend_from_slice(&logp[row * v..(row + 1) * v]);
                let s = &mut acc[k * v..];
                processors.apply(s, &h.seq);
                s.iter_mut().for_each(|x| *x += h.score);
            }
            // c. top-K continuations; d. which of them stop (eos or max length).
            let cand: Vec<(usize, i32, f32, bool)> = topk(&acc, keep)
                .into_iter()
                .map(|i| {
                    let tok = (i % v) as i32;
                    let hit = cur_len + 1 >= max_len || cfg.eos_token_id.contains(&tok);
                    (i / v, tok, acc[i], hit)
                })
                .collect();
            all_hit &= cand.iter().all(|c| c.3);
            // e. the best non-stopped continuations run on.
            let run_scores: Vec<f32> = cand
                .iter()
                .map(|c| c.2 + if c.3 { NEG } else { 0.0 })
                .collect();
            let next: Vec<usize> = topk(&run_scores, nb);
            let new_running: Vec<Hyp> = next
                .iter()
                .map(|&j| {
                    let (k, tok, _, _) = cand[j];
                    let mut seq = st.running[k].seq.clone();
                    seq.push(tok);
                    parents.push((bi * nb + k) as i32);
                    Hyp {
                        seq,
                        score: run_scores[j],
                        finished: false,
                    }
                })
                .collect();
            // f. stopped continuations among the top num_beams join the finished set.
            let denom = ((cur_len + 1 - 1) as f64).powf(lp) as f32;
            let full =
                st.finished.iter().all(|h| h.finished) && cfg.early_stopping == EarlyStopping::True;
            let mut merged = st.finished.clone();
            for (j, &(k, tok, score, hit)) in cand.iter().enumerate() {
                let did = hit && j < nb;
                let mut s = score / denom;
                s += if full { NEG } else { 0.0 };
                s += if st.improvable { 0.0 } else { NEG };
                s += if did { 0.0 } else { NEG };
                let mut seq = st.running[k].seq.clone();
                seq.push(tok);
                merged.push(Hyp {
                    seq,
                    score: s,
                    finished: did,
                });
            }
            let scores: Vec<f32> = merged.iter().map(|h| h.score).collect();
            st.finished = topk(&scores, nb)
                .into_iter()
                .map(|i| merged[i].clone())
                .collect();
            st.running = new_running;
        }
        cache.reorder(&parents)?;
        cur_len += 1;
        // g. can a running beam still beat the worst finished one?
        for st in states.iter_mut() {
            let best_len = if cfg.early_stopping == EarlyStopping::Never && lp > 0.0 {
                max_len - 1
            } else {
                cur_len - 1
            };
            let best_possible = st.running[0].score / (best_len as f64).powf(lp) as f32;
            let worst = st
                .finished
                .iter()
                .map(|h| h.score)
                .fold(f32::INFINITY, f32::min);
            let beatable = st.finished.iter().any(|h| {
                let w = if h.finished { worst } else { NEG };
                best_possible > w
            });
            st.improvable &= beatable;
        }
        let improvement_possible = states.iter().any(|s| s.improvable);
        let all_finished = states.iter().all(|s| s.finished.iter().all(|h| h.finished));
        let open = !(all_finished && cfg.early_stopping == EarlyStopping::True);
        if !(improvement_possible && open && !all_hit) {
            break;
        }
    }
    // The best num_return_sequences per input, input-major, cut to the longest of them.
    let nrs = cfg.num_return_sequences;
    let best: Vec<&Hyp> = states.iter().flat_map(|s| &s.finished[..nrs]).collect();
    let out_len = best.iter().map(|h| h.seq.len()).max().unwrap_or(1);
    let sequences = best
        .iter()
        .map(|h| {
            let mut seq = h.seq.clone();
            seq.resize(out_len, fill);
            seq
        })
        .collect();
    Ok(Generated {
        sequences,
        scores: Some(best.iter().map(|h| h.score).collect()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_is_descending_and_stable() {
        assert_eq!(topk(&[1.0, 3.0, 3.0, -1.0, 2.0], 3), vec![1, 2, 4]);
    }

    #[test]
    fn topk_takes_nan_scores_without_panicking() {
        // An fp16 overflow can put NaN among the scores; sort_by needs a total order.
        let mut s: Vec<f32> = (0..64).map(|i| (i % 7) as f32 - 3.0).collect();
        // Both signs: x86 gives inf - inf the sign bit.
        for (i, nan) in [(3, f32::NAN), (17, -f32::NAN), (40, f32::NAN)] {
            s[i] = nan;
        }
        let k = topk(&s, 8);
        // NaN first (torch.topk's rule), lowest index first among equals.
        assert_eq!(&k[..3], &[3, 17, 40]);
        assert_eq!(&k[3..], &[6, 13, 20, 27, 34]);
        assert_eq!(topk(&[-0.0, 0.0, -1.0], 2), vec![0, 1], "-0 ties with +0");
    }
}
