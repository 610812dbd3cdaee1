//! The CUDA backend: context and stream, kernel registry (fatbin or NVRTC), cuBLAS,
//! caching allocator feeding `backend::tracker`. Loaded dynamically: a machine without a
//! driver builds and runs everything else, and `Device::Auto` falls back to the CPU.
//!
//! A `CudaStorage` is a raw device block from the caching allocator plus dtype and
//! length; every op allocates its outputs and launches on the device's single stream.
//! The op families live in sibling files named like their kernels (elementwise, reduce,
//! norm, softmax, embedding, layout, adamw, span, attention) so that kernels/norm.cu,
//! backend/cuda/norm.rs and backend/cpu/norm.rs are found together. F32 and F16 are the
//! float dtypes here (fp32 math throughout); F64 is CPU-only and gets a DType error.

pub(crate) mod adafactor;
mod adamw;
pub(crate) mod adamw_multi;
pub mod alloc;
pub(crate) mod attention_fused;
mod attention_unfused;
pub(crate) mod blas;
pub mod blaslt;
pub mod cap;
pub mod context;
mod elementwise;
mod embedding;
mod launch_table;
mod layout;
pub mod libs;
mod norm;
// Used by build.rs (include!); compiled here only for its tests.
#[cfg(test)]
mod archs;
#[cfg(test)]
mod ptx_params;
pub(crate) mod reduce;
mod softmax;
mod span;
mod storage;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::backend::tracker;
use crate::backend::{BackendStorage, CpuStorage};
use crate::error::{Error, Result};
use crate::shape::{DType, Device, Shape};

pub use alloc::AllocStats;
pub use attention_fused::{
    attention_impl, backward_tile, set_attention_impl, set_backward_tile, AttnImpl, BwdTile,
};
use context::{cu, lock, Dev};

/// Is a CUDA driver loadable and a device present? Never panics; the answer is cached.
pub fn is_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE
        .get_or_init(|| std::panic::catch_unwind(|| context::device_count() > 0).unwrap_or(false))
}

/// The A/B switches in force on device `ordinal` (attention path, attention backward tile,
/// cuBLASLt epilogues, where the kernels came from), for benchmark records.
pub fn switches(ordinal: usize) -> Vec<(&'static str, String)> {
    vec![
        (
            "attention",
            format!("{:?}", attention_impl()).to_lowercase(),
        ),
        (
            "attention_bwd",
            match backward_tile() {
                Ok(BwdTile::K64) => "k64".to_string(),
                Ok(BwdTile::K128) => "k128".to_string(),
                Err(e) => e.to_string(),
            },
        ),
        ("cublaslt_epilogues", (!blaslt::disabled()).to_string()),
        (
            "kernels",
            context::device(ordinal)
                .map(|d| d.kernel_origin().to_string())
                .unwrap_or_else(|e| e.to_string()),
        ),
    ]
}

/// Why CUDA is or is not usable, for skip messages and `--device` errors.
pub fn availability_report() -> String {
    let libs = libs::preload_report();
    match context::device(0) {
        Ok(d) => format!("{d:?}; kernels: {}; libraries: {libs}", d.kernel_origin()),
        Err(e) => format!("CUDA unavailable: {e}"),
    }
}

static POISON: AtomicBool = AtomicBool::new(false);

/// Fill every new output buffer with 0xFF bytes (NaN in f32 and f16, -1 in i32) before
/// the kernel writes it, so an element a kernel forgets to write fails the GPU tests.
/// Also enabled by FUSEBOX_POISON_ALLOC=1.
pub fn set_poison(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}

fn poison_on() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    POISON.load(Ordering::Relaxed)
        || *ENV.get_or_init(|| {
            std::env::var("FUSEBOX_POISON_ALLOC")
                .map(|v| v == "1")
                .unwrap_or(false)
        })
}

/// Allocator figures for `cuda:ordinal`.
pub fn mem_stats(ordinal: usize) -> Result<AllocStats> {
    Ok(lock(&context::device(ordinal)?.alloc).stats())
}

