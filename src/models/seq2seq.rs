//! What generation, training and `infer` need of an encoder-decoder language model
//! (transformers' `AutoModelForSeq2SeqLM` face): the [`Seq2SeqLm`] trait every family
//! implements (T5, BART, Marian), and the incremental-decoding state it works on.
//!
//! Generation runs the encoder once per input (`encoder_state`: the encoder output and
//! each decoder layer's cross-attention K/V, an [`EncoderState`]) and then the decoder
//! one token per row per step (`decode_step`), with the self-attention K/V of the
//! tokens so far in a [`DecoderCache`]. Beam search reorders rows by gathering along the
//! batch dimension (`select_rows`).
//!
//! Training is teacher forcing, the same in every family: the decoder reads the labels
//! shifted one position to the right (`shift_tokens_right`), the loss is the mean
//! cross-entropy over the labels that are not -100 (`lm_loss`).

use std::path::Path;

use crate::error::{Error, Result};
use crate::models::generation_config::GenerateConfig;
use crate::nn::{Mode, ParamStore};
use crate::ops::softmax::IGNORE_INDEX;
use crate::tensor::Tensor;

/// An encoder-decoder LM as generation (`tasks::generate`), seq2seq training and `infer`
/// drive it. Implemented by `T5ForConditionalGeneration` and
/// `BartForConditionalGeneration` (BART and Marian); `models::auto::load_seq2seq_lm`
/// loads any family behind it.
pub trait Seq2SeqLm {
    /// config.json's `model_type` ("t5", "bart", "marian").
    fn model_type(&self) -> &'static str;
    /// Rows of the LM head: the ids generation may produce.
    fn vocab_size(&self) -> usize;
    fn pad_token_id(&self) -> i32;
    fn eos_token_ids(&self) -> Vec<i32>;
    /// The first decoder input (`_shift_right`'s position 0, generation's first token).
    fn decoder_start_token_id(&self) -> i32;
    /// config.json's `max_position_embeddings`, for families with a position table:
    /// generate() caps its default length at it (T5 has none).
    fn max_position_embeddings(&self) -> Option<usize>;
    /// The model's own generation settings (its generation_config.json, else
    /// config.json, over transformers' defaults), as `generate()` with no arguments uses.
    fn generation_config(&self) -> &GenerateConfig;
    /// Replace them (a model trained from scratch gets the settings its evaluation used);
    /// `save` writes them as generation_config.json.
    fn set_generation_config(&mut self, cfg: GenerateConfig);

    /// Run the encoder (eval mode, no tape) over I32 `input_ids [N, Ls]` and an optional
    /// I32 `attention_mask` (1 = token), and project every cross-attention K/V.
    fn encoder_state(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<EncoderState>;
    /// One decoding step: `tokens` (one per row of `enc`) → logits `[N, vocab]`; appends
    /// this position's self-attention K/V to `cache`.
    fn decode_step(
        &self,
        tokens: &[i32],
        enc: &EncoderState,
        cache: &mut DecoderCache,
    ) -> Result<Tensor>;
    /// Logits `[B, Lt, vocab]` of a full teacher-forced pass (on the tape in training).
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        decoder_input_ids: &Tensor,
        mode: Mode,
    ) -> Result<Tensor>;
    /// The decoder inputs for `labels` (HF `shift_tokens_right` / T5's `_shift_right`
    /// with this model's pad and decoder start).
    fn shift_right(&self, labels: &Tensor) -> Result<Tensor> {
        shift_tokens_right(labels, self.pad_token_id(), self.decoder_start_token_id())
    }
    /// `(loss, logits)` for `labels [B, Lt]` (-100 = ignored), teacher-forced on the
    /// labels shifted right: the mean cross-entropy over kept tokens.
    fn loss(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        labels: &Tensor,
        mode: Mode,
    ) -> Result<(Tensor, Tensor)> {
        let logits = self.forward(input_ids, attention_mask, &self.shift_right(labels)?, mode)?;
        Ok((lm_loss(&logits, labels)?, logits))
    }
    /// Unique trainable parameters under their HF names (for the optimizer).
    fn trainable(&self) -> Vec<(String, Tensor)>;
    fn store(&self) -> &ParamStore;
    /// Write an HF checkpoint directory (config.json, generation_config.json,
    /// model.safetensors) that `from_pretrained` loads.
    fn save(&self, dir: &Path) -> Result<()>;
    /// Recompute each block's forward in backward (activation checkpointing).
    fn set_checkpointing(&mut self, on: bool);
}

