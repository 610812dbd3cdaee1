//! Greedy and beam-search generation for T5, reproducing transformers' `generate()`
//! (5.24 `GenerationMixin._sample` and `_beam_search`) token for token: the same logits
//! processors (no_repeat_ngram, then min_length), the same stopping rules (eos, max
//! length), HF's vectorised beam search state machine (top 2·num_beams continuations,
//! length penalty `score / len**length_penalty` on finished hypotheses, the
//! `early_stopping` heuristics) and its output layout (decoder start token first, rows
//! padded to the longest; beam search pads with `pad_token_id or eos`, as HF does).
//!
//! The model runs incrementally (`T5ForConditionalGeneration::decode_step` with a K/V
//! cache); the search itself is host code over the step's log-probabilities, which are
//! small next to the decoder's work. Scores are kept in f32 with HF's order of
//! operations so near-ties resolve the same way.

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::models::t5::{DecoderCache, T5ForConditionalGeneration};
use crate::shape::DType;
use crate::tensor::Tensor;

pub use super::generate_config::{EarlyStopping, GenerateConfig};

/// Generated sequences (each starts with the decoder start token; rows padded to one
/// length) and, for beam search, HF's `sequences_scores`.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    pub sequences: Vec<Vec<i32>>,
    pub scores: Option<Vec<f32>>,
}

/// Generate for I32 `input_ids [B, Ls]` with an optional I32 `attention_mask`.
/// Without a mask, padding is masked when the input contains the pad id and pad is not
/// eos (HF `_prepare_attention_mask_for_generation`).
pub fn generate(
    model: &T5ForConditionalGeneration,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
    cfg: &GenerateConfig,
) -> Result<Generated> {
    let _g = no_grad();
    input_ids.expect_rank("generate (input_ids)", 2)?;
    if input_ids.dims()[0] == 0 {
        return Ok(Generated {
            sequences: Vec::new(),
            scores: (cfg.num_beams > 1).then(Vec::new),
        });
    }
    if input_ids.dims()[1] == 0 {
        return Err(Error::msg("generate: input_ids has no tokens"));
    }
    if cfg.num_beams == 0 {
        return Err(Error::msg("generate: num_beams must be at least 1"));
    }
    if cfg.total_max_length() < 2 {
        return Err(Error::msg(
            "generate: max_length must leave room for one new token (max_new_tokens >= 1)",
        ));
    }
    // Fed back as decoder inputs: out-of-table ids would fail deep in an embedding
    // lookup (or, on CUDA, at a later read) instead of here, naming the field.
    let vocab = model.config.vocab_size;
    let pad = cfg.pad_token_id;
    for (field, id) in [
        ("decoder_start_token_id", Some(cfg.decoder_start_token_id)),
        ("pad_token_id", pad),
    ] {
        if let Some(id) = id.filter(|&i| i < 0 || i as usize >= vocab) {
            return Err(Error::msg(format!(
                "generate: {field} {id} is not a token of the model (vocab_size {vocab}); \
                 check config.json / generation_config.json"
            )));
        }
    }
    // An eos the model cannot emit would never stop a sequence (and, with no pad id,
    // pads the beams' output).
    if let Some(&e) = cfg
        .eos_token_id
        .iter()
        .find(|&&e| e < 0 || e as usize >= vocab)
    {
        let padding = if pad.is_none() {
            " (also used as padding: no pad_token_id)"
        } else {
            ""
        };
        return Err(Error::msg(format!(
            "generate: eos_token_id {e}{padding} is not a token of the model (vocab_size \
             {vocab}); check config.json / generation_config.json"
        )));
    }
    if cfg.num_beams > vocab {
        return Err(Error::msg(format!(
            "generate: num_beams {} exceeds the vocabulary ({vocab} tokens): each beam needs \
             a distinct continuation; check generation_config.json",
            cfg.num_beams
        )));
    }
    if !cfg.length_penalty.is_finite() {
        return Err(Error::msg(format!(
            "generate: length_penalty must be a finite number, got {}",
            cfg.length_penalty
        )));
    }
    let derived;
    let mask = match attention_mask {
        Some(m) => Some(m),
        None => {
            derived = derive_mask(input_ids, cfg)?;
            derived.as_ref()
        }
    };
    if cfg.num_beams == 1 {
        greedy(model, input_ids, mask, cfg)
    } else {
        beam_search(model, input_ids, mask, cfg)
    }
}

