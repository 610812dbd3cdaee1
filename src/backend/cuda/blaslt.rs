//! cuBLASLt GEMMs with fused epilogues for `linear` (y = x·Wᵀ + b):
//! forward, the bias is added inside the GEMM (CUBLASLT_EPILOGUE_BIAS: no separate bias
//! pass over the output, and the f32 accumulator plus bias is rounded to f16 once);
//! backward, dW = dyᵀ·x with db = Σ_rows dy reduced by the same GEMM
//! (CUBLASLT_EPILOGUE_BGRADB), in place of the column-sum kernel.
//!
//! Why it is built this way. cuBLASLt's GELU epilogues compute the tanh approximation,
//! while DistilBERT and BERT use the exact erf GELU ("gelu"), so only the bias epilogues
//! keep the models' semantics and only they are used. Row-major buffers are read as
//! column-major transposes, as in blas.rs: a row-major [r, c] buffer is a column-major
//! c × r matrix with leading dimension c. Every call may decline (`Ok(None)`): no
//! cuBLASLt, a size outside PyTorch's limits for the same path, no algorithm for the
//! shape, a cuBLASLt call that fails (the shape is then declined for the rest of the
//! run), or FUSEBOX_NO_LT=1; the caller then runs the cuBLAS GEMM and the bias kernels,
//! so this path only ever replaces work it can do.
//! Plans (descriptor, layouts, the heuristic's algorithm) are cached per shape since the
//! same few shapes repeat every step; only the bias pointer is set per call. The
//! workspace (4 MiB) is allocated once per device outside the caching allocator, like
//! cuBLAS's own, so the tensor tracker does not see it.

use std::collections::{BTreeMap, HashMap};
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;

use super::context::{cu, guarded, lock, Dev};
use super::{libs, CudaStorage};
use crate::backend::BackendStorage;
use crate::error::{Error, Result};
use crate::shape::DType;

const WORKSPACE: usize = 4 << 20;
/// Cached plans per device before the cache is emptied.
const MAX_PLANS: usize = 512;

/// One cached GEMM configuration.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    /// BGRADB (backward) rather than BIAS (forward).
    grad: bool,
    m: usize,
    n: usize,
    k: usize,
    f16: bool,
    /// Alignment in bytes of A, B, D and the bias vector (the heuristic's promise).
    align: [u32; 4],
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Plan {
    /// Destroy the descriptors (no call may be using them).
    fn destroy(self) {
        let mut parts = Parts {
            desc: Some(self.desc),
            layouts: [Some(self.a), Some(self.b), Some(self.d)],
        };
        parts.destroy();
    }
}

/// What `build` has created so far: destroyed on every way out but a finished plan, so
/// a failing attribute call leaks nothing.
#[derive(Default)]
struct Parts {
    desc: Option<sys::cublasLtMatmulDesc_t>,
    layouts: [Option<sys::cublasLtMatrixLayout_t>; 3],
}

impl Parts {
    fn destroy(&mut self) {
        // SAFETY: each handle was created by cuBLASLt, is destroyed once (taken out of its
        // Option), and nothing uses it afterwards.
        unsafe {
            for l in self.layouts.iter_mut().filter_map(Option::take) {
                let _ = lt::destroy_matrix_layout(l);
            }
            if let Some(d) = self.desc.take() {
                let _ = lt::destroy_matmul_desc(d);
            }
        }
    }
}

impl Drop for Parts {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// The per-device cuBLASLt state; lives as long as the device (the process).
pub(crate) struct Lt {
    handle: sys::cublasLtHandle_t,
    workspace: u64,
    /// `None`: the heuristic found no algorithm for this key (the caller falls back).
    plans: HashMap<Key, Option<Plan>>,
}

// SAFETY: the raw handles are only used under `Dev::lt`'s mutex, on the device's stream.
unsafe impl Send for Lt {}

enum LtSlot {
    Untried,
    Ready(Box<Lt>),
    Unavailable,
}

/// The cuBLASLt state of `dev`, one per ordinal for the life of the process. It is kept
/// here rather than in `Dev`, so the device context knows nothing of cuBLASLt.
fn slot(dev: &Dev) -> &'static Mutex<LtSlot> {
    static SLOTS: Mutex<BTreeMap<usize, &'static Mutex<LtSlot>>> = Mutex::new(BTreeMap::new());
    let mut map = lock(&SLOTS);
    map.entry(dev.ordinal)
        .or_insert_with(|| Box::leak(Box::new(Mutex::new(LtSlot::Untried))))
}