/// The [`Seq2SeqLm`] methods every family implements alike, inside its `impl Seq2SeqLm`:
/// its special ids from `self.config` (`vocab_size`, `pad_id()`, `eos_ids()`,
/// `decoder_start_id()`), its settings in `self.generation`, its parameters in
/// `self.store`, its stacks' `checkpointing` switches, and the model's own (inherent)
/// methods of the trait's other names. The family writes `model_type` and
/// `max_position_embeddings`.
macro_rules! seq2seq_lm_common {
    () => {
        fn vocab_size(&self) -> usize {
            self.config.vocab_size
        }
        fn pad_token_id(&self) -> i32 {
            self.config.pad_id()
        }
        fn eos_token_ids(&self) -> Vec<i32> {
            self.config.eos_ids()
        }
        fn decoder_start_token_id(&self) -> i32 {
            self.config.decoder_start_id()
        }
        fn generation_config(&self) -> &$crate::models::generation_config::GenerateConfig {
            &self.generation
        }
        fn set_generation_config(
            &mut self,
            cfg: $crate::models::generation_config::GenerateConfig,
        ) {
            self.generation = cfg;
        }
        fn encoder_state(
            &self,
            input_ids: &$crate::tensor::Tensor,
            attention_mask: Option<&$crate::tensor::Tensor>,
        ) -> $crate::error::Result<$crate::models::seq2seq::EncoderState> {
            Self::encoder_state(self, input_ids, attention_mask)
        }
        fn decode_step(
            &self,
            tokens: &[i32],
            enc: &$crate::models::seq2seq::EncoderState,
            cache: &mut $crate::models::seq2seq::DecoderCache,
        ) -> $crate::error::Result<$crate::tensor::Tensor> {
            Self::decode_step(self, tokens, enc, cache)
        }
        fn forward(
            &self,
            input_ids: &$crate::tensor::Tensor,
            attention_mask: Option<&$crate::tensor::Tensor>,
            decoder_input_ids: &$crate::tensor::Tensor,
            mode: $crate::nn::Mode,
        ) -> $crate::error::Result<$crate::tensor::Tensor> {
            Self::forward(self, input_ids, attention_mask, decoder_input_ids, mode)
        }
        fn trainable(&self) -> Vec<(String, $crate::tensor::Tensor)> {
            self.store.trainable()
        }
        fn store(&self) -> &$crate::nn::ParamStore {
            &self.store
        }
        fn save(&self, dir: &std::path::Path) -> $crate::error::Result<()> {
            Self::save(self, dir)
        }
        fn set_checkpointing(&mut self, on: bool) {
            self.encoder.checkpointing = on;
            self.decoder.checkpointing = on;
        }
    };
}
pub(crate) use seq2seq_lm_common;

/// HF `shift_tokens_right` (T5's `_shift_right`): `decoder_start` at position 0,
/// `labels [B, L]` moved one to the right, -100 replaced by `pad`.
pub fn shift_tokens_right(labels: &Tensor, pad: i32, decoder_start: i32) -> Result<Tensor> {
    labels.expect_rank("shift_tokens_right (labels)", 2)?;
    let l = labels.dims()[1];
    let shifted: Vec<i32> = labels
        .to_vec_i32()?
        .chunks(l.max(1))
        .flat_map(|row| std::iter::once(decoder_start).chain(row[..l - 1].iter().copied()))
        .map(|t| if t == IGNORE_INDEX { pad } else { t })
        .collect();
    Tensor::from_i32(shifted, labels.dims(), labels.device())
}

