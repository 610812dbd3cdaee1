//! Greedy and beam-search generation for any encoder-decoder LM ([`Seq2SeqLm`]),
//! reproducing transformers' `generate()` (5.25 `GenerationMixin._sample` and
//! `_beam_search`) token for token: its settings ([`GenerateConfig`], the model's own
//! by default), its logits processors in its order (`generate/logits.rs`:
//! no_repeat_ngram, bad_words, min_length / min_new_tokens, forced bos / eos,
//! renormalization), its stopping rules (eos, max length), its beam search state
//! machine (`generate/beam.rs`) and its output layout (decoder start first, rows padded
//! to the longest; greedy pads finished rows with `pad_token_id` (else eos), beam
//! search with `pad_token_id or eos`, as HF does).
//!
//! The model runs incrementally (`Seq2SeqLm::decode_step` with a K/V cache); the search
//! itself is host code over the step's scores, which are small next to the decoder's
//! work. Scores are kept in f32 with HF's order of operations so near-ties resolve the
//! same way.

mod beam;
mod logits;

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::models::seq2seq::{DecoderCache, Seq2SeqLm};
use crate::tensor::Tensor;

pub use crate::models::generation_config::{EarlyStopping, GenerateConfig};

use logits::{argmax_first, Processors};

/// Generated sequences (each starts with the decoder start token; rows padded to one
/// length): one per input for greedy search, `num_return_sequences` per input (input
/// by input, best first) for beam search, with HF's `sequences_scores`.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    pub sequences: Vec<Vec<i32>>,
    pub scores: Option<Vec<f32>>,
}

/// Generate for I32 `input_ids [B, Ls]` with an optional I32 `attention_mask`.
/// Without a mask, padding is masked when the input contains the pad id and pad is not
/// eos (HF `_prepare_attention_mask_for_generation`).
pub fn generate(
    model: &dyn Seq2SeqLm,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
    cfg: &GenerateConfig,
) -> Result<Generated> {
    let _g = no_grad();
    input_ids.expect_rank("generate (input_ids)", 2)?;
    // Settings first: a bad configuration is named even for an empty batch.
    cfg.validate(model.vocab_size())?;
    if input_ids.dims()[0] == 0 {
        return Ok(Generated {
            sequences: Vec::new(),
            scores: (cfg.num_beams > 1).then(Vec::new),
        });
    }
    if input_ids.dims()[1] == 0 {
        return Err(Error::msg("generate: input_ids has no tokens"));
    }
    let derived;
    let mask = match attention_mask {
        Some(m) => Some(m),
        None => {
            derived = derive_mask(input_ids, cfg)?;
            derived.as_ref()
        }
    };
    let max_len = cfg.total_max_length(model.max_position_embeddings());
    if cfg.num_beams == 1 {
        greedy(model, input_ids, mask, cfg, max_len)
    } else {
        beam::beam_search(model, input_ids, mask, cfg, max_len)
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

/// HF `_sample` without sampling: the processed logits' argmax, finished rows padded.
fn greedy(
    model: &dyn Seq2SeqLm,
    input_ids: &Tensor,
    mask: Option<&Tensor>,
    cfg: &GenerateConfig,
    max_len: usize,
) -> Result<Generated> {
    let b = input_ids.dims()[0];
    let v = model.vocab_size();
    let processors = Processors::new(cfg, max_len);
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
            processors.apply(&mut scores, seq);
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
