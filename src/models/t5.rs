//! T5 — Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
//! Text-to-Text Transformer" (arXiv:1910.10683) — matching Hugging Face's
//! `T5ForConditionalGeneration` (transformers 5.24 `modeling_t5.py`), for both
//! T5 v1.0 (t5-small: ReLU feed-forward, LM head tied to `shared`, decoder output scaled by
//! d_model^-0.5) and v1.1 / flan-t5 (gated gelu_new, own `lm_head`, no scaling).
//!
//! Parameters keep their HF names in a `ParamStore`, so a checkpoint loads with no
//! renaming table and saves back in the layout transformers reads. The encoder and the
//! decoder embed with `shared.weight` directly (HF's `embed_tokens` aliases are never
//! materialised), so a tied model holds exactly one embedding tensor and the tape sums
//! its three gradients. Incremental decoding for generation is in `t5/incremental.rs`.
//! In fp16 the residual stream stays f32 (`t5/fp16.rs`): T5 overflows fp16 otherwise.

//!
//! Files: `model.rs` (the model: load, forward, loss, save), `layers.rs` (blocks,
//! stacks, relative position buckets), `attention.rs`, `dropout.rs` (dropout sites),
//! `fp16.rs` (the f32 residual stream), `incremental.rs` (generation: encoder state and
//! one cached decoder step), `seq2seq_lm.rs` (the `Seq2SeqLm` face), `config.rs`.

mod attention;
mod config;
mod dropout;
mod fp16;
mod incremental;
mod layers;
mod model;
mod seq2seq_lm;

// `Mode` lives in nn (every model's); kept here for callers that import it from t5.
pub use crate::nn::Mode;
pub use config::{EosTokenId, FeedForward, T5Config};
pub use dropout::Dropout;
pub use fp16::Fp16Safety;
// Generation state lives in `models::seq2seq` (every encoder-decoder family's); kept
// here for callers that import it from t5.
pub use crate::models::seq2seq::{select_rows, DecoderCache, EncoderState};
pub use layers::{bucket_ids, relative_position_bucket};
pub use model::T5ForConditionalGeneration;
