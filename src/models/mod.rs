//! Model families built on the ops layer, each a plain struct constructed from a
//! name-prefixed view of its Hugging Face checkpoint.

pub mod bert;
pub mod distilbert;
pub mod encoder;
pub mod t5;
