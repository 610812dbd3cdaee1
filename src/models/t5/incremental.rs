//! Incremental decoding for generation: the encoder runs once per input and each
//! decoder layer's cross-attention K/V are projected once (`EncoderState`); decoder
//! self-attention keeps a K/V cache that grows by one position per step
//! (`DecoderCache`; both in `models::seq2seq`, every encoder-decoder family's). A step
//! feeds one token per row: its query sits at absolute position `len`, so its
//! relative-position bias is row `len` of the full causal bias, and the backend's causal
//! alignment (query i sees keys ≤ i + lk − lq) lets it see every cached key.

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::models::seq2seq::{DecoderCache, EncoderState};
use crate::tensor::Tensor;

use super::attention::t5_opts;
use super::dropout::Dropout;
use super::fp16::pre_norm;
use super::model::T5ForConditionalGeneration;

impl T5ForConditionalGeneration {
    /// Run the encoder (eval mode, no tape) and project the cross-attention K/V.
    pub fn encoder_state(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<EncoderState> {
        let _g = no_grad();
        let hidden = self.encode(input_ids, attention_mask, &Dropout::off())?;
        let cross_kv = self
            .decoder
            .blocks
            .iter()
            .map(|blk| {
                let (attn, _) = blk
                    .cross
                    .as_ref()
                    .ok_or_else(|| Error::msg("T5: a decoder block has no cross-attention"))?;
                Ok((
                    attn.project(&hidden, &attn.k)?,
                    attn.project(&hidden, &attn.v)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(EncoderState {
            hidden,
            mask: attention_mask.cloned(),
            cross_kv,
        })
    }

    /// One decoding step: `tokens` (one per row) → logits `[N, vocab]`; appends this
    /// position's self-attention K/V to `cache`.
    pub fn decode_step(
        &self,
        tokens: &[i32],
        enc: &EncoderState,
        cache: &mut DecoderCache,
    ) -> Result<Tensor> {
        let _g = no_grad();
        let n = tokens.len();
        if n != enc.batch() {
            return Err(Error::msg(format!(
                "T5 decode_step: {n} tokens for an encoder state of {} rows",
                enc.batch()
            )));
        }
        if enc.cross_kv.len() != self.decoder.blocks.len()
            || (!cache.kv.is_empty() && cache.kv.len() != self.decoder.blocks.len())
        {
            return Err(Error::msg(format!(
                "T5 decode_step: encoder state / cache built for another model \
                 ({} / {} layers, this decoder has {})",
                enc.cross_kv.len(),
                cache.kv.len(),
                self.decoder.blocks.len()
            )));
        }
        let pos = cache.len;
        let ids = Tensor::from_i32(tokens.to_vec(), [n, 1], self.shared.device())?;
        let mut h = self.residual(self.shared.embedding(&ids)?)?;
        let bias = self.decoder.position_bias(&self.config, 1, pos + 1, pos)?;
        let first = cache.kv.is_empty();
        for (i, blk) in self.decoder.blocks.iter().enumerate() {
            let a = &blk.self_attn;
            let x = pre_norm(&blk.self_norm, &h)?;
            let (k_new, v_new) = (a.project(&x, &a.k)?, a.project(&x, &a.v)?);
            let (k, v) = if first {
                (k_new, v_new)
            } else {
                let (k_old, v_old) = &cache.kv[i];
                (
                    Tensor::cat(&[k_old, &k_new], 1)?,
                    Tensor::cat(&[v_old, &v_new], 1)?,
                )
            };
            let opt = t5_opts(true, None, Some(&bias));
            let out = a.attend(&x, &k, &v, opt, &Dropout::off(), h.dtype())?;
            if first {
                cache.kv.push((k, v));
            } else {
                cache.kv[i] = (k, v);
            }
            h = h.add(&out)?;
            let (cross, norm) = blk
                .cross
                .as_ref()
                .ok_or_else(|| Error::msg("T5: a decoder block has no cross-attention"))?;
            let (ck, cv) = &enc.cross_kv[i];
            let x = pre_norm(norm, &h)?;
            let opt = t5_opts(false, enc.mask.as_ref(), None);
            h = h.add(&cross.attend(&x, ck, cv, opt, &Dropout::off(), h.dtype())?)?;
            h = blk.ff_residual(&h, &Dropout::off())?;
        }
        cache.len += 1;
        let h = pre_norm(&self.decoder.final_norm, &h)?;
        let v = self.config.vocab_size;
        self.lm_logits(&h)?.reshape([n, v])
    }
}