fn derive_mask(input_ids: &Tensor, cfg: &GenerateConfig) -> Result<Option<Tensor>> {
    let Some(pad) = cfg.pad_token_id else {
        return Ok(None);
    };
    let ids = input_ids.to_vec_i32()?;
    if !ids.contains(&pad) || cfg.eos_token_id.contains(&pad) {
        return Ok(None);
    }
    let m = ids.iter().map(|&t| i32::from(t != pad)).collect();
    Ok(Some(Tensor::from_i32(
        m,
        input_ids.dims().to_vec(),
        input_ids.device(),
    )?))
}

/// HF `NoRepeatNGramLogitsProcessor` then `MinLengthLogitsProcessor` on one row.
fn process(scores: &mut [f32], seq: &[i32], cfg: &GenerateConfig) {
    let n = cfg.no_repeat_ngram_size;
    let cur = seq.len();
    if n > 0 && cur >= n {
        let prefix = &seq[cur + 1 - n..];
        for i in 0..=(cur - n) {
            if seq[i..i + n - 1] == *prefix {
                let t = seq[i + n - 1];
                if t >= 0 && (t as usize) < scores.len() {
                    scores[t as usize] = f32::NEG_INFINITY;
                }
            }
        }
    }
    if cur < cfg.min_length {
        for &e in &cfg.eos_token_id {
            if e >= 0 && (e as usize) < scores.len() {
                scores[e as usize] = f32::NEG_INFINITY;
            }
        }
    }
}

fn greedy(
    model: &T5ForConditionalGeneration,
    input_ids: &Tensor,
    mask: Option<&Tensor>,
    cfg: &GenerateConfig,
) -> Result<Generated> {
    let b = input_ids.dims()[0];
    let v = model.config.vocab_size;
    let max_len = cfg.total_max_length();
    // HF: without a pad id, finished rows are filled with eos.
    let pad = cfg
        .pad_token_id
        .or_else(|| cfg.eos_token_id.first().copied())
        .unwrap_or(0);
    let enc = model.encoder_state(input_ids, mask)?;
    let mut cache = DecoderCache::new();
    let mut seqs = vec![vec![cfg.decoder_start_token_id]; b];
    let mut unfinished = vec![true; b];
    loop {
        let last: Vec<i32> = seqs.iter().map(|s| s[s.len() - 1]).collect();
        let logits = model.decode_step(&last, &enc, &mut cache)?.to_vec_f32()?;
        for (row, seq) in seqs.iter_mut().enumerate() {
            let mut scores = logits[row * v..(row + 1) * v].to_vec();
            process(&mut scores, seq, cfg);
            let next = if unfinished[row] {
                argmax_first(&scores) as i32
            } else {
                pad
            };
            seq.push(next);
            if cfg.eos_token_id.contains(&next) {
                unfinished[row] = false;
            }
        }
        if seqs[0].len() >= max_len || unfinished.iter().all(|u| !u) {
            break;
        }
    }
    Ok(Generated {
        sequences: seqs,
        scores: None,
    })
}

/// Index of the first maximum (torch.argmax's tie rule; a NaN counts as the maximum).
fn argmax_first(x: &[f32]) -> usize {
    if let Some(i) = x.iter().position(|v| v.is_nan()) {
        return i;
    }
    let mut best = 0;
    for (i, &s) in x.iter().enumerate() {
        if s > x[best] {
            best = i;
        }
    }
    best
}