/// Mean cross-entropy of `logits [B, L, vocab]` against `labels [B, L]`, -100 ignored
/// (HF `CrossEntropyLoss()` on the flattened logits).
pub fn lm_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (b, l, v) = (logits.dims()[0], logits.dims()[1], logits.dims()[2]);
    logits
        .reshape([b * l, v])?
        .cross_entropy(&labels.reshape([b * l])?, IGNORE_INDEX)
}

/// Encoder output of a batch, with every decoder layer's cross-attention K/V.
pub struct EncoderState {
    /// `[N, Ls, d_model]`.
    pub hidden: Tensor,
    /// I32 `[N, Ls]`, 1 = token.
    pub mask: Option<Tensor>,
    /// Per decoder layer: K, V `[N, Ls, H, D]`.
    pub cross_kv: Vec<(Tensor, Tensor)>,
}

/// Self-attention K/V of the tokens decoded so far, per decoder layer `[N, len, H, D]`.
pub struct DecoderCache {
    pub kv: Vec<(Tensor, Tensor)>,
    pub len: usize,
}

/// Rows `rows` of `t` along dim 0 (any rank), as a new tensor.
pub fn select_rows(t: &Tensor, rows: &[i32]) -> Result<Tensor> {
    let n = t.dims()[0];
    if let Some(bad) = rows.iter().find(|&&r| r < 0 || r as usize >= n) {
        return Err(Error::msg(format!(
            "select_rows: row {bad} is outside [0, {n}) of {}",
            t.shape()
        )));
    }
    let rest = t.elem_count() / n.max(1);
    let mut dims = t.dims().to_vec();
    dims[0] = rows.len();
    let ids = Tensor::from_i32(rows.to_vec(), [rows.len()], t.device())?;
    t.reshape([n, rest])?.index_select(&ids)?.reshape(dims)
}

fn select_rows_i32(t: &Tensor, rows: &[i32]) -> Result<Tensor> {
    let n = t.dims()[0];
    let rest = t.elem_count() / n.max(1);
    let v = t.to_vec_i32()?;
    let mut out = Vec::with_capacity(rows.len() * rest);
    for &r in rows {
        let r = r as usize;
        if r >= n {
            return Err(Error::msg(format!("select_rows: row {r} outside [0, {n})")));
        }
        out.extend_from_slice(&v[r * rest..(r + 1) * rest]);
    }
    let mut dims = t.dims().to_vec();
    dims[0] = rows.len();
    Tensor::from_i32(out, dims, t.device())
}

impl EncoderState {
    /// The state of encoder output `hidden` under `mask`, with each decoder layer's
    /// cross-attention K/V from `project(layer, hidden)`.
    pub fn new<L>(
        hidden: Tensor,
        mask: Option<&Tensor>,
        layers: &[L],
        project: impl Fn(&L, &Tensor) -> Result<(Tensor, Tensor)>,
    ) -> Result<EncoderState> {
        let cross_kv = layers
            .iter()
            .map(|l| project(l, &hidden))
            .collect::<Result<_>>()?;
        Ok(EncoderState {
            hidden,
            mask: mask.cloned(),
            cross_kv,
        })
    }

    /// The state for rows `rows` of this batch (e.g. each input repeated per beam).
    pub fn select(&self, rows: &[i32]) -> Result<EncoderState> {
        Ok(EncoderState {
            hidden: select_rows(&self.hidden, rows)?,
            mask: self
                .mask
                .as_ref()
                .map(|m| select_rows_i32(m, rows))
                .transpose()?,
            cross_kv: self
                .cross_kv
                .iter()
                .map(|(k, v)| Ok((select_rows(k, rows)?, select_rows(v, rows)?)))
                .collect::<Result<_>>()?,
        })
    }

    pub fn batch(&self) -> usize {
        self.hidden.dims()[0]
    }
}

impl DecoderCache {
    pub fn new() -> DecoderCache {
        DecoderCache {
            kv: Vec::new(),
            len: 0,
        }
    }

