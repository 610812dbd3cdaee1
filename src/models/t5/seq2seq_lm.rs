//! `T5ForConditionalGeneration` behind the family-neutral [`Seq2SeqLm`] face: each method
//! is the model's own (inherent) one.

use std::path::Path;

use crate::error::Result;
use crate::models::generation_config::GenerateConfig;
use crate::models::seq2seq::{DecoderCache, EncoderState, Seq2SeqLm};
use crate::nn::{Mode, ParamStore};
use crate::tensor::Tensor;

use super::model::T5ForConditionalGeneration;

impl Seq2SeqLm for T5ForConditionalGeneration {
    fn model_type(&self) -> &'static str {
        "t5"
    }
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
    fn max_position_embeddings(&self) -> Option<usize> {
        // Relative positions: no table, and transformers' T5Config has no such field.
        None
    }
    fn generation_config(&self) -> &GenerateConfig {
        &self.generation
    }
    fn set_generation_config(&mut self, cfg: GenerateConfig) {
        self.generation = cfg;
    }
    fn encoder_state(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<EncoderState> {
        Self::encoder_state(self, input_ids, attention_mask)
    }
    fn decode_step(
        &self,
        tokens: &[i32],
        enc: &EncoderState,
        cache: &mut DecoderCache,
    ) -> Result<Tensor> {
        Self::decode_step(self, tokens, enc, cache)
    }
    fn loss(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        labels: &Tensor,
        mode: Mode,
    ) -> Result<(Tensor, Tensor)> {
        Self::loss(self, input_ids, attention_mask, labels, mode)
    }
    fn trainable(&self) -> Vec<(String, Tensor)> {
        Self::trainable(self)
    }
    fn store(&self) -> &ParamStore {
        Self::store(self)
    }
    fn save(&self, dir: &Path) -> Result<()> {
        Self::save(self, dir)
    }
    fn set_checkpointing(&mut self, on: bool) {
        Self::set_checkpointing(self, on)
    }
}