/// Cap what `cuda:ordinal`'s allocator may reserve (`--vram-budget` / `--gpu` on CUDA;
/// see `cap.rs`), or lift the cap with None. Applies to blocks allocated from now on.
pub fn set_memory_cap(ordinal: usize, cap: Option<cap::MemoryCap>) -> Result<()> {
    lock(&context::device(ordinal)?.alloc).set_cap(cap);
    Ok(())
}

/// Start a new allocator peak measurement on `cuda:ordinal`.
pub fn alloc_reset_peak(ordinal: usize) -> Result<()> {
    lock(&context::device(ordinal)?.alloc).reset_peak();
    Ok(())
}

/// Return all cached blocks of `cuda:ordinal` to the driver.
pub fn empty_cache(ordinal: usize) -> Result<()> {
    let d = context::device(ordinal)?;
    d.sync()?;
    lock(&d.alloc).empty_cache();
    Ok(())
}

/// Wait for all work queued on `device` (profiling, timing); a no-op off CUDA.
pub fn synchronize(device: Device) -> Result<()> {
    match device {
        Device::Cuda(n) => context::device(n)?.sync(),
        _ => Ok(()),
    }
}

/// Wait for `device` and report any bad id or target that an embedding or loss kernel
/// recorded since the last check (they are otherwise reported at the next read from the
/// device); a no-op off CUDA.
pub fn check_errors(device: Device) -> Result<()> {
    match device {
        Device::Cuda(n) => {
            let d = context::device(n)?;
            d.sync()?;
            d.check_errors()
        }
        _ => Ok(()),
    }
}

/// (free, total) device memory in bytes as the driver reports it.
pub fn mem_info(ordinal: usize) -> Result<(usize, usize)> {
    cu(context::device(ordinal)?.ctx.mem_get_info(), "cuMemGetInfo")
}

/// The PCI address of `cuda:ordinal` as NVML takes it (`domain:bus:device.function`,
/// hex). CUDA ordinals follow CUDA_VISIBLE_DEVICES and NVML indices do not, so NVML is
/// asked by address.
pub fn pci_bus_id(ordinal: usize) -> Result<String> {
    use cudarc::driver::sys::CUdevice_attribute as A;
    let ctx = &context::device(ordinal)?.ctx;
    let part = |a| cu(ctx.attribute(a), "cuDeviceGetAttribute (PCI)");
    let domain = part(A::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID)?;
    let bus = part(A::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID)?;
    let dev = part(A::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)?;
    Ok(format!("{domain:08X}:{bus:02X}:{dev:02X}.0"))
}

/// A device buffer.
pub struct CudaStorage {
    dev: Arc<Dev>,
    ptr: u64,
    block: usize,
    dtype: DType,
    len: usize,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaStorage({:?}, {} x {})",
            self.dev, self.len, self.dtype
        )
    }
}

impl Drop for CudaStorage {
    fn drop(&mut self) {
        tracker::on_free(
            Device::Cuda(self.dev.ordinal),
            self.len * self.dtype.size_in_bytes(),
        );
        lock(&self.dev.alloc).release(self.ptr, self.block);
    }
}

/// Kernel-name suffix of a float dtype.
pub(crate) fn sfx(op: &'static str, dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::F16 => Ok("f16"),
        got => Err(Error::DType {
            op,
            expected: "f32 or f16 on CUDA",
            got,
        }),
    }
}

/// Rows of a `[rows, cols]` buffer, or an error naming `op`.
pub(crate) fn rows_of(x: &CudaStorage, cols: usize, op: &'static str) -> Result<usize> {
    if cols == 0 || !x.len().is_multiple_of(cols) {
        return Err(len_err(op, cols, x.len()));
    }
    Ok(x.len() / cols)
}

/// `v` must hold `len` elements of `dtype` on the device of `like`.
pub(crate) fn expect_buf(
    v: &CudaStorage,
    like: &CudaStorage,
    len: usize,
    dtype: DType,
    op: &'static str,
) -> Result<()> {
    if v.len() != len {
        return Err(len_err(op, len, v.len()));
    }
    if v.dtype() != dtype {
        return Err(Error::DType {
            op,
            expected: dtype.as_str(),
            got: v.dtype(),
        });
    }
    like.check_device(v, op)
}

