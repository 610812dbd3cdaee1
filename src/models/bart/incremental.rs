//! Incremental decoding for generation, with the seq2seq state types (`EncoderState`,
//! `DecoderCache`) and `Seq2SeqLm`'s method signatures, as T5's: the
//! encoder runs once per input and each decoder layer's cross-attention K/V (with their
//! biases) are projected once; self-attention keeps a K/V cache that grows by one
//! position per step. A step's token sits at position `cache.len` (BART's learned row
//! `len + 2`, Marian's sinusoidal row `len`), and its query attends to every cached key.

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::models::seq2seq::{DecoderCache, EncoderState};
use crate::nn::Mode;
use crate::tensor::Tensor;

use super::layers::BartLayer;
use super::model::BartForConditionalGeneration;

/// The encoder-decoder attention module of a decoder layer.
fn cross_attention(layer: &BartLayer) -> Result<&super::layers::BartAttention> {
    layer
        .cross
        .as_ref()
        .map(|(a, _)| a)
        .ok_or_else(|| Error::msg("BART: a decoder layer has no cross-attention"))
}

impl BartLayer {
    /// One decoding step of this decoder layer on `h [N, 1, d]`: self-attention over the
    /// cached keys plus this position's (returned for the cache), cross-attention over
    /// the encoder's projected K/V, feed-forward. Evaluation mode.
    fn step(
        &self,
        h: &Tensor,
        past: Option<&(Tensor, Tensor)>,
        cross_kv: &(Tensor, Tensor),
        enc_mask: Option<&Tensor>,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let (mode, a) = (Mode::Eval, &self.self_attn);
        let (k_new, v_new) = (a.project(h, &a.k)?, a.project(h, &a.v)?);
        let (k, v) = match past {
            None => (k_new, v_new),
            Some((k_old, v_old)) => (
                Tensor::cat(&[k_old, &k_new], 1)?,
                Tensor::cat(&[v_old, &v_new], 1)?,
            ),
        };
        let out = a.attend(h, &k, &v, a.opts(false, None, 0.0, 0))?;
        let h = self.self_norm.forward_residual(&out, h, 0.0, 0)?;
        let (cross, norm) = self
            .cross
            .as_ref()
            .ok_or_else(|| Error::msg("BART: a decoder layer has no cross-attention"))?;
        let out = cross.attend(
            &h,
            &cross_kv.0,
            &cross_kv.1,
            cross.opts(false, enc_mask, 0.0, 0),
        )?;
        let h = norm.forward_residual(&out, &h, 0.0, 0)?;
        Ok((self.ff_residual(&h, mode)?, (k, v)))
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
        let cross_kv = self
            .decoder
            .layers
            .iter()
            .map(|layer| {
                let a = cross_attention(layer)?;
                Ok((a.project(&hidden, &a.k)?, a.project(&hidden, &a.v)?))
            })
            .collect::<Result<_>>()?;
        Ok(EncoderState {
            hidden,
            mask: attention_mask.cloned(),
            cross_kv,
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
        let cached = cache.kv.len();
        let cache_fits = cached == 0 || cached == layers.len();
        if n != enc.batch() || enc.cross_kv.len() != layers.len() || !cache_fits {
            return Err(Error::msg(format!(
                "BART decode_step: {n} tokens, an encoder state of {} rows for {} layers and \
                 a cache of {cached} layers do not fit this decoder of {} layers",
                enc.batch(),
                enc.cross_kv.len(),
                layers.len()
            )));
        }
        let ids = Tensor::from_i32(tokens.to_vec(), [n, 1], self.shared.device())?;
        let x = self.embed_tokens(&ids)?;
        let mut h = self.decoder.embed(&x, cache.len, Mode::Eval, 0.0)?;
        let first = cache.kv.is_empty();
        for (i, layer) in layers.iter().enumerate() {
            let past = (!first).then(|| &cache.kv[i]);
            let (out, kv) = layer.step(&h, past, &enc.cross_kv[i], enc.mask.as_ref())?;
            h = out;
            if first {
                cache.kv.push(kv);
            } else {
                cache.kv[i] = kv;
            }
        }
        cache.len += 1;
        self.lm_logits(&h)?.reshape([n, self.config.vocab_size])
    }
}