/// The `k` largest of `scores`, descending; ties keep the lower index first.
fn topk(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let k = k.min(idx.len());
    let cmp = |a: &usize, b: &usize| {
        // total_cmp: a total order even with NaN scores (fp16 overflow), which sort_by
        // needs. Every NaN ranks above +inf, as in torch.topk (x86 makes inf - inf a
        // negative NaN, which total_cmp alone would put last); `+ 0.0` makes -0 equal
        // to +0, so that tie still goes to the lower index.
        let key = |x: f32| if x.is_nan() { f32::NAN } else { x + 0.0 };
        key(scores[*b]).total_cmp(&key(scores[*a])).then(a.cmp(b))
    };
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

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

fn beam_search(
    model: &T5ForConditionalGeneration,
    input_ids: &Tensor,
    mask: Option<&Tensor>,
    cfg: &GenerateConfig,
) -> Result<Generated> {
    const NEG: f32 = -1.0e9;
    let b = input_ids.dims()[0];
    let nb = cfg.num_beams;
    let v = model.config.vocab_size;
    let max_len = cfg.total_max_length();
    let lp = cfg.length_penalty;
    let keep = (1 + cfg.eos_token_id.len()).max(2) * nb;
    let start = cfg.decoder_start_token_id;
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
    let mut states: Vec<BeamState> = (0..b)
        .map(|_| BeamState {
            running: (0..nb)
                .map(|k| Hyp {
                    seq: vec![start],
                    score: if k == 0 { 0.0 } else { NEG },
                    finished: false,
                })
                .collect(),
            finished: vec![
                Hyp {
                    seq: vec![start],
                    score: NEG,
                    finished: false,
                };
                nb
            ],
            improvable: true,
        })
        .collect();
    let mut cur_len = 1usize;
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
            let mut acc = Vec::with_capacity(nb * v);
            for (k, h) in st.running.iter().enumerate() {
                let row = bi * nb + k;
                let mut s = logp[row * v..(row + 1) * v].to_vec();
                process(&mut s, &h.seq, cfg);
                acc.extend(s.into_iter().map(|x| x + h.score));
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
    let out_len = states
        .iter()
        .map(|s| s.finished[0].seq.len())
        .max()
        .unwrap_or(1);
    let mut sequences = Vec::with_capacity(b);
    let mut scores = Vec::with_capacity(b);
    for st in states {
        let best = &st.finished[0];
        let mut seq = best.seq.clone();
        seq.resize(out_len, fill);
        sequences.push(seq);
        scores.push(best.score);
    }
    Ok(Generated {
        sequences,
        scores: Some(scores),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::t5::T5Config;

    fn cfg() -> GenerateConfig {
        GenerateConfig::for_model(&T5Config::default())
    }

    #[test]
    fn no_repeat_ngram_bans_completions_of_seen_ngrams() {
        let mut c = cfg();
        c.no_repeat_ngram_size = 2;
        let mut s = vec![0.0f32; 10];
        // seen bigrams: (0,5) (5,7) (7,5); prefix 5 → ban 7.
        process(&mut s, &[0, 5, 7, 5], &c);
        let banned: Vec<usize> = (0..10).filter(|&i| s[i].is_infinite()).collect();
        assert_eq!(banned, vec![7]);
        c.no_repeat_ngram_size = 1;
        let mut s = vec![0.0f32; 10];
        process(&mut s, &[0, 5, 7], &c);
        let banned: Vec<usize> = (0..10).filter(|&i| s[i].is_infinite()).collect();
        assert_eq!(banned, vec![0, 5, 7]);
    }

    #[test]
    fn min_length_bans_eos_until_reached() {
        let mut c = cfg();
        c.min_length = 3;
        let mut s = vec![0.0f32; 4];
        process(&mut s, &[0, 2], &c);
        assert!(s[1].is_infinite() && s[2] == 0.0);
        let mut s = vec![0.0f32; 4];
        process(&mut s, &[0, 2, 3], &c);
        assert!(s.iter().all(|x| *x == 0.0));
    }

    #[test]
    fn overlay_reads_hf_generation_fields() {
        let v = serde_json::json!({
            "num_beams": 4, "length_penalty": 2.0, "max_length": 200, "min_length": 30,
            "no_repeat_ngram_size": 3, "early_stopping": true, "eos_token_id": [1, 5],
            "prefix": "summarize: "
        });
        let c = cfg().overlay_json(&v, "t").unwrap();
        assert_eq!((c.num_beams, c.max_length, c.min_length), (4, 200, 30));
        assert_eq!((c.no_repeat_ngram_size, c.length_penalty), (3, 2.0));
        assert_eq!(c.early_stopping, EarlyStopping::True);
        assert_eq!(c.eos_token_id, vec![1, 5]);
        let never = cfg()
            .overlay_json(&serde_json::json!({"early_stopping": "never"}), "t")
            .unwrap();
        assert_eq!(never.early_stopping, EarlyStopping::Never);
        let e = cfg()
            .overlay_json(&serde_json::json!({"num_beams": "four"}), "gen.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gen.json") && e.contains("num_beams"), "{e}");
    }

    #[test]
    fn topk_is_descending_and_stable() {
        assert_eq!(topk(&[1.0, 3.0, 3.0, -1.0, 2.0], 3), vec![1, 2, 4]);
        assert_eq!(argmax_first(&[1.0, 3.0, 3.0]), 1);
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
        assert_eq!(argmax_first(&[1.0, -f32::NAN, f32::NAN, 9.0]), 1);
    }
}
