//! transformers' logits processors, as `GenerationMixin._get_logits_processor` builds
//! them for greedy and beam search (transformers 5.25 `generation/logits_process.py`),
//! applied in its order to one row of scores: `NoRepeatNGramLogitsProcessor`,
//! `NoBadWordsLogitsProcessor`, `MinLengthLogitsProcessor` /
//! `MinNewTokensLengthLogitsProcessor`, `ForcedBOSTokenLogitsProcessor`,
//! `ForcedEOSTokenLogitsProcessor`, and `LogitNormalization` (a log_softmax) last when
//! `renormalize_logits` is set. Greedy search runs them on the raw logits, beam search
//! on their log_softmax.

use crate::models::generation_config::GenerateConfig;

/// The processors one generate() call runs, built once from its settings.
pub(super) struct Processors<'a> {
    no_repeat_ngram_size: usize,
    /// Bad words of one token: banned at every step.
    bad_tokens: Vec<i32>,
    /// Longer bad words: the last token is banned right after the rest.
    bad_sequences: Vec<&'a [i32]>,
    eos: &'a [i32],
    /// Eos is banned while a sequence is shorter (decoder start included).
    min_length: usize,
    forced_bos: Option<i32>,
    forced_eos: &'a [i32],
    /// The total length generation stops at; forced eos comes at `max_length - 1`.
    max_length: usize,
    renormalize: bool,
}

impl<'a> Processors<'a> {
    pub(super) fn new(cfg: &'a GenerateConfig, max_length: usize) -> Processors<'a> {
        // HF drops a bad word that is exactly one eos id (eos stays allowed).
        let words = cfg.bad_words_ids.as_deref().unwrap_or_default();
        let kept = words
            .iter()
            .filter(|w| !(w.len() == 1 && cfg.eos_token_id.contains(&w[0])));
        let (single, multi): (Vec<&Vec<i32>>, Vec<&Vec<i32>>) = kept.partition(|w| w.len() == 1);
        let has_eos = !cfg.eos_token_id.is_empty();
        Processors {
            no_repeat_ngram_size: cfg.no_repeat_ngram_size,
            bad_tokens: single.iter().map(|w| w[0]).collect(),
            bad_sequences: multi.into_iter().map(|w| w.as_slice()).collect(),
            eos: &cfg.eos_token_id,
            // Without an eos, HF adds neither min-length processor.
            min_length: if has_eos { cfg.total_min_length() } else { 0 },
            forced_bos: cfg.forced_bos_token_id,
            forced_eos: cfg.forced_eos_token_id.as_deref().unwrap_or_default(),
            max_length,
            renormalize: cfg.renormalize_logits,
        }
    }

    /// Process one row's `scores` (vocab-sized) given its tokens so far, `seq`
    /// (decoder start included). Token ids were checked against the vocabulary.
    pub(super) fn apply(&self, scores: &mut [f32], seq: &[i32]) {
        let cur = seq.len();
        // NoRepeatNGram: every token that would complete an n-gram already in `seq`.
        let n = self.no_repeat_ngram_size;
        if n > 0 && cur >= n {
            let prefix = &seq[cur + 1 - n..];
            for i in 0..=(cur - n) {
                if seq[i..i + n - 1] == *prefix {
                    scores[seq[i + n - 1] as usize] = f32::NEG_INFINITY;
                }
            }
        }
        // NoBadWords (a SequenceBias of -inf: added, not assigned).
        for &t in &self.bad_tokens {
            scores[t as usize] += f32::NEG_INFINITY;
        }
        for w in &self.bad_sequences {
            let (prefix, last) = w.split_at(w.len() - 1);
            if prefix.len() <= cur && seq[cur - prefix.len()..] == *prefix {
                scores[last[0] as usize] += f32::NEG_INFINITY;
            }
        }
        // MinLength / MinNewTokens (the decoder prompt is the start token alone).
        if cur < self.min_length {
            for &e in self.eos {
                scores[e as usize] = f32::NEG_INFINITY;
            }
        }
        // ForcedBOS: the first new token; ForcedEOS: the last one max_length allows.
        let force = |scores: &mut [f32], ids: &[i32]| {
            scores.fill(f32::NEG_INFINITY);
            for &t in ids {
                scores[t as usize] = 0.0;
            }
        };
        if let (Some(bos), 1) = (self.forced_bos, cur) {
            force(scores, &[bos]);
        }
        if !self.forced_eos.is_empty() && cur + 1 == self.max_length {
            force(scores, self.forced_eos);
        }
        if self.renormalize {
            log_softmax(scores);
        }
    }
}

/// In-place log_softmax of one row, in torch's order: `(x - max) - log(sum(exp(x - max)))`
/// (the sum accumulated in f64).
pub(super) fn log_softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = x.iter().map(|&v| f64::from((v - max).exp())).sum();
    let lse = sum.ln() as f32;
    for v in x.iter_mut() {
        *v = (*v - max) - lse;
    }
}