    /// Refuse a decoding step of `n` tokens that does not fit `enc` (one row per token),
    /// a decoder of `layers` layers, or this cache (empty, or one entry per layer).
    /// `model` names the family in the error.
    pub fn check_step(
        &self,
        model: &str,
        n: usize,
        enc: &EncoderState,
        layers: usize,
    ) -> Result<()> {
        let cached = self.kv.len();
        if n != enc.batch() || enc.cross_kv.len() != layers || (cached != 0 && cached != layers) {
            return Err(Error::msg(format!(
                "{model} decode_step: {n} tokens, an encoder state of {} rows for {} layers \
                 and a cache of {cached} layers do not fit this decoder of {layers} layers",
                enc.batch(),
                enc.cross_kv.len(),
            )));
        }
        Ok(())
    }

    /// Layer `layer`'s self-attention K/V with this position's `k_new` / `v_new` `[N, 1,
    /// H, D]` appended, kept for the next step (a step visits the layers in order).
    pub fn append(
        &mut self,
        layer: usize,
        k_new: Tensor,
        v_new: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let kv = match self.kv.get(layer) {
            Some((k_old, v_old)) => (
                Tensor::cat(&[k_old, &k_new], 1)?,
                Tensor::cat(&[v_old, &v_new], 1)?,
            ),
            None if layer == self.kv.len() => (k_new, v_new),
            None => {
                return Err(Error::msg(format!(
                    "decoder cache: layer {layer} before layer {}",
                    self.kv.len()
                )))
            }
        };
        match self.kv.get_mut(layer) {
            Some(slot) => *slot = kv.clone(),
            None => self.kv.push(kv.clone()),
        }
        Ok(kv)
    }

    /// Keep rows `rows` (beam search: each surviving beam's parent).
    pub fn reorder(&mut self, rows: &[i32]) -> Result<()> {
        for (k, v) in self.kv.iter_mut() {
            *k = select_rows(k, rows)?;
            *v = select_rows(v, rows)?;
        }
        Ok(())
    }
}

impl Default for DecoderCache {
    fn default() -> Self {
        DecoderCache::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::Device;

    fn zeros(dims: [usize; 4]) -> Tensor {
        Tensor::from_f32(vec![0.0; dims.iter().product()], dims, Device::Cpu).unwrap()
    }

    #[test]
    fn cache_appends_per_layer_and_refuses_misfits() {
        let enc = EncoderState {
            hidden: zeros([2, 3, 1, 4]),
            mask: None,
            cross_kv: vec![(zeros([2, 3, 1, 4]), zeros([2, 3, 1, 4])); 2],
        };
        let mut cache = DecoderCache::new();
        cache.check_step("M", 2, &enc, 2).unwrap();
        for step in 1..=2 {
            for layer in 0..2 {
                let (k, v) = cache
                    .append(layer, zeros([2, 1, 1, 4]), zeros([2, 1, 1, 4]))
                    .unwrap();
                assert_eq!(
                    (k.dims(), v.dims()),
                    (&[2, step, 1, 4][..], &[2, step, 1, 4][..])
                );
            }
        }
        assert_eq!(cache.kv.len(), 2);
        let e = DecoderCache::new().append(1, zeros([2, 1, 1, 4]), zeros([2, 1, 1, 4]));
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("layer 1 before layer 0"));
        for (n, layers) in [(3, 2), (2, 3)] {
            let e = cache
                .check_step("M", n, &enc, layers)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("M decode_step:") && e.contains("do not fit"),
                "{e}"
            );
        }
    }

    #[test]
    fn shift_tokens_right_as_transformers() {
        let labels =
            Tensor::from_i32(vec![5, 6, 7, -100, 8, 9, -100, -100], [2, 4], Device::Cpu).unwrap();
        let out = shift_tokens_right(&labels, 1, 2).unwrap();
        assert_eq!(out.to_vec_i32().unwrap(), vec![2, 5, 6, 7, 2, 8, 9, 1]);
        assert_eq!(out.dims(), &[2, 4]);
    }
}
