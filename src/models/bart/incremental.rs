//! Incremental decoding for generation, with the seq2seq state types (`EncoderState`,
//! `DecoderCache`) and `Seq2SeqLm`'s method signatures, as T5's: the
//! encoder runs once per input and each decoder layer's cross-attention K/V (with their
//! biases) are projected once; self-attention keeps a K/V cache that grows by one
//! position per step. A step's token sits at position `cache.len` (BART's learned row
//! `len + 2`, Marian's sinusoidal row `len`), and its query attends to every cached key.

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::models::seq2seq::{DecoderCache, EncoderState};
use crate::nn::{LayerNorm, Mode};
use crate::tensor::Tensor;

use super::layers::{BartAttention, BartLayer};
use super::model::BartForConditionalGeneration;

/// The encoder-decoder attention module of a decoder layer and its LayerNorm.
fn cross_attention(layer: &BartLayer) -> Result<&(BartAttention, LayerNorm)> {
    layer
        .cross
        .as_ref()
        .ok_or_else(|| Error::msg("BART: a decoder layer has no cross-attention"))
}

impl BartLayer {
    /// One decoding step of decoder layer `i` (this one) on `h [N, 1, d]`: self-attention
    /// over the cached keys plus this position's (appended to `cache`), cross-attention
    /// over the encoder's projected K/V, feed-forward. Evaluation mode.
    fn step(
        &self,
        h: &Tensor,
        i: usize,
        cache: &mut DecoderCache,
        cross_kv: &(Tensor, Tensor),
        enc_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (mode, a) = (Mode::Eval, &self.self_attn);
        let (k, v) = cache.append(i, a.project(h, &a.k)?, a.project(h, &a.v)?)?;
        let out = a.attend(h, &k, &v, a.opts(false, None, 0.0, 0))?;
        let h = self.self_norm.forward_residual(&out, h, 0.0, 0)?;
        let (cross, norm) = cross_attention(self)?;
        let out = cross.attend(
            &h,
            &cross_kv.0,
            &cross_kv.1,
            cross.opts(false, enc_mask, 0.0, 0),
        )?;
        let h = norm.forward_residual(&out, &h, 0.0, 0)?;
        self.ff_residual(&h, mode)
    }
}

impl BartForConditionalGeneration {
    /// Run the encoder (eval mode, no tape) and project every decoder layer's
    /// cross-attention K/V.
    pub fn encoder_state(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<EncoderState> {
        let _g = no_grad();
        let hidden = self.encode(input_ids, attention_mask, Mode::Eval)?;
        EncoderState::new(hidden, attention_mask, &self.decoder.layers, |layer, h| {
            let (a, _) = cross_attention(layer)?;
            Ok((a.project(h, &a.k)?, a.project(h, &a.v)?))
        })
    }

    /// One decoding step: `tokens` (one per row) → logits `[N, vocab]` (with
    /// `final_logits_bias`); appends this position's self-attention K/V to `cache`.
    pub fn decode_step(
        &self,
        tokens: &[i32],
        enc: &EncoderState,
        cache: &mut DecoderCache,
    ) -> Result<Tensor> {
        let _g = no_grad();
        let n = tokens.len();
        let layers = &self.decoder.layers;
        cache.check_step("BART", n, enc, layers.len())?;
        let ids = Tensor::from_i32(tokens.to_vec(), [n, 1], self.shared.device())?;
        let x = self.embed_tokens(&ids)?;
        let mut h = self.decoder.embed(&x, cache.len, Mode::Eval, 0.0)?;
        for (i, layer) in layers.iter().enumerate() {
            h = layer.step(&h, i, cache, &enc.cross_kv[i], enc.mask.as_ref())?;
        }
        cache.len += 1;
        self.lm_logits(&h)?.reshape([n, self.config.vocab_size])
    }
}