pub(crate) fn len_err(op: &'static str, expected: usize, got: usize) -> Error {
    Error::Shape {
        op,
        expected: format!("{expected} elements"),
        got: Shape::new(&[got]),
    }
}

impl CudaStorage {
    /// An uninitialised buffer (poisoned when poisoning is on).
    pub(crate) fn alloc(dev: &Arc<Dev>, len: usize, dtype: DType) -> Result<CudaStorage> {
        if dtype == DType::F64 {
            return Err(Error::DType {
                op: "cuda alloc",
                expected: "f32, f16 or i32",
                got: dtype,
            });
        }
        cu(dev.ctx.bind_to_thread(), "bind context")?;
        let bytes = len * dtype.size_in_bytes();
        let (ptr, block) = lock(&dev.alloc).alloc(bytes)?;
        tracker::on_alloc(Device::Cuda(dev.ordinal), bytes);
        let s = CudaStorage {
            dev: dev.clone(),
            ptr,
            block,
            dtype,
            len,
        };
        if poison_on() && bytes > 0 {
            // SAFETY: ptr holds at least `bytes` bytes.
            cu(
                unsafe {
                    cudarc::driver::result::memset_d8_async(
                        ptr,
                        0xFF,
                        bytes,
                        dev.stream.cu_stream(),
                    )
                },
                "poison",
            )?;
        }
        Ok(s)
    }

    /// A buffer of zero bytes (0.0 in every float dtype, 0 in i32).
    pub(crate) fn zeroed(dev: &Arc<Dev>, len: usize, dtype: DType) -> Result<CudaStorage> {
        let s = Self::alloc(dev, len, dtype)?;
        if len > 0 {
            // SAFETY: s.ptr holds len * size bytes.
            cu(
                unsafe {
                    cudarc::driver::result::memset_d8_async(
                        s.ptr,
                        0,
                        len * dtype.size_in_bytes(),
                        dev.stream.cu_stream(),
                    )
                },
                "memset",
            )?;
        }
        Ok(s)
    }

    pub(crate) fn dev(&self) -> &Arc<Dev> {
        &self.dev
    }

    pub(crate) fn ptr(&self) -> u64 {
        self.ptr
    }
    pub(crate) fn bytes(&self) -> usize {
        self.len * self.dtype.size_in_bytes()
    }

    /// Same device as `self`, or the device-mismatch error naming `op`.
    pub(crate) fn check_device(&self, other: &CudaStorage, op: &'static str) -> Result<()> {
        if self.dev.ordinal != other.dev.ordinal {
            return Err(Error::DeviceMismatch {
                op,
                a: self.device(),
                b: other.device(),
            });
        }
        Ok(())
    }

    /// Same dtype as `self`, or the dtype error naming `op`.
    pub(crate) fn check_dtype(&self, other: &CudaStorage, op: &'static str) -> Result<()> {
        if other.dtype != self.dtype {
            return Err(Error::DType {
                op,
                expected: self.dtype.as_str(),
                got: other.dtype,
            });
        }
        Ok(())
    }

    /// Same device and same length as `self`, or an error naming `op`.
    pub(crate) fn check_pair(&self, other: &CudaStorage, op: &'static str) -> Result<()> {
        self.check_device(other, op)?;
        if other.len != self.len {
            return Err(len_err(op, self.len, other.len));
        }
        Ok(())
    }

