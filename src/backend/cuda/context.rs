//! One CUDA device as the backend sees it: context, stream, kernel module(s), cuBLAS
//! handle and caching allocator, created once per ordinal and shared by every buffer.
//!
//! Why it is built this way: everything runs on one stream per device, so stream order
//! alone makes buffer reuse safe and no events are needed. Kernels come from the nvcc
//! fatbin embedded at build time when the driver accepts it; otherwise (no nvcc at build
//! time, a driver too old for the fatbin's code, or FUSEBOX_FORCE_NVRTC=1) each embedded
//! kernel file is compiled with NVRTC for the device's own sm_XX to a cubin, cached on
//! disk under a key of source hash + arch + NVRTC version, so the second run loads in
//! milliseconds. Every cudarc call that can panic (a library that fails to load) runs
//! inside catch_unwind and comes back as Error::Cuda.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig, PushKernelArg,
};

use super::alloc::Allocator;
use super::{libs, CudaStorage};
use crate::error::{Error, Result};

mod embed {
    include!(concat!(env!("OUT_DIR"), "/kernels_embed.rs"));
}

mod load;
use load::load_kernels;
pub use load::{build_info, nvrtc_compile_all, nvrtc_version_checked};

/// Map any cudarc error into our typed error, naming the operation.
pub(crate) fn cu<T, E: std::fmt::Debug>(r: std::result::Result<T, E>, what: &str) -> Result<T> {
    r.map_err(|e| Error::Cuda(format!("{what}: {e:?}")))
}

/// Run `f`, turning a panic inside cudarc (a library that cannot be loaded) into an error.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(Error::Cuda(format!("{what}: {msg}")))
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where the kernels of a device came from.
enum Kernels {
    Fatbin(Arc<CudaModule>),
    Nvrtc(Vec<(String, std::result::Result<Arc<CudaModule>, String>)>),
}

/// A CUDA device: context, stream, kernels, cuBLAS, allocator.
pub struct Dev {
    pub ordinal: usize,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub arch: (i32, i32),
    pub name: String,
    kernels: Kernels,
    kernel_origin: String,
    funcs: Mutex<HashMap<String, CudaFunction>>,
    pub(crate) blas: Mutex<Option<cudarc::cublas::CudaBlas>>,
    pub(crate) alloc: Mutex<Allocator>,
    /// The device error record of kernels/common.cuh (`fb_report`): int[4], allocated
    /// once outside the caching allocator (it lives as long as the process).
    err: u64,
    /// Set when a kernel that may write `err` was queued since the last check, so a
    /// device-to-host copy reads the record only when it can hold something.
    err_pending: AtomicBool,
}

/// Op codes of the device error record; must match FB_ERR_* in kernels/common.cuh.
fn err_op(code: i32) -> &'static str {
    match code {
        1 => "index_select",
        2 => "index_add",
        3 => "cross_entropy",
        _ => "unknown kernel",
    }
}

impl std::fmt::Debug for Dev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cuda:{} ({}, sm_{}{})",
            self.ordinal, self.name, self.arch.0, self.arch.1
        )
    }
}

static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<Dev>>>> = OnceLock::new();

/// The shared handle of device `ordinal`, created on first use.
pub fn device(ordinal: usize) -> Result<Arc<Dev>> {
    let map = DEVICES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = lock(map);
    if let Some(d) = map.get(&ordinal) {
        cu(d.ctx.bind_to_thread(), "bind context")?;
        return Ok(d.clone());
    }
    let d = Arc::new(guarded("create CUDA context", || Dev::new(ordinal))?);
    map.insert(ordinal, d.clone());
    Ok(d)
}

/// Number of CUDA devices, 0 if there is no usable driver. Never panics.
pub fn device_count() -> usize {
    if !libs::driver_present() {
        return 0;
    }
    guarded("count devices", || {
        cu(CudaContext::device_count(), "cuDeviceGetCount")
    })
    .map(|n| n.max(0) as usize)
    .unwrap_or(0)
}

