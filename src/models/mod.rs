//! Model families built on the ops layer, each a plain struct constructed from a
//! name-prefixed view of its Hugging Face checkpoint.

pub mod bert;
pub mod distilbert;
pub mod encoder;
pub mod step;
pub mod t5;

/// FUSEBOX_SEPARATE_QKV=1: self-attention projects q, k and v with three GEMMs and runs
/// attention on three tensors (the layout before the fused QKV projection), for A/B
/// timing; the default is one GEMM over `[Wq; Wk; Wv]` and the packed attention op.
/// Read once per process; the memory planner reads the same variable.
pub fn separate_qkv() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FUSEBOX_SEPARATE_QKV").is_ok_and(|v| v == "1"))
}
