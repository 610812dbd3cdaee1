//! Where the kernels come from: the nvcc fatbin embedded at build time when the driver
//! accepts it, else each embedded kernel file compiled by NVRTC for the device's own
//! sm_XX and cached on disk (key: source hash + arch + NVRTC version), so the second run
//! loads in milliseconds.

use std::ffi::{c_char, c_int, CString};
use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::CudaContext;
use cudarc::nvrtc::Ptx;

use super::{cu, embed, guarded, libs, Kernels};
use crate::error::{Error, Result};

pub(super) fn load_kernels(ctx: &Arc<CudaContext>, arch: (i32, i32)) -> Result<(Kernels, String)> {
    let force_nvrtc = std::env::var("FUSEBOX_FORCE_NVRTC")
        .map(|v| v == "1")
        .unwrap_or(false);
    let mut why_not_fatbin = String::from("FUSEBOX_FORCE_NVRTC=1");
    if !force_nvrtc {
        match embed::FATBIN {
            Some(bin) => match ctx.load_module(Ptx::from_binary(bin.to_vec())) {
                Ok(m) => {
                    return Ok((Kernels::Fatbin(m), format!("fatbin ({})", embed::NVCC_INFO)));
                }
                Err(e) => why_not_fatbin = format!("the driver rejected the fatbin: {e:?}"),
            },
            None => why_not_fatbin = format!("no fatbin embedded ({})", embed::NVCC_INFO),
        }
    }
    if !libs::nvrtc_present() {
        return Err(Error::Cuda(format!(
            "no usable kernels: {why_not_fatbin}, and NVRTC (libnvrtc.so.13/.12) could not be \
             loaded ({}). Install the CUDA toolkit or `pip install nvidia-cuda-nvrtc-cu12`, or \
             build with nvcc on PATH.",
            libs::preload_report()
        )));
    }
    let (vmaj, vmin) = nvrtc_version()?;
    let headers: Vec<(&str, &str)> = embed::SOURCES
        .iter()
        .copied()
        .filter(|(n, _)| n.ends_with(".cuh"))
        .collect();
    let mut mods = Vec::new();
    let mut cached = 0;
    for (file, src) in embed::SOURCES.iter().filter(|(n, _)| n.ends_with(".cu")) {
        let r = compile_cached(file, src, &headers, arch, (vmaj, vmin)).and_then(|(cubin, hit)| {
            cached += hit as usize;
            cu(
                ctx.load_module(Ptx::from_binary(cubin)),
                &format!("load NVRTC cubin of {file}"),
            )
        });
        mods.push((file.to_string(), r.map_err(|e| e.to_string())));
    }
    let failed: Vec<&str> = mods
        .iter()
        .filter(|(_, m)| m.is_err())
        .map(|(f, _)| f.as_str())
        .collect();
    let origin = format!(
        "nvrtc {vmaj}.{vmin} sm_{}{} ({} files, {cached} from cache{}; fatbin not used: {why_not_fatbin})",
        arch.0,
        arch.1,
        mods.len(),
        if failed.is_empty() { String::new() } else { format!(", FAILED: {}", failed.join(",")) }
    );
    Ok((Kernels::Nvrtc(mods), origin))
}

/// Compile every embedded kernel file with NVRTC for `arch` (no device needed, no
/// cache): the check that the run-time path works where nvcc never ran. Returns
/// (file, cubin bytes) per file.
pub fn nvrtc_compile_all(arch: (i32, i32)) -> Result<Vec<(String, usize)>> {
    if !libs::nvrtc_present() {
        return Err(Error::Cuda(format!(
            "NVRTC could not be loaded ({})",
            libs::preload_report()
        )));
    }
    let headers: Vec<(&str, &str)> = embed::SOURCES
        .iter()
        .copied()
        .filter(|(n, _)| n.ends_with(".cuh"))
        .collect();
    let opts = nvrtc_options(arch);
    let mut out = Vec::new();
    for (file, src) in embed::SOURCES.iter().filter(|(n, _)| n.ends_with(".cu")) {
        let bin = guarded("NVRTC compile", || {
            nvrtc_compile(file, src, &headers, &opts)
        })?;
        out.push((file.to_string(), bin.len()));
    }
    Ok(out)
}

/// The NVRTC version, if the library loads.
pub fn nvrtc_version_checked() -> Result<(i32, i32)> {
    if !libs::nvrtc_present() {
        return Err(Error::Cuda("NVRTC could not be loaded".into()));
    }
    nvrtc_version()
}

/// Was a fatbin built into this binary, and by what.
pub fn build_info() -> String {
    match embed::FATBIN {
        Some(b) => format!("fatbin of {} bytes ({})", b.len(), embed::NVCC_INFO),
        None => format!("no fatbin ({}); NVRTC at run time", embed::NVCC_INFO),
    }
}