fn lt_err(what: &str, e: lt::CublasError) -> Error {
    Error::Cuda(format!("{what}: {e:?}"))
}

/// FUSEBOX_NO_LT=1 turns the path off (read once: it is checked on every linear).
pub fn disabled() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var("FUSEBOX_NO_LT").is_ok_and(|v| v == "1"))
}

/// Largest power of two (≤ 256) dividing the byte address.
fn align_of(ptr: u64) -> u32 {
    if ptr == 0 {
        256
    } else {
        1u32 << ptr.trailing_zeros().min(8)
    }
}

fn data_type(f16: bool) -> sys::cudaDataType_t {
    if f16 {
        sys::cudaDataType_t::CUDA_R_16F
    } else {
        sys::cudaDataType_t::CUDA_R_32F
    }
}

/// Set one attribute of a descriptor from a plain value.
unsafe fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    v: &T,
) -> Result<()> {
    lt::set_matmul_desc_attribute(desc, attr, v as *const T as *const c_void, size_of::<T>())
        .map_err(|e| lt_err("cublasLtMatmulDescSetAttribute", e))
}

fn layout(f16: bool, rows: usize, cols: usize, ld: usize) -> Result<sys::cublasLtMatrixLayout_t> {
    lt::create_matrix_layout(data_type(f16), rows as u64, cols as u64, ld as i64)
        .map_err(|e| lt_err("cublasLtMatrixLayoutCreate", e))
}

/// Build the plan for `key`, or `None` when cuBLASLt has no algorithm for it.
///
/// Column-major shapes (m × n result, inner k):
/// - forward: D = y as out × rows (ld out) = op(A)·B with A = W read as in × out
///   (ld in, transposed) and B = x read as in × rows (ld in); bias: length m = out.
/// - backward: D = dW as in × out (ld in) = A·op(B) with A = x read as in × rows
///   (ld in) and B = dy read as out × rows (ld out, transposed); the bias gradient has
///   length n = out and sums op(B) over k = rows.
///
/// The heuristic runs with the bias pointer set to the workspace (a 256-aligned device
/// address), as the real bias and gradient buffers are; each call sets the real one.
fn build(handle: sys::cublasLtHandle_t, key: &Key, workspace_ptr: u64) -> Result<Option<Plan>> {
    let workspace = WORKSPACE;
    let (m, n, k, f16) = (key.m, key.n, key.k, key.f16);
    let (trans_a, trans_b): (i32, i32) = if key.grad { (0, 1) } else { (1, 0) };
    let mut parts = Parts::default();
    let desc = lt::create_matmul_desc(
        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        sys::cudaDataType_t::CUDA_R_32F,
    )
    .map_err(|e| lt_err("cublasLtMatmulDescCreate", e))?;
    parts.desc = Some(desc);
    let epilogue = if key.grad {
        sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BGRADB
    } else {
        sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS
    };
    use sys::cublasLtMatmulDescAttributes_t as A;
    // SAFETY: `desc` was just created; each value has the attribute's documented type
    // (int32 operations, the epilogue enum, a cudaDataType_t).
    unsafe {
        set_desc(desc, A::CUBLASLT_MATMUL_DESC_TRANSA, &trans_a)?;
        set_desc(desc, A::CUBLASLT_MATMUL_DESC_TRANSB, &trans_b)?;
        set_desc(desc, A::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)?;
        set_desc(
            desc,
            A::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
            &data_type(f16),
        )?;
        set_desc(desc, A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &workspace_ptr)?;
    }
    // Stored shapes of A and B (before their op): forward A = W (k × m), B = x (k × n);
    // backward A = x (m × k), B = dy (n × k).
    let shapes = if key.grad {
        [(m, k, m), (n, k, n), (m, n, m)]
    } else {
        [(k, m, k), (k, n, k), (m, n, m)]
    };
    for (slot, (r, c, ld)) in parts.layouts.iter_mut().zip(shapes) {
        *slot = Some(layout(f16, r, c, ld)?);
    }
    let [Some(a), Some(b), Some(d)] = parts.layouts else {
        return Ok(None);
    };
    let pref = lt::create_matmul_pref().map_err(|e| lt_err("cublasLtMatmulPreferenceCreate", e))?;
    let pref_result = set_prefs(pref, key, workspace).map(|()| {
        // SAFETY: every descriptor is live; D doubles as C (beta = 0).
        unsafe { lt::get_matmul_algo_heuristic(handle, desc, a, b, d, d, pref) }
    });
    // SAFETY: `pref` is not used again.
    let _ = unsafe { lt::destroy_matmul_pref(pref) };
    match pref_result? {
        Ok(h) if h.workspaceSize <= workspace => {
            // The plan owns the descriptors now.
            parts.desc = None;
            parts.layouts = [None, None, None];
            Ok(Some(Plan {
                desc,
                a,
                b,
                d,
                algo: h.algo,
            }))
        }
        // No algorithm (NOT_SUPPORTED) or one needing more workspace: decline; `parts`
        // destroys the descriptors.
        _ => Ok(None),
    }
}