/// Index of the first maximum (torch.argmax's tie rule; a NaN counts as the maximum).
pub(super) fn argmax_first(x: &[f32]) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(v: serde_json::Value) -> GenerateConfig {
        GenerateConfig::with_special_tokens(0, vec![1], Some(0))
            .overlay_json(&v, "test")
            .unwrap()
    }

    fn banned(c: &GenerateConfig, max_len: usize, seq: &[i32]) -> Vec<usize> {
        let mut s = vec![0.0f32; 10];
        Processors::new(c, max_len).apply(&mut s, seq);
        (0..10).filter(|&i| s[i] == f32::NEG_INFINITY).collect()
    }

    #[test]
    fn no_repeat_ngram_bans_completions_of_seen_ngrams() {
        // seen bigrams: (0,5) (5,7) (7,5); prefix 5 → ban 7.
        let c = cfg(json!({"no_repeat_ngram_size": 2}));
        assert_eq!(banned(&c, 20, &[0, 5, 7, 5]), vec![7]);
        let c = cfg(json!({"no_repeat_ngram_size": 1}));
        assert_eq!(banned(&c, 20, &[0, 5, 7]), vec![0, 5, 7]);
    }

    #[test]
    fn min_length_and_min_new_tokens_ban_eos_until_reached() {
        let c = cfg(json!({"min_length": 3}));
        assert_eq!(banned(&c, 20, &[0, 2]), vec![1]);
        assert!(banned(&c, 20, &[0, 2, 3]).is_empty());
        // min_new_tokens 3: eos banned until 3 tokens follow the start; it wins over
        // min_length.
        let c = cfg(json!({"min_new_tokens": 3, "min_length": 9}));
        assert_eq!(banned(&c, 20, &[0, 2, 3]), vec![1]);
        assert!(banned(&c, 20, &[0, 2, 3, 4]).is_empty());
    }

    #[test]
    fn bad_words_ban_single_tokens_and_sequence_ends() {
        let c = cfg(json!({"bad_words_ids": [[4], [2, 3], [5, 2, 6], [1]]}));
        // [1] is eos: dropped. [2, 3] bans 3 after a 2; [5, 2, 6] bans 6 after 5, 2.
        assert_eq!(banned(&c, 20, &[0, 7]), vec![4]);
        assert_eq!(banned(&c, 20, &[0, 2]), vec![3, 4]);
        assert_eq!(banned(&c, 20, &[0, 5, 2]), vec![3, 4, 6]);
        // A prefix longer than the sequence never matches.
        assert_eq!(banned(&c, 20, &[2]), vec![3, 4]);
    }

    #[test]
    fn forced_tokens_leave_one_choice() {
        let c = cfg(json!({"forced_bos_token_id": 6, "forced_eos_token_id": [1, 2]}));
        let all_but = |keep: &[usize]| (0..10).filter(|i| !keep.contains(i)).collect::<Vec<_>>();
        assert_eq!(banned(&c, 5, &[0]), all_but(&[6]));
        assert!(banned(&c, 5, &[0, 6]).is_empty());
        assert_eq!(
            banned(&c, 5, &[0, 6, 3, 3]),
            all_but(&[1, 2]),
            "at max_length - 1"
        );
    }

    #[test]
    fn renormalize_makes_a_log_distribution() {
        let c = cfg(json!({"bad_words_ids": [[3]], "renormalize_logits": true}));
        let mut s: Vec<f32> = (0..10).map(|i| i as f32 * 0.3).collect();
        Processors::new(&c, 20).apply(&mut s, &[0, 4]);
        let total: f64 = s.iter().map(|&x| f64::from(x).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        assert_eq!(s[3], f32::NEG_INFINITY);
    }

    #[test]
    fn argmax_takes_the_first_maximum_and_nan() {
        assert_eq!(argmax_first(&[1.0, 3.0, 3.0]), 1);
        assert_eq!(argmax_first(&[1.0, -f32::NAN, f32::NAN, 9.0]), 1);
    }
}
