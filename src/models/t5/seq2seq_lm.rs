//! `T5ForConditionalGeneration` behind the family-neutral [`Seq2SeqLm`] face: each method
//! is the model's own (inherent) one.

use crate::models::seq2seq::{seq2seq_lm_common, Seq2SeqLm};

use super::model::T5ForConditionalGeneration;

impl Seq2SeqLm for T5ForConditionalGeneration {
    fn model_type(&self) -> &'static str {
        "t5"
    }
    fn max_position_embeddings(&self) -> Option<usize> {
        // Relative positions: no table, and transformers' T5Config has no such field.
        None
    }
    seq2seq_lm_common!();
}
