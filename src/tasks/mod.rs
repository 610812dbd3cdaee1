//! Task-level algorithms on top of the models (QA features and decoding, generation).

pub mod generate;
pub mod pipeline;
pub mod qa;
pub mod qa_post;
pub mod qa_train;
pub mod seq2seq_default;
pub mod seq2seq_train;