    /// Upload a host buffer to device `ordinal`.
    pub fn from_cpu(src: &CpuStorage, ordinal: usize) -> Result<CudaStorage> {
        let dev = context::device(ordinal)?;
        let dtype = src.dtype();
        if dtype == DType::F64 {
            return Err(Error::DType {
                op: "to cuda",
                expected: "f32, f16 or i32 (f64 is CPU-only)",
                got: dtype,
            });
        }
        let s = Self::alloc(&dev, src.len(), dtype)?;
        let bytes = src.as_bytes();
        if !bytes.is_empty() {
            // No stream sync after the copy (it used to drain the queue at every batch
            // upload, mid-step). `bytes` is ordinary pageable memory (a Vec we never
            // register or pin). The driver API's "API synchronization behavior" page
            // promises staging before return only for the synchronous copies; for the
            // async ones it says a pageable transfer "might be synchronous with respect
            // to host" and that the driver "may synchronize with the stream and stage
            // the copy". What we rely on is that practice: the driver copies a pageable
            // source into its own pinned staging memory before cuMemcpyHtoDAsync
            // returns, so the caller may free or reuse the host buffer at once. cudarc's
            // safe `memcpy_htod` relies on the same (no sync for `&[T]`/`Vec` sources),
            // as does PyTorch's non_blocking copy from pageable memory. Stream order
            // covers the rest: the DMA is queued before any kernel that reads `s`, and
            // the allocator hands blocks out on this one stream.
            // SAFETY: s holds bytes.len() bytes; `bytes` is valid for the call and is
            // staged by the driver before it returns, as above.
            cu(
                unsafe {
                    cudarc::driver::result::memcpy_htod_async(s.ptr, bytes, dev.stream.cu_stream())
                },
                "copy host to device",
            )?;
        }
        Ok(s)
    }

    /// Download the raw bytes.
    fn to_host_bytes(&self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.bytes()];
        if !out.is_empty() {
            cu(self.dev.ctx.bind_to_thread(), "bind context")?;
            // SAFETY: self.ptr holds out.len() bytes; synchronised before returning.
            cu(
                unsafe {
                    cudarc::driver::result::memcpy_dtoh_async(
                        &mut out,
                        self.ptr,
                        self.dev.stream.cu_stream(),
                    )
                },
                "copy device to host",
            )?;
        }
        self.dev.sync()?;
        // A bad id/target found by an earlier kernel surfaces here, at the first read from
        // the device after it, instead of costing a sync per embedding or loss launch.
        self.dev.check_errors()?;
        Ok(out)
    }

    /// Device-to-device copy of all bytes of `src` into `self` (same byte size).
    pub(crate) fn copy_bytes_from(&mut self, src: &CudaStorage) -> Result<()> {
        if self.bytes() != src.bytes() {
            return Err(len_err("copy", self.len, src.len));
        }
        if self.bytes() > 0 {
            // SAFETY: both blocks hold self.bytes() bytes; same stream.
            cu(
                unsafe {
                    cudarc::driver::result::memcpy_dtod_async(
                        self.ptr,
                        src.ptr,
                        self.bytes(),
                        self.dev.stream.cu_stream(),
                    )
                },
                "copy device to device",
            )?;
        }
        Ok(())
    }

    /// Read a device int flag (one i32) and report whether it is nonzero.
    pub(crate) fn flag_set(&self) -> Result<bool> {
        Ok(self.to_vec_i32()?.first().copied().unwrap_or(0) != 0)
    }

    /// Where this device's kernels came from (fatbin or NVRTC), for reports.
    pub fn kernel_origin(&self) -> String {
        self.dev.kernel_origin().to_string()
    }
}
/// Device memory in use on `cuda:ordinal` as NVML reports it (whole device, every
/// process), or None where there is no NVML (no driver, CPU machines). The device is
/// found by its PCI address, since NVML's indices ignore CUDA_VISIBLE_DEVICES; by index
/// only where NVML sees a single GPU, so the figure can never be another card's.
pub fn nvml_used_bytes(ordinal: usize) -> Option<u64> {
    let nvml = nvml_wrapper::Nvml::init().ok()?;
    let by_address = pci_bus_id(ordinal)
        .ok()
        .and_then(|id| nvml.device_by_pci_bus_id(id).ok());
    let dev = match by_address {
        Some(d) => d,
        None if nvml.device_count().ok()? == 1 => nvml.device_by_index(0).ok()?,
        None => return None,
    };
    dev.memory_info().ok().map(|m| m.used)
}