/// The heuristic's limits: the workspace we have and the operands' alignments.
fn set_prefs(pref: sys::cublasLtMatmulPreference_t, key: &Key, workspace: usize) -> Result<()> {
    use sys::cublasLtMatmulPreferenceAttributes_t as P;
    let prefs: [(P, u64); 5] = [
        (
            P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            workspace as u64,
        ),
        (
            P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
            key.align[0] as u64,
        ),
        (
            P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            key.align[1] as u64,
        ),
        (
            P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
            key.align[2] as u64,
        ),
        (
            P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
            key.align[2] as u64,
        ),
    ];
    for (attr, v) in prefs {
        // The workspace attribute is a uint64; the alignments are uint32.
        let r = if attr == P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES {
            // SAFETY: `pref` was just created; `v` is a uint64.
            unsafe {
                lt::set_matmul_pref_attribute(pref, attr, &v as *const u64 as *const c_void, 8)
            }
        } else {
            let v32 = v as u32;
            // SAFETY: as above, with a uint32.
            unsafe {
                lt::set_matmul_pref_attribute(pref, attr, &v32 as *const u32 as *const c_void, 4)
            }
        };
        r.map_err(|e| lt_err("cublasLtMatmulPreferenceSetAttribute", e))?;
    }
    Ok(())
}

/// Create the handle and workspace on first use; `None` when cuBLASLt is unavailable.
fn state(dev: &Dev, slot: &mut LtSlot) -> Result<bool> {
    if let LtSlot::Untried = slot {
        *slot = LtSlot::Unavailable;
        if !libs::cublas_present() {
            return Ok(false);
        }
        // Anything failing here leaves the slot Unavailable: the plain GEMM path runs.
        if dev.ctx.bind_to_thread().is_err() {
            return Ok(false);
        }
        // cudarc panics when a symbol is missing: treat that as "no cuBLASLt".
        let handle = match guarded("cublasLtCreate", || {
            lt::create_handle().map_err(|e| lt_err("cublasLtCreate", e))
        }) {
            Ok(h) => h,
            Err(_) => return Ok(false),
        };
        // SAFETY: a fresh allocation owned by this state for the life of the process.
        let Ok(workspace) = (unsafe { cudarc::driver::result::malloc_sync(WORKSPACE) }) else {
            // SAFETY: the handle was just created and is not used again.
            let _ = unsafe { lt::destroy_handle(handle) };
            return Ok(false);
        };
        *slot = LtSlot::Ready(Box::new(Lt {
            handle,
            workspace,
            plans: HashMap::new(),
        }));
    }
    Ok(matches!(slot, LtSlot::Ready(_)))
}

/// Make sure the plan for `key` exists; `false` when cuBLASLt or an algorithm for it is
/// missing (the caller then falls back before allocating anything).
fn prepare(dev: &Dev, key: &Key) -> Result<bool> {
    let mut slot = lock(slot(dev));
    if !state(dev, &mut slot)? {
        return Ok(false);
    }
    let LtSlot::Ready(st) = &mut *slot else {
        return Ok(false);
    };
    if !st.plans.contains_key(key) {
        if st.plans.len() >= MAX_PLANS {
            // Evaluation with ragged batches can bring many row counts; start over
            // rather than grow without bound (descriptors are small, but not free).
            // No call is using them: we hold the lock.
            st.plans
                .drain()
                .filter_map(|(_, p)| p)
                .for_each(Plan::destroy);
        }
        let handle = st.handle;
        let ws = st.workspace;
        // A failing descriptor call declines this shape like a missing algorithm does.
        let plan = guarded("cublasLt plan", || build(handle, key, ws)).unwrap_or(None);
        st.plans.insert(*key, plan);
    }
    Ok(matches!(st.plans.get(key), Some(Some(_))))
}

