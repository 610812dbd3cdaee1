//! Task-level algorithms on top of the models (generation).

pub mod generate;
pub mod seq2seq_train;
pub mod seq2seq_default;