fn nvrtc_version() -> Result<(i32, i32)> {
    let (mut a, mut b): (c_int, c_int) = (0, 0);
    guarded("nvrtcVersion", || {
        // SAFETY: out-pointers to two ints.
        let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut a, &mut b) };
        cu(r.result(), "nvrtcVersion")
    })?;
    Ok((a, b))
}

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FUSEBOX_KERNEL_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(d).join("fusebox/kernels");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".cache/fusebox/kernels");
    }
    std::env::temp_dir().join("fusebox-kernels")
}

/// NVRTC-compile one kernel file to a cubin for `arch`, via the on-disk cache.
fn compile_cached(
    file: &str,
    src: &str,
    headers: &[(&str, &str)],
    arch: (i32, i32),
    ver: (i32, i32),
) -> Result<(Vec<u8>, bool)> {
    let opts = nvrtc_options(arch);
    let mut parts: Vec<&[u8]> = vec![src.as_bytes()];
    for (n, h) in headers {
        parts.push(n.as_bytes());
        parts.push(h.as_bytes());
    }
    for o in &opts {
        parts.push(o.as_bytes());
    }
    let hash = fnv1a(&parts);
    let stem = file.trim_end_matches(".cu");
    let path = cache_dir().join(format!(
        "{stem}-{hash:016x}-sm{}{}-nvrtc{}.{}.cubin",
        arch.0, arch.1, ver.0, ver.1
    ));
    if let Ok(bin) = std::fs::read(&path) {
        if !bin.is_empty() {
            return Ok((bin, true));
        }
    }
    let bin = guarded("NVRTC compile", || nvrtc_compile(file, src, headers, &opts))?;
    // A cache we cannot write is only slower next time.
    if let Some(dir) = path.parent() {
        if std::fs::create_dir_all(dir).is_ok() {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, &bin).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
    }
    Ok((bin, false))
}

fn nvrtc_options(arch: (i32, i32)) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture=sm_{}{}", arch.0, arch.1),
        "--std=c++17".to_string(),
    ];
    for d in libs::cuda_include_dirs() {
        o.push(format!("-I{}", d.display()));
    }
    o
}

fn nvrtc_compile(
    file: &str,
    src: &str,
    headers: &[(&str, &str)],
    opts: &[String],
) -> Result<Vec<u8>> {
    use cudarc::nvrtc::sys;
    let c =
        |s: &str| CString::new(s).map_err(|_| Error::Cuda(format!("{file}: NUL byte in source")));
    let c_src = c(src)?;
    let c_name = c(file)?;
    let c_hdr: Vec<CString> = headers.iter().map(|(_, h)| c(h)).collect::<Result<_>>()?;
    let c_hname: Vec<CString> = headers.iter().map(|(n, _)| c(n)).collect::<Result<_>>()?;
    let p_hdr: Vec<*const c_char> = c_hdr.iter().map(|s| s.as_ptr()).collect();
    let p_hname: Vec<*const c_char> = c_hname.iter().map(|s| s.as_ptr()).collect();
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: all pointers come from live CStrings/Vecs above; prog is destroyed below.
    unsafe {
        cu(
            sys::nvrtcCreateProgram(
                &mut prog,
                c_src.as_ptr(),
                c_name.as_ptr(),
                p_hdr.len() as c_int,
                p_hdr.as_ptr(),
                p_hname.as_ptr(),
            )
            .result(),
            "nvrtcCreateProgram",
        )?;
        let compiled = cudarc::nvrtc::result::compile_program(prog, opts);
        let out = match compiled {
            Err(e) => {
                let log = cudarc::nvrtc::result::get_program_log(prog)
                    .map(|l| {
                        let bytes: Vec<u8> = l
                            .iter()
                            .map(|&ch| ch as u8)
                            .take_while(|&b| b != 0)
                            .collect();
                        String::from_utf8_lossy(&bytes).into_owned()
                    })
                    .unwrap_or_default();
                Err(Error::Cuda(format!(
                    "NVRTC failed on {file} ({e:?}): {log}"
                )))
            }
            Ok(()) => {
                let mut size = 0usize;
                match sys::nvrtcGetCUBINSize(prog, &mut size).result() {
                    Err(e) => Err(Error::Cuda(format!("nvrtcGetCUBINSize {file}: {e:?}"))),
                    Ok(()) => {
                        let mut buf = vec![0u8; size];
                        sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char)
                            .result()
                            .map(|_| buf)
                            .map_err(|e| Error::Cuda(format!("nvrtcGetCUBIN {file}: {e:?}")))
                    }
                }
            }
        };
        let _ = cudarc::nvrtc::result::destroy_program(prog);
        out
    }
}
