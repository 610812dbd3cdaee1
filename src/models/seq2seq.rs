//! What generation, training and `infer` need of an encoder-decoder language model
//! (transformers' `AutoModelForSeq2SeqLM` face): the [`Seq2SeqLm`] trait every family
//! implements (T5 today), and the incremental-decoding state it works on.
//!
//! Generation runs the encoder once per input (`encoder_state`: the encoder output and
//! each decoder layer's cross-attention K/V, an [`EncoderState`]) and then the decoder
//! one token per row per step (`decode_step`), with the self-attention K/V of the
//! tokens so far in a [`DecoderCache`]. Beam search reorders rows by gathering along the
//! batch dimension (`select_rows`).

use std::path::Path;

use crate::error::{Error, Result};
use crate::models::generation_config::GenerateConfig;
use crate::nn::{Mode, ParamStore};
use crate::tensor::Tensor;

/// An encoder-decoder LM as generation (`tasks::generate`), seq2seq training and `infer`
/// drive it. Implemented by `T5ForConditionalGeneration`; `models::auto::load_seq2seq_lm`
/// loads any family behind it.
pub trait Seq2SeqLm {
    /// config.json's `model_type` ("t5").
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
    /// `(loss, logits)` for `labels [B, Lt]` (-100 = ignored), teacher-forced on the
    /// labels shifted right: the mean cross-entropy over kept tokens.
    fn loss(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        labels: &Tensor,
        mode: Mode,
    ) -> Result<(Tensor, Tensor)>;
    /// Unique trainable parameters under their HF names (for the optimizer).
    fn trainable(&self) -> Vec<(String, Tensor)>;
    fn store(&self) -> &ParamStore;
    /// Write an HF checkpoint directory (config.json, generation_config.json,
    /// model.safetensors) that `from_pretrained` loads.
    fn save(&self, dir: &Path) -> Result<()>;
    /// Recompute each block's forward in backward (activation checkpointing).
    fn set_checkpointing(&mut self, on: bool);
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
