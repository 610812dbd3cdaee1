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

/// The column-major cuBLAS call a row-major [`Gemm`] becomes: Cᵀ (n×m) = op(B)ᵀ·op(A)ᵀ,
/// i.e. the operands swap places and m swaps with n; leading dimensions and strides are
/// unchanged. The result is read as cuBLAS's column-major arguments. Pure, so the
/// mapping is unit-tested on the host (see `tests` below).
pub(crate) fn col_major(g: &Gemm) -> Gemm {
    Gemm {
        trans_a: g.trans_b,
        trans_b: g.trans_a,
        m: g.n,
        n: g.m,
        a: g.b,
        lda: g.ldb,
        stride_a: g.stride_b,
        b: g.a,
        ldb: g.lda,
        stride_b: g.stride_a,
        ..*g
    }
}

/// The row-major product `matmul` launches for `spec` on buffers a, b, c.
pub(crate) fn matmul_desc(spec: &MatmulSpec, a: u64, b: u64, c: u64, dtype: DType) -> Gemm {
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
    Gemm {
        trans_a,
        trans_b,
        m,
        n,
        k,
        a,
        lda: if trans_a { m } else { k },
        stride_a,
        b,
        ldb: if trans_b { k } else { n },
        stride_b,
        c,
        ldc: n,
        stride_c: m * n,
        batch,
        alpha: 1.0,
        beta: 0.0,
        ab: dtype,
        c_type: dtype,
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
    let c = col_major(g);
    // SAFETY: pointers and strides describe buffers the callers sized for these dims;
    // alpha/beta are host f32 (CUBLAS_COMPUTE_32F with the default host pointer mode).
    let r = unsafe {
        cudarc::cublas::result::gemm_strided_batched_ex(
            handle,
            op(c.trans_a),
            op(c.trans_b),
            int(c.m, "n")?,
            int(c.n, "m")?,
            int(c.k, "k")?,
            &alpha as *const f32 as *const c_void,
            c.a as *const c_void,
            ab,
            int(c.lda, "ldb")?,
            c.stride_a as i64,
            c.b as *const c_void,
            ab,
            int(c.ldb, "lda")?,
            c.stride_b as i64,
            &beta as *const f32 as *const c_void,
            c.c as *mut c_void,
            ct,
            int(c.ldc, "ldc")?,
            c.stride_c as i64,
            int(c.batch, "batch")?,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
        )
    };
    cu(r, "cublasGemmStridedBatchedEx")
}

pub fn matmul(a: &CudaStorage, b: &CudaStorage, spec: &MatmulSpec) -> Result<CudaStorage> {
    matmul_out(a, b, spec, a.dtype())
}

/// `matmul` with C stored in `out`: the operands' dtype, or F32 for F16 operands (GemmEx
/// with CUDA_R_16F A/B and CUDA_R_32F C: the fp16 tensor-core GEMM, never rounded to f16).
pub fn matmul_out(
    a: &CudaStorage,
    b: &CudaStorage,
    spec: &MatmulSpec,
    out: DType,
) -> Result<CudaStorage> {
    let op = "matmul";
    sfx(op, a.dtype())?;
    if out != a.dtype() && !(a.dtype() == DType::F16 && out == DType::F32) {
        return Err(Error::DType {
            op: "matmul_out",
            expected: "the operands' dtype, or f32 for f16 operands",
            got: out,
        });
    }
    a.check_dtype(b, op)?;
    a.check_device(b, op)?;
    let MatmulSpec {
        batch,
        m,
        n,
        k,
        stride_a,
        stride_b,
        ..
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
    let c = CudaStorage::alloc(a.dev(), batch * m * n, out)?;
    if k == 0 {
        // An empty sum: C = 0 (cuBLAS with k = 0 would leave C as it was).
        return c.zeros_like_dev(batch * m * n, out);
    }
    let mut desc = matmul_desc(spec, a.ptr(), b.ptr(), c.ptr(), a.dtype());
    desc.c_type = out;
    gemm(a.dev(), &desc)?;
    Ok(c)
}

/// Host model of cuBLAS for the unit tests: pointers are `(buffer << 40) | byte offset`
/// into f32 host buffers, so descriptors built for the device can be run and checked
/// against the CPU backend without a GPU.
#[cfg(test)]
pub(crate) mod host {
    use super::{col_major, Gemm};

    pub fn ptr(buffer: usize, elem: usize) -> u64 {
        ((buffer as u64) << 40) | (elem as u64 * 4)
    }

    fn at(p: u64) -> (usize, usize) {
        ((p >> 40) as usize, ((p & ((1 << 40) - 1)) / 4) as usize)
    }

    /// Column-major strided-batched GEMM exactly as cuBLAS defines it.
    pub fn gemm(g: &Gemm, bufs: &mut [Vec<f32>]) {
        let c = col_major(g);
        for i in 0..c.batch {
            let (ba, oa) = at(c.a);
            let (bb, ob) = at(c.b);
            let (bc, oc) = at(c.c);
            let (oa, ob, oc) = (
                oa + i * c.stride_a,
                ob + i * c.stride_b,
                oc + i * c.stride_c,
            );
            for col in 0..c.n {
                for row in 0..c.m {
                    let mut acc = 0.0f64;
                    for l in 0..c.k {
                        let av = if c.trans_a {
                            bufs[ba][oa + l + row * c.lda]
                        } else {
                            bufs[ba][oa + row + l * c.lda]
                        };
                        let bv = if c.trans_b {
                            bufs[bb][ob + col + l * c.ldb]
                        } else {
                            bufs[bb][ob + l + col * c.ldb]
                        };
                        acc += av as f64 * bv as f64;
                    }
                    let dst = &mut bufs[bc][oc + row + col * c.ldc];
                    // As in cuBLAS, C is not read when beta is 0 (a NaN there stays out).
                    let keep = if g.beta == 0.0 {
                        0.0
                    } else {
                        g.beta as f64 * *dst as f64
                    };
                    *dst = (g.alpha as f64 * acc + keep) as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{host, matmul_desc};
    use crate::backend::{BackendStorage, CpuStorage, MatmulSpec};
    use crate::shape::DType;

    fn vals(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u64 + 1) * (seed * 2 + 1) * 0x9E37_79B9) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// The row-major -> column-major mapping gives the CPU backend's matmul for every
    /// transpose combination, batching and broadcast.
    #[test]
    fn matmul_descriptor_matches_cpu() {
        for &(batch, m, k, n) in &[
            (1usize, 1usize, 1usize, 1usize),
            (2, 3, 5, 7),
            (3, 8, 1, 4),
            (2, 6, 9, 5),
        ] {
            for ta in [false, true] {
                for tb in [false, true] {
                    for bcast in [false, true] {
                        let spec = MatmulSpec {
                            trans_a: ta,
                            trans_b: tb,
                            ..MatmulSpec::batched(batch, m, k, n, bcast)
                        };
                        let a = vals(batch * m * k, 1);
                        let b = vals(if bcast { k * n } else { batch * k * n }, 2);
                        let want = CpuStorage::from_f32(a.clone())
                            .matmul(&CpuStorage::from_f32(b.clone()), &spec)
                            .and_then(|c| c.to_vec_f32())
                            .unwrap_or_default();
                        let mut bufs = vec![a, b, vec![f32::NAN; batch * m * n]];
                        host::gemm(
                            &matmul_desc(
                                &spec,
                                host::ptr(0, 0),
                                host::ptr(1, 0),
                                host::ptr(2, 0),
                                DType::F32,
                            ),
                            &mut bufs,
                        );
                        // NaN compares false, so an unwritten (NaN) element fails this check.
                        let err = bufs[2]
                            .iter()
                            .zip(&want)
                            .map(|(g, w)| {
                                if g.is_nan() {
                                    f32::INFINITY
                                } else {
                                    (g - w).abs()
                                }
                            })
                            .fold(0.0, f32::max);
                        assert!(
                            want.len() == bufs[2].len() && err < 1e-5,
                            "{spec:?}: max error {err}"
                        );
                    }
                }
            }
        }
    }
}
