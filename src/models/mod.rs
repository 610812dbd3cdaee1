//! Model families built on the ops layer, each a plain struct constructed from a
//! name-prefixed view of its Hugging Face checkpoint.
//!
//! Files import downwards only: `auto` (pick a class by config.json) → `bert`,
//! `distilbert` (their configs) → `encoder_qa` (the QA model both share) → `encoder`
//! (embeddings + layers), `qa` (head, loss, batch, `QaModel`), `hf` (config.json and
//! safetensors in a model directory); `t5` and `bart` (BART and Marian) use `hf` too.
//! `seq2seq` is the face every encoder-decoder LM shows generation and training
//! (`Seq2SeqLm`, implemented by `t5` and `bart`; teacher forcing's shift and loss),
//! `generation_config` the generation settings a checkpoint carries.

pub mod auto;
pub mod bart;
pub mod bert;
pub mod distilbert;
pub mod encoder;
pub mod encoder_qa;
pub mod generation_config;
pub mod hf;
pub mod presets;
pub mod qa;
pub mod seq2seq;
pub mod step;
pub mod t5;
