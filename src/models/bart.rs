//! BART — Lewis et al. 2020, "BART: Denoising Sequence-to-Sequence Pre-training"
//! (arXiv:1910.13461) — and Marian (Junczys-Dowmunt et al. 2018, the Helsinki-NLP
//! opus-mt models), matching Hugging Face's `BartForConditionalGeneration`
//! (`modeling_bart.py`) and `MarianMTModel` (`modeling_marian.py`) in transformers 5.25:
//! one post-LN encoder-decoder with biases everywhere, a shared embedding tied to the LM
//! head, and `final_logits_bias`. The families differ only in their positions (BART:
//! learned, offset 2, then `layernorm_embedding`; Marian: fixed sinusoids, token
//! embeddings × √d_model) and their config defaults.
//!
//! Parameters keep their HF names in a `ParamStore` (`model.shared.weight`,
//! `model.encoder.layers.0.self_attn.q_proj.weight`, ...), so checkpoints load with no
//! renaming table and save in the layout `save_pretrained` writes. Incremental decoding
//! for generation uses `models::seq2seq`'s `EncoderState` / `DecoderCache`; the model
//! implements `Seq2SeqLm`, so generation, training and `infer` drive it as they drive T5.
//!
//! Files: `config.rs` (both families' config.json), `checkpoint.rs` (tied aliases,
//! prefixes and size checks of a loaded file), `layers.rs` (attention, layers, stacks,
//! positions), `model.rs` (load, forward, loss, save), `incremental.rs` (generation: encoder state
//! and one cached decoder step), `seq2seq_lm.rs` (the `Seq2SeqLm` face).

mod checkpoint;
mod config;
mod incremental;
mod layers;
mod model;
mod seq2seq_lm;

pub use crate::models::seq2seq::shift_tokens_right;
pub use crate::nn::Mode;
pub use config::{BartConfig, Family};
pub use layers::sinusoidal_table;
pub use model::BartForConditionalGeneration;
