//! F16 compute on the CPU, as an emulation of the CUDA backend's fp16 contract.
//!
//! The CUDA kernels load f16, compute in f32 and store f16 (`fb_ld`/`fb_st` in
//! kernels/common.cuh; cuBLAS with CUBLAS_COMPUTE_32F). The CPU does the same at op
//! granularity: every f16 operand is widened to f32 (exact), the f32 body of the op runs
//! unchanged, and each output the CUDA op stores as f16 is rounded back (round to
//! nearest even, overflow to ±inf, like `cvt.rn.f16.f32`). Outputs CUDA keeps in f32
//! stay f32: norm statistics, softmax lse, the cross-entropy loss, `sum_sq`. So an
//! activation past 65504 becomes inf here exactly where it would on the GPU, and an fp16
//! model — T5's overflow guard included — can be tested without a GPU.
//!
//! Not emulated: rounding *inside* an op (the unfused CUDA attention fallback stores
//! its scores in f16; the fused kernel, what runs by default, keeps them in f32), and
//! the order of f32 accumulation. Those differ by a few f16 ulps, well inside the 1e-2
//! relative tolerance fp16 results are held to.
//!
//! A float operand of an f16 op that is not f16 is the dtype error CUDA gives for it,
//! so a mixed-dtype call that the GPU would refuse fails here too. The temporary f32
//! copies are counted by `backend::tracker` like any CPU buffer, so the CPU's peak in f16
//! is higher than the GPU's would be.

use super::elementwise::{cast, copy_from_};
use super::{dtype_err, CpuData, CpuStorage};
use crate::error::Result;
use crate::shape::DType;

impl CpuStorage {
    pub(super) fn is_f16(&self) -> bool {
        self.data.dtype() == DType::F16
    }
}

/// An f16 operand widened to f32 (exact). Any other dtype is a dtype error naming `op`.
pub(super) fn up(op: &'static str, s: &CpuStorage) -> Result<CpuStorage> {
    match &s.data {
        CpuData::F16(v) => Ok(CpuStorage::from_f32(v.iter().map(|x| x.to_f32()).collect())),
        d => Err(dtype_err(
            op,
            "f16 (every float operand of an f16 op)",
            d.dtype(),
        )),
    }
}

/// [`up`] for an optional operand.
pub(super) fn up_opt(op: &'static str, s: Option<&CpuStorage>) -> Result<Option<CpuStorage>> {
    s.map(|s| up(op, s)).transpose()
}

/// An f32 result rounded to f16 (nearest even, overflow to ±inf).
pub(super) fn down(s: CpuStorage) -> CpuStorage {
    CpuStorage::new(cast(&s.data, DType::F16))
}

/// Round every output of a two-output op.
pub(super) fn down2((a, b): (CpuStorage, CpuStorage)) -> (CpuStorage, CpuStorage) {
    (down(a), down(b))
}

/// Widen an operand of an op whose CUDA kernel takes f32 or f16 (axpy's `x`, AdamW's
/// gradient): f16 becomes an f32 copy, anything else is passed through as a copy.
pub(super) fn widen(s: &CpuStorage) -> CpuStorage {
    match &s.data {
        CpuData::F16(_) => CpuStorage::new(cast(&s.data, DType::F32)),
        d => CpuStorage::new(d.clone()),
    }
}

/// Run an in-place f32 op on an f16 buffer: widen, apply, round back into `dst`.
pub(super) fn in_place(
    dst: &mut CpuStorage,
    f: impl FnOnce(&mut CpuStorage) -> Result<()>,
) -> Result<()> {
    let mut wide = CpuStorage::new(cast(&dst.data, DType::F32));
    f(&mut wide)?;
    // Same length and dtype as before, so the tracker's count for `dst` is unchanged.
    copy_from_(dst, &wide)
}

#[cfg(test)]
#[path = "emulate_tests.rs"]
mod tests;
