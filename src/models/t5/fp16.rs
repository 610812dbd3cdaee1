//! T5 in fp16 without overflow. T5 was pretrained in bf16, whose range is f32's: its
//! residual stream and its feed-forward output (`wo`) grow past fp16's 65504 and turn
//! into inf, then NaN (HF keeps `wo` in fp32, `_keep_in_fp32_modules = ["wo"]`, and
//! clamps fp16 hidden states to finfo(fp16).max − 1000 in T5LayerFF / T5Block).
//!
//! fusebox's fp16 T5 keeps the residual stream in f32 instead:
//! - each sublayer reads it through its RMSNorm, computed in f32 and emitted in f16 (the
//!   weights' dtype), so the sublayer's GEMMs, attention and activations run in f16;
//! - the sublayer's last projection (attention `o`, feed-forward `wo`) is an f16 GEMM
//!   whose product is stored in f32 (`Tensor::linear_into`, ops/matmul.rs: cuBLAS GemmEx
//!   with f16 A/B and an f32 C, f32 accumulation) and added to the f32 residual.
//!
//! Why this and not HF's fp32 `wo`: an fp32 `wo` runs an fp32 GEMM (no tensor cores; a
//! T4 does 8 TFLOP/s in fp32 against 65 in fp16) on a third of the feed-forward's FLOPs;
//! the f32-output GEMM costs what the f16 one does, plus writing its output in 4 bytes
//! instead of 2. The `wo` weights stay f16, as every other working weight (their f32
//! master is in AdamW); the GEMM's inputs (normalised, activated values) are where f16
//! is safe, its output is where it is not. And no fp16 tensor is left on the residual
//! path, so HF's clamp has nothing to guard: the decoder's output leaves the stack
//! through the final RMSNorm (|y| ≤ √d_model·max|γ|). Only the f16 intermediates inside
//! a sublayer (q/k/v, the `wi` activations) could still overflow, as in HF, whose `wi`
//! is fp16 too. The gradient of an f32-output projection is rounded to f16 for its two
//! backward GEMMs; an overflow there is what dynamic loss scaling detects and skips.
//!
//! With f32 weights every helper here is the plain op (same kernels, same bits), so the
//! fp32 model is unchanged.

use crate::error::Result;
use crate::nn::RmsNorm;
use crate::shape::DType;
use crate::tensor::Tensor;

/// How an fp16 T5 guards against overflow (ignored when the weights are f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Fp16Safety {
    /// The residual stream in f32, `o`/`wo` products stored in f32 (the default).
    #[default]
    Fp32Residual,
    /// Everything in f16, as a naive fp16 port would be: overflows on real T5
    /// checkpoints. For tests and measurements that show what the default prevents.
    Off,
}

impl Fp16Safety {
    /// The residual stream's dtype for weights of `dtype`.
    pub fn residual_dtype(self, dtype: DType) -> DType {
        match (self, dtype) {
            (Fp16Safety::Fp32Residual, DType::F16) => DType::F32,
            (_, d) => d,
        }
    }
}

/// RMSNorm of the residual `h` in `h`'s dtype, emitted in the weight's dtype: with an
/// f32 residual and f16 weights, the statistics and the scaling run in f32 and only the
/// (bounded) result is rounded to f16. Equal dtypes: the plain op.
pub fn pre_norm(norm: &RmsNorm, h: &Tensor) -> Result<Tensor> {
    let wd = norm.weight.dtype();
    if h.dtype() == wd {
        return norm.forward(h);
    }
    h.rms_norm(&norm.weight.to_dtype(h.dtype())?, norm.eps)?
        .to_dtype(wd)
}