impl Dev {
    fn new(ordinal: usize) -> Result<Dev> {
        if !libs::driver_present() {
            return Err(Error::Cuda(format!(
                "no CUDA driver (libcuda.so.1) could be loaded ({})",
                libs::preload_report()
            )));
        }
        let n = device_count();
        if ordinal >= n {
            return Err(Error::Cuda(format!(
                "cuda:{ordinal} requested but {n} device(s) present"
            )));
        }
        let ctx = cu(CudaContext::new(ordinal), "cuDevicePrimaryCtxRetain")?;
        let stream = ctx.default_stream();
        let arch = cu(ctx.compute_capability(), "compute capability")?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".to_string());
        let (kernels, kernel_origin) = load_kernels(&ctx, arch)?;
        cu(ctx.bind_to_thread(), "bind context")?;
        // SAFETY: a fresh 16-byte device allocation, zeroed before any kernel can see it.
        let err = unsafe {
            let p = cu(
                cudarc::driver::result::malloc_sync(16),
                "allocate error record",
            )?;
            cu(
                cudarc::driver::result::memset_d8_sync(p, 0, 16),
                "zero error record",
            )?;
            p
        };
        Ok(Dev {
            ordinal,
            ctx,
            stream,
            arch,
            name,
            kernels,
            kernel_origin,
            funcs: Mutex::new(HashMap::new()),
            blas: Mutex::new(None),
            alloc: Mutex::new(Allocator::new(ordinal)),
            err,
            err_pending: AtomicBool::new(false),
        })
    }

    /// The device error record for a kernel about to be queued that may report a bad id
    /// or target; the next device-to-host copy (or [`Dev::check_errors`]) reads it.
    pub(crate) fn err_record(&self) -> u64 {
        self.err_pending.store(true, Ordering::Release);
        self.err
    }

    /// The device error record's address for a kernel that only reads it (the
    /// multi-tensor AdamW skips a step with a recorded error).
    pub(crate) fn err_ptr(&self) -> u64 {
        self.err
    }

    /// Wait for the stream and turn a recorded bad id/target into an error naming the op
    /// and the valid range; the record is cleared so later work can go on. Reads the
    /// record (one 16-byte copy) only when a reporting kernel ran since the last check.
    pub(crate) fn check_errors(&self) -> Result<()> {
        if !self.err_pending.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let mut rec = [0i32; 4];
        cu(self.ctx.bind_to_thread(), "bind context")?;
        // SAFETY: `err` holds 16 bytes; synchronised before `rec` is read.
        cu(
            unsafe {
                cudarc::driver::result::memcpy_dtoh_async(
                    &mut rec,
                    self.err,
                    self.stream.cu_stream(),
                )
            },
            "read device error record",
        )?;
        self.sync()?;
        if rec[0] == 0 {
            return Ok(());
        }
        // SAFETY: `err` holds 16 bytes; stream order puts the reset before later kernels.
        cu(
            unsafe {
                cudarc::driver::result::memset_d8_async(self.err, 0, 16, self.stream.cu_stream())
            },
            "clear device error record",
        )?;
        let op = err_op(rec[0]);
        let what = if rec[0] == 3 {
            format!(
                "target {} is outside [0, {}) and is not ignore_index {}",
                rec[1], rec[2], rec[3]
            )
        } else {
            format!("id {} is outside [0, {})", rec[1], rec[2])
        };
        Err(Error::msg(format!(
            "{op}: {what} (found on the device by an earlier {op} launch, reported at the \
             next read from the device)"
        )))
    }

    /// Human-readable origin of the kernels ("fatbin (nvcc …)" or "nvrtc …").
    pub fn kernel_origin(&self) -> &str {
        &self.kernel_origin
    }

