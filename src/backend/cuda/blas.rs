//! cuBLAS matrix products for row-major buffers: `matmul` and the strided-batched GEMM
//! the attention fallback uses.
//!
//! Why it is built this way: cuBLAS is column-major, and a row-major matrix read as
//! column-major is its transpose, so C = op(A)·op(B) is computed as Cᵀ = op(B)ᵀ·op(A)ᵀ by
//! swapping the operands (and m with n) — no transposes in memory. f16 inputs use
//! GemmEx with CUBLAS_COMPUTE_32F (fp16 accumulation overflows at 65504); f32 stays
//! exact f32 (no TF32), which the 1e-5 test tolerance needs. One handle per device,
//! bound to the device stream, created on first use.

use std::ffi::c_void;

use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};

use super::context::{cu, guarded, lock, Dev};
use super::{libs, sfx, CudaStorage};
use crate::backend::{BackendStorage, MatmulSpec};
use crate::error::{Error, Result};
use crate::shape::DType;

/// One row-major strided-batched product C[b] = alpha·op(A[b])·op(B[b]) + beta·C[b].
/// `ld*` are row-major leading dimensions (elements between rows as stored).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub lda: usize,
    pub stride_a: usize,
    pub b: u64,
    pub ldb: usize,
    pub stride_b: usize,
    pub c: u64,
    pub ldc: usize,
    pub stride_c: usize,
    pub batch: usize,
    pub alpha: f32,
    pub beta: f32,
    /// dtype of A and B.
    pub ab: DType,
    /// dtype of C (F32 allowed with F16 inputs).
    pub c_type: DType,
}

fn data_type(d: DType) -> Result<cudaDataType_t> {
    match d {
        DType::F32 => Ok(cudaDataType_t::CUDA_R_32F),
        DType::F16 => Ok(cudaDataType_t::CUDA_R_16F),
        got => Err(Error::DType {
            op: "matmul",
            expected: "f32 or f16 on CUDA",
            got,
        }),
    }
}

fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::Cuda(format!("gemm: {what} = {v} exceeds cuBLAS's 32-bit range")))
}

pub(crate) fn gemm(dev: &Dev, g: &Gemm) -> Result<()> {
    if g.m == 0 || g.n == 0 || g.batch == 0 {
        return Ok(());
    }
    let mut blas = lock(&dev.blas);
    if blas.is_none() {
        if !libs::cublas_present() {
            return Err(Error::Cuda(format!(
                "cuBLAS (libcublas.so.13/.12) could not be loaded ({})",
                libs::preload_report()
            )));
        }
        let h = guarded("cublasCreate", || {
            cu(
                cudarc::cublas::CudaBlas::new(dev.stream.clone()),
                "cublasCreate",
            )
        })?;
        *blas = Some(h);
    }
    let handle = match blas.as_ref() {
        Some(b) => *b.handle(),
        None => return Err(Error::Cuda("cuBLAS handle missing".into())),
    };
    let op = |t: bool| {
        if t {
            cublasOperation_t::CUBLAS_OP_T
        } else {
            cublasOperation_t::CUBLAS_OP_N
        }
    };
    let (ab, ct) = (data_type(g.ab)?, data_type(g.c_type)?);
    let (alpha, beta) = (g.alpha, g.beta);
    cu(dev.ctx.bind_to_thread(), "bind context")?;
    // Column-major view: Cᵀ (n×m) = op(B)ᵀ (n×k) · op(A)ᵀ (k×m).
    // SAFETY: pointers and strides describe buffers the callers sized for these dims;
    // alpha/beta are host f32 (CUBLAS_COMPUTE_32F with the default host pointer mode).
    let r = unsafe {
        cudarc::cublas::result::gemm_strided_batched_ex(
            handle,
            op(g.trans_b),
            op(g.trans_a),
            int(g.n, "n")?,
            int(g.m, "m")?,
            int(g.k, "k")?,
            &alpha as *const f32 as *const c_void,
            g.b as *const c_void,
            ab,
            int(g.ldb, "ldb")?,
            g.stride_b as i64,
            g.a as *const c_void,
            ab,
            int(g.lda, "lda")?,
            g.stride_a as i64,
            &beta as *const f32 as *const c_void,
            g.c as *mut c_void,
            ct,
            int(g.ldc, "ldc")?,
            g.stride_c as i64,
            int(g.batch, "batch")?,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
        )
    };
    cu(r, "cublasGemmStridedBatchedEx")
}

pub fn matmul(a: &CudaStorage, b: &CudaStorage, spec: &MatmulSpec) -> Result<CudaStorage> {
    let op = "matmul";
    sfx(op, a.dtype())?;
    if a.dtype() != b.dtype() {
        return Err(Error::DType {
            op,
            expected: a.dtype().as_str(),
            got: b.dtype(),
        });
    }
    if a.device() != b.device() {
        return Err(Error::DeviceMismatch {
            op,
            a: a.device(),
            b: b.device(),
        });
    }
    let MatmulSpec {
        batch,
        m,
        n,
        k,
        trans_a,
        trans_b,
        stride_a,
        stride_b,
    } = *spec;
    let need = |stride: usize, size: usize| {
        if batch == 0 {
            0
        } else {
            stride * (batch - 1) + size
        }
    };
    if a.len() < need(stride_a, m * k) || b.len() < need(stride_b, k * n) {
        return Err(Error::msg(format!(
            "matmul: operands of {} and {} elements are too small for {spec:?}",
            a.len(),
            b.len()
        )));
    }
    let out = CudaStorage::alloc(a.dev(), batch * m * n, a.dtype())?;
    if k == 0 {
        // An empty sum: C = 0 (cuBLAS with k = 0 would leave C as it was).
        return out.zeros_like_dev(batch * m * n, a.dtype());
    }
    gemm(
        a.dev(),
        &Gemm {
            trans_a,
            trans_b,
            m,
            n,
            k,
            a: a.ptr(),
            lda: if trans_a { m } else { k },
            stride_a,
            b: b.ptr(),
            ldb: if trans_b { k } else { n },
            stride_b,
            c: out.ptr(),
            ldc: n,
            stride_c: m * n,
            batch,
            alpha: 1.0,
            beta: 0.0,
            ab: a.dtype(),
            c_type: a.dtype(),
        },
    )?;
    Ok(out)
}