/// Queue the prepared plan for `key` on the device's stream; `false` (and the shape is
/// declined from now on) when cuBLASLt refuses the call, e.g. NOT_SUPPORTED for this
/// device, so the caller runs the plain GEMM and bias kernels instead.
fn run(dev: &Dev, key: &Key, a: u64, b: u64, d: u64, bias: u64) -> bool {
    if launch(dev, key, a, b, d, bias).is_ok() {
        return true;
    }
    let mut slot = lock(slot(dev));
    if let LtSlot::Ready(st) = &mut *slot {
        if let Some(Some(plan)) = st.plans.insert(*key, None) {
            plan.destroy();
        }
    }
    false
}

fn launch(dev: &Dev, key: &Key, a: u64, b: u64, d: u64, bias: u64) -> Result<()> {
    let slot = lock(slot(dev));
    let LtSlot::Ready(st) = &*slot else {
        return Err(Error::Cuda("cuBLASLt state missing".into()));
    };
    let Some(Some(plan)) = st.plans.get(key) else {
        return Err(Error::Cuda("cuBLASLt plan missing".into()));
    };
    let (alpha, beta) = (1.0f32, 0.0f32);
    cu(dev.ctx.bind_to_thread(), "bind context")?;
    // SAFETY: the plan's descriptors are live (cached for the process); the bias
    // pointer attribute is a device address (uint64) holding m (forward) or n
    // (backward) elements of the data type, and A, B and D hold the shapes the layouts
    // describe (both checked by the callers); alpha/beta are host f32 (scale type
    // 32F); the workspace holds WORKSPACE bytes, at least what the algorithm asked for
    // (checked in `build`). The descriptor is shared by every call of this shape, but
    // cublasLtMatmul reads the bias pointer when it is called, under this lock.
    unsafe {
        set_desc(
            plan.desc,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
            &bias,
        )?;
        lt::matmul(
            st.handle,
            plan.desc,
            &alpha as *const f32 as *const c_void,
            &beta as *const f32 as *const c_void,
            a as *const c_void,
            plan.a,
            b as *const c_void,
            plan.b,
            d as *const c_void,
            plan.d,
            d as *mut c_void,
            plan.d,
            &plan.algo,
            st.workspace as *mut c_void,
            WORKSPACE,
            dev.stream.cu_stream() as sys::cudaStream_t,
        )
        .map_err(|e| lt_err("cublasLtMatmul", e))?;
    }
    FUSED_CALLS.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

static FUSED_CALLS: AtomicUsize = AtomicUsize::new(0);

/// GEMMs run through the fused epilogues since start (tests check the path is taken).
pub fn fused_calls() -> usize {
    FUSED_CALLS.load(Ordering::Relaxed)
}

/// Outputs come from the caching allocator, where every block is its own cuMemAlloc
/// allocation (the driver aligns those to at least 256 bytes); plans assume that.
const OUT_ALIGN: u32 = 256;

/// The sizes PyTorch also restricts its cuBLASLt bias path to (`addmm`'s
/// `useLtInterface`): every dimension above 1 and below 65535 × 32, where cuBLASLt has
/// had failures; other shapes take the GEMM + kernel path.
pub fn sizes_ok(dims: &[usize]) -> bool {
    dims.iter().all(|&d| d > 1 && d < 65535 * 32)
}

/// Does the epilogue path take this call: not switched off, sizes within the limits, and
/// `x` and `others` of one float dtype on one device (another device is an error)?
fn takes(
    x: &CudaStorage,
    others: &[&CudaStorage],
    dims: [usize; 3],
    op: &'static str,
) -> Result<bool> {
    Ok(!disabled() && sizes_ok(&dims) && same(x, others, op)?)
}

/// The GEMM of `m × n × k` (`grad`: the backward's BGRADB epilogue) on `x`'s dtype with
/// these alignments of A, B, D and the bias.
fn key(grad: bool, [m, n, k]: [usize; 3], x: &CudaStorage, align: [u32; 4]) -> Key {
    let f16 = x.dtype() == DType::F16;
    Key {
        grad,
        m,
        n,
        k,
        f16,
        align,
    }
}

/// A fresh output of `len` elements like `x`, at the alignment the plans assume.
fn output(x: &CudaStorage, len: usize, op: &str) -> Result<CudaStorage> {
    let out = CudaStorage::alloc(x.dev(), len, x.dtype())?;
    if align_of(out.ptr()) < OUT_ALIGN {
        return Err(Error::Cuda(format!(
            "{op}: output at {:#x} is not {OUT_ALIGN}-byte aligned",
            out.ptr()
        )));
    }
    Ok(out)
}

fn same(x: &CudaStorage, others: &[&CudaStorage], op: &'static str) -> Result<bool> {
    for o in others {
        x.check_device(o, op)?;
        if o.dtype() != x.dtype() {
            return Ok(false);
        }
    }
    Ok(matches!(x.dtype(), DType::F16 | DType::F32))
}

/// `x [rows, in] · wᵀ + bias` with `w [out, in]`, `bias [out]`, in one GEMM; `None`
/// when the fused path is unavailable for these operands.
pub fn linear_bias(
    x: &CudaStorage,
    w: &CudaStorage,
    bias: &CudaStorage,
    rows: usize,
    out_f: usize,
    in_f: usize,
) -> Result<Option<CudaStorage>> {
    let op = "linear (cuBLASLt)";
    if !takes(x, &[w, bias], [rows, out_f, in_f], op)? {
        return Ok(None);
    }
    // Buffers that are not exactly these shapes go the general way.
    if x.len() != rows * in_f || w.len() != out_f * in_f || bias.len() != out_f {
        return Ok(None);
    }
    let (wa, xa, ba) = (align_of(w.ptr()), align_of(x.ptr()), align_of(bias.ptr()));
    let align = [wa, xa, OUT_ALIGN, ba];
    let key = key(false, [out_f, rows, in_f], x, align);
    if !prepare(x.dev(), &key)? {
        return Ok(None);
    }
    let y = output(x, rows * out_f, op)?;
    if !run(x.dev(), &key, w.ptr(), x.ptr(), y.ptr(), bias.ptr()) {
        return Ok(None);
    }
    Ok(Some(y))
}

/// `(dW, db)` of a linear layer: `dW [out, in] = dyᵀ · x`, `db [out] = Σ_rows dy`, in
/// one GEMM; `None` when the fused path is unavailable.
pub fn linear_wgrad_bgrad(
    dy: &CudaStorage,
    x: &CudaStorage,
    rows: usize,
    out_f: usize,
    in_f: usize,
) -> Result<Option<(CudaStorage, CudaStorage)>> {
    let op = "linear backward (cuBLASLt)";
    if !takes(dy, &[x], [rows, out_f, in_f], op)? {
        return Ok(None);
    }
    if dy.len() != rows * out_f || x.len() != rows * in_f {
        return Ok(None);
    }
    let align = [align_of(x.ptr()), align_of(dy.ptr()), OUT_ALIGN, OUT_ALIGN];
    let key = key(true, [in_f, out_f, rows], dy, align);
    if !prepare(dy.dev(), &key)? {
        return Ok(None);
    }
    let dw = output(dy, out_f * in_f, op)?;
    let db = output(dy, out_f, op)?;
    if !run(dy.dev(), &key, x.ptr(), dy.ptr(), dw.ptr(), db.ptr()) {
        return Ok(None);
    }
    Ok(Some((dw, db)))
}

#[cfg(test)]
mod tests {
    use super::{align_of, sizes_ok};

    #[test]
    fn sizes_outside_pytorchs_lt_limits_decline() {
        assert!(sizes_ok(&[12288, 768, 3072]));
        assert!(sizes_ok(&[2, 768, 2]));
        assert!(!sizes_ok(&[1, 768, 3072]));
        assert!(!sizes_ok(&[65535 * 32, 8, 8]));
    }

    #[test]
    fn alignment_is_the_largest_power_of_two_up_to_256() {
        assert_eq!(align_of(0x1000), 256);
        assert_eq!(align_of(0x1002), 2);
        assert_eq!(align_of(0x1010), 16);
        assert_eq!(align_of(0x1180), 128);
        assert_eq!(align_of(0), 256);
    }
}