    /// Look up a kernel by its extern "C" name.
    pub fn func(&self, name: &str) -> Result<CudaFunction> {
        let mut funcs = lock(&self.funcs);
        if let Some(f) = funcs.get(name) {
            return Ok(f.clone());
        }
        let f = match &self.kernels {
            Kernels::Fatbin(m) => cu(m.load_function(name), &format!("kernel {name} (fatbin)"))?,
            Kernels::Nvrtc(mods) => {
                let mut errs = Vec::new();
                let mut found = None;
                for (file, m) in mods {
                    match m {
                        Ok(m) => {
                            if let Ok(f) = m.load_function(name) {
                                found = Some(f);
                                break;
                            }
                        }
                        Err(e) => errs.push(format!("{file} failed to compile: {e}")),
                    }
                }
                found.ok_or_else(|| {
                    Error::Cuda(format!(
                        "kernel {name} not found in NVRTC modules; {}",
                        errs.join("; ")
                    ))
                })?
            }
        };
        funcs.insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// Launch `name` on this device's stream with `args`.
    pub fn launch(&self, name: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        check_launch_args(name, args, &[])?;
        let f = self.func(name)?;
        let mut b = self.stream.launch_builder(&f);
        push_args(&mut b, args);
        // SAFETY: argument lists are built by the typed wrappers in this module's
        // siblings, one per kernel signature; buffers are sized by the caller.
        cu(unsafe { b.launch(cfg) }, &format!("launch {name}")).map(|_| ())
    }

    /// Launch `name` with the device addresses of `bufs` followed by `scalars`: the
    /// parameter order of every kernel whose buffers come first (scalars may still hold
    /// a raw pointer, such as the error record, after the sizes).
    pub fn launch_bufs(
        &self,
        name: &str,
        cfg: LaunchConfig,
        bufs: &[&CudaStorage],
        scalars: &[Arg],
    ) -> Result<()> {
        const MAX: usize = 24;
        let n = bufs.len() + scalars.len();
        if n > MAX {
            return Err(Error::Cuda(format!(
                "launch {name}: {n} arguments, more than the {MAX} launch_bufs takes"
            )));
        }
        let mut args = [Arg::Ptr(0); MAX];
        for (a, b) in args.iter_mut().zip(bufs) {
            *a = Arg::Ptr(b.ptr());
        }
        args[bufs.len()..n].copy_from_slice(scalars);
        self.launch(name, cfg, &args[..n])
    }

    pub fn sync(&self) -> Result<()> {
        cu(self.stream.synchronize(), "stream synchronize")
    }
}

/// One kernel argument. Device pointers are passed as raw 64-bit addresses.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Ptr(u64),
    U64(u64),
    I64(i64),
    I32(i32),
    F32(f32),
    F64(f64),
}

/// A size or count as the kernels take it (`i64`).
pub fn n64(n: usize) -> Arg {
    Arg::I64(n as i64)
}

/// The parameter types of `name` as compiled (build.rs reads them off the PTX), or None
/// in a build without nvcc (the NVRTC path), which then launches unchecked.
pub fn kernel_signature(name: &str) -> Option<&'static str> {
    static TABLE: OnceLock<HashMap<&'static str, &'static str>> = OnceLock::new();
    TABLE
        .get_or_init(|| embed::SIGNATURES.iter().copied().collect())
        .get(name)
        .copied()
}

/// Refuse a launch whose arguments do not match the kernel's parameters: by-value structs
/// first (their sizes in `structs`), then `args`. A mismatch would otherwise reach the
/// driver as misplaced bytes.
pub(crate) fn check_launch_args(name: &str, args: &[Arg], structs: &[usize]) -> Result<()> {
    match kernel_signature(name) {
        Some(sig) => check_against(name, sig, args, structs),
        None => Ok(()),
    }
}

/// Every launch goes through this, so it allocates nothing unless it fails.
fn check_against(name: &str, sig: &str, args: &[Arg], structs: &[usize]) -> Result<()> {
    let n = sig.split_whitespace().count();
    let given = structs.len() + args.len();
    if n != given {
        return Err(Error::Cuda(format!(
            "launch {name}: {given} arguments given, the kernel takes {n} ({sig})"
        )));
    }
    for (i, w) in sig.split_whitespace().enumerate() {
        let fits = match i.checked_sub(structs.len()) {
            None => w.strip_prefix("bytes").and_then(|b| b.parse().ok()) == Some(structs[i]),
            Some(j) => match args[j] {
                Arg::Ptr(_) | Arg::U64(_) | Arg::I64(_) => matches!(w, "u64" | "s64" | "b64"),
                Arg::I32(_) => matches!(w, "u32" | "s32" | "b32"),
                Arg::F32(_) => w == "f32",
                Arg::F64(_) => w == "f64",
            },
        };
        if !fits {
            let got = match i.checked_sub(structs.len()) {
                None => format!("a {}-byte struct", structs[i]),
                Some(j) => args[j].kind().to_string(),
            };
            return Err(Error::Cuda(format!(
                "launch {name}: argument {i} is {got}, the kernel's parameter {i} is {w} ({sig})"
            )));
        }
    }
    Ok(())
}

impl Arg {
    /// What this argument passes, for error messages.
    fn kind(&self) -> &'static str {
        match self {
            Arg::Ptr(_) => "a pointer",
            Arg::U64(_) => "a u64",
            Arg::I64(_) => "an i64",
            Arg::I32(_) => "an i32",
            Arg::F32(_) => "an f32",
            Arg::F64(_) => "an f64",
        }
    }
}

