//! Dataset readers: SQuAD-style extractive QA and seq2seq pairs, turned into plain Rust
//! structs with every offset checked, so tokenization and batching never see bad rows;
//! and the built-in generated datasets (`synth`), written in the same formats.

pub mod seq2seq;
pub mod squad;
pub mod synth;
