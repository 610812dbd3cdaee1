//! Parameters and the layers built from them. `ParamStore` holds named parameters under
//! their Hugging Face names and loads/saves safetensors; `VarBuilder` is a name-prefixed
//! view of it (candle's `vb.pp("encoder.layer.0")`), so HF checkpoints load with no
//! renaming table. `Mode` (training or evaluation) and the dropout seeds it derives are
//! shared by every model.

pub mod layers;
pub mod mode;
pub mod params;
pub mod safetensors_io;

pub use layers::{packed_qkv, separate_qkv, Embedding, LayerNorm, Linear, RmsNorm};
pub use mode::Mode;
pub use params::{Init, ParamStore, VarBuilder};