/// Append `args` to a kernel launch, each as its typed value.
pub(crate) fn push_args<'a>(b: &mut cudarc::driver::LaunchArgs<'a>, args: &'a [Arg]) {
    for a in args {
        match a {
            Arg::Ptr(v) | Arg::U64(v) => b.arg(v),
            Arg::I64(v) => b.arg(v),
            Arg::I32(v) => b.arg(v),
            Arg::F32(v) => b.arg(v),
            Arg::F64(v) => b.arg(v),
        };
    }
}

/// `blocks` blocks of `threads` threads, both along x, no dynamic shared memory.
pub fn cfg_blocks(blocks: usize, threads: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Grid-stride launch for `n` elements: 256 threads, at most 4096 blocks.
pub fn cfg_1d(n: usize) -> LaunchConfig {
    cfg_blocks(n.div_ceil(256).clamp(1, 4096), 256)
}

/// One block per row for the norm kernels (kernels/norm.cu), which walk a row in 8-element
/// chunks: about one thread per chunk, a whole number of warps, at most 1024.
pub fn cfg_norm_rows(rows: usize, cols: usize) -> LaunchConfig {
    let t = cols.div_ceil(8).div_ceil(32).clamp(1, 32) * 32;
    cfg_blocks(rows.max(1), t)
}

/// Launch for the chunked kernels (FB_CHUNK_STRIDE in kernels/common.cuh), where each
/// thread moves 8 consecutive elements per step: one thread per chunk so no thread sits
/// idle, with the same 4096-block cap as `cfg_1d` (larger inputs grid-stride).
pub fn cfg_chunks(n: usize) -> LaunchConfig {
    cfg_1d(n.div_ceil(8))
}

/// One block per row; threads scale with the row width (a multiple of 32, ≤ 1024).
pub fn cfg_rows(rows: usize, cols: usize) -> LaunchConfig {
    let t = cols.div_ceil(32).clamp(1, 8) * 32;
    let t = if cols >= 4096 {
        1024
    } else if cols >= 1024 {
        512.max(t)
    } else {
        t.max(128)
    };
    cfg_blocks(rows.max(1), t)
}

#[cfg(test)]
mod launch_arg_tests {
    use super::*;

    #[test]
    fn launch_arguments_are_checked_against_the_signature() {
        let sig = "u64 u32 f32";
        let ok = [Arg::Ptr(1), Arg::I32(2), Arg::F32(3.0)];
        assert!(check_against("k", sig, &ok, &[]).is_ok());
        let e = check_against("k", sig, &ok[..2], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("launch k: 2 arguments given, the kernel takes 3"),
            "{e}"
        );
        let swapped = [Arg::Ptr(1), Arg::I64(2), Arg::F32(3.0)];
        let e = check_against("k", sig, &swapped, &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("argument 1 is an i64, the kernel's parameter 1 is u32"),
            "{e}"
        );
        let e = check_against("k", sig, &[Arg::Ptr(1), Arg::I32(2), Arg::F64(3.0)], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("argument 2 is an f64"), "{e}");
        // A by-value struct of the wrong size, and a struct where a scalar is expected.
        assert!(check_against("t", "bytes16 u64", &[Arg::Ptr(0)], &[16]).is_ok());
        let e = check_against("t", "bytes16 u64", &[Arg::Ptr(0)], &[24])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("argument 0 is a 24-byte struct, the kernel's parameter 0 is bytes16"),
            "{e}"
        );
        assert!(check_against("t", "b64 u64", &[Arg::Ptr(0)], &[64]).is_err());
    }

    /// With nvcc at build time the table holds every kernel, as compiled.
    #[test]
    fn compiled_signatures_are_embedded() {
        if embed::FATBIN.is_none() {
            eprintln!(
                "SKIP: built without nvcc, no signature table ({})",
                embed::NVCC_INFO
            );
            return;
        }
        assert!(
            embed::SIGNATURES.len() >= 100,
            "{}",
            embed::SIGNATURES.len()
        );
        assert_eq!(
            kernel_signature("fb_attn_dq_cast_f16"),
            Some("u64 u64 u32 u32 u32")
        );
        // 12 pointers, B H Lq Lk, scale causal dropout key, ldq ldkv.
        let bwd = kernel_signature("fb_attn_bwd_f16");
        assert_eq!(
            bwd,
            Some("u64 u64 u64 u64 u64 u64 u64 u64 u64 u64 u64 u64 u32 u32 u32 u32 f32 u32 f32 u64 u32 u32")
        );
        assert_eq!(kernel_signature("fb_attn_bwd_f16_k128"), bwd);
        assert_eq!(kernel_signature("no_such_kernel"), None);
    }
}
