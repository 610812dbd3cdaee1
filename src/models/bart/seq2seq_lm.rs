//! `BartForConditionalGeneration` (BART and Marian) behind the family-neutral
//! [`Seq2SeqLm`] face: each method is the model's own (inherent) one.

use crate::models::seq2seq::{seq2seq_lm_common, Seq2SeqLm};

use super::model::BartForConditionalGeneration;

impl Seq2SeqLm for BartForConditionalGeneration {
    fn model_type(&self) -> &'static str {
        self.family().model_type()
    }
    /// The decoder's position table: BART's learned rows, Marian's sinusoidal ones.
    fn max_position_embeddings(&self) -> Option<usize> {
        Some(self.config.max_position_embeddings)
    }
    seq2seq_lm_common!();
}
