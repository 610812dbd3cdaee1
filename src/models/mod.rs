//! Model families built on the ops layer, each a plain struct constructed from a
//! name-prefixed view of its Hugging Face checkpoint.
//!
//! Files import downwards only: `auto` (pick a class by config.json) → `bert`,
//! `distilbert` (their configs) → `encoder_qa` (the QA model both share) → `encoder`
//! (embeddings + layers), `qa` (head, loss, batch, `QaModel`), `hf` (config.json and
//! safetensors in a model directory); `t5` and `bart` (BART and Marian) use `hf` too.

pub mod auto;
pub mod bart;
pub mod bert;
pub mod distilbert;
pub mod encoder;
pub mod encoder_qa;
pub mod hf;
pub mod qa;
pub mod seq2seq_loss;
pub mod step;
pub mod t5;
