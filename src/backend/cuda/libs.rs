//! Finding the CUDA shared libraries before cudarc looks for them.
//!
//! Why this exists: cudarc (built with `dynamic-loading`) dlopens libraries by soname
//! and panics when one is missing. We build cudarc with the `cuda-13000` feature, whose
//! soname list is `lib{x}.so`, `.so.13`, `.so.12`, `.so.11`, …: one binary then uses the
//! CUDA 13 libraries on a CUDA 13 machine (the lent H100/H200) and the CUDA 12 ones on
//! Colab (driver 12.x, pip/CUDA 12 libraries). The only driver entry points a 13.x build
//! calls that a 12.x driver lacks are `cuEventElapsedTime_v2` and `cuDeviceGetUuid_v2`;
//! the backend never calls either (timings use host clocks after a stream sync). The
//! libraries are often installed where the loader does not look (CUDA_HOME/lib64 not in
//! ld.so.conf, PyTorch's pip wheels under site-packages/nvidia/*/lib), so when a
//! soname does not resolve we search those directories and dlopen the file by absolute
//! path; glibc then satisfies cudarc's later dlopen of the same soname with the already
//! loaded object. Dependencies are loaded first (cublasLt before cublas, nvrtc-builtins
//! before nvrtc) from the same directory and major version.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Directories that may hold CUDA libraries, most specific first.
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("FUSEBOX_CUDA_LIB_DIR") {
        dirs.extend(std::env::split_paths(&v));
    }
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            let base = PathBuf::from(v);
            dirs.push(base.join("lib64"));
            dirs.push(base.join("lib"));
            dirs.push(base.join("targets/x86_64-linux/lib"));
        }
    }
    for d in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/local/nvidia/lib64",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib/wsl/lib",
    ] {
        dirs.push(PathBuf::from(d));
    }
    // Python environments: PyTorch and the nvidia-* wheels put libraries in
    // site-packages/nvidia/<pkg>/lib (CUDA 12 wheels) or nvidia/cu13/lib (CUDA 13).
    let mut roots: Vec<PathBuf> = Vec::new();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            let base = PathBuf::from(v);
            dirs.push(base.join("lib"));
            roots.extend(python_site_dirs(&base.join("lib")));
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        roots.extend(python_site_dirs(&PathBuf::from(home).join(".local/lib")));
    }
    roots.extend(python_site_dirs(Path::new("/usr/local/lib")));
    roots.extend(python_site_dirs(Path::new("/usr/lib")));
    roots.extend(python_site_dirs(Path::new("/opt/conda/lib")));
    roots.push(PathBuf::from("/usr/lib/python3/dist-packages"));
    for root in roots {
        let nv = root.join("nvidia");
        if let Ok(rd) = std::fs::read_dir(&nv) {
            let mut subs: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path().join("lib")))
                .collect();
            subs.sort();
            dirs.extend(subs);
        }
        dirs.push(root.join("torch/lib"));
    }
    dirs.retain(|d| d.is_dir());
    dirs.dedup();
    dirs
}

/// Directories with cuda_fp16.h, for NVRTC: our kernels need none (common.cuh defines
/// its own f16 conversions), but a kernel file that includes CUDA headers still compiles
/// where a toolkit or the nvidia-cuda-runtime wheel is installed.
pub fn cuda_include_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            dirs.push(PathBuf::from(v).join("include"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/include"));
    for lib in search_dirs() {
        // site-packages/nvidia/<pkg>/lib -> site-packages/nvidia/<pkg>/include
        if let Some(parent) = lib.parent() {
            dirs.push(parent.join("include"));
        }
    }
    dirs.retain(|d| d.join("cuda_fp16.h").is_file());
    dirs.dedup();
    dirs
}

/// `<lib>/python3*/{site,dist}-packages` under `lib`.
fn python_site_dirs(lib: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(lib) {
        for e in rd.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with("python3") {
                for sub in ["site-packages", "dist-packages"] {
                    let p = e.path().join(sub);
                    if p.is_dir() {
                        out.push(p);
                    }
                }
            }
        }
    }
    out.sort();
    out
}

/// dlopen by absolute path and keep the handle for the life of the process.
fn load_abs(path: &Path) -> bool {
    // SAFETY: loading a CUDA library runs its initialisers, which is what cudarc would do
    // a moment later through the soname.
    match unsafe { libloading::Library::new(path) } {
        Ok(lib) => {
            std::mem::forget(lib);
            true
        }
        Err(_) => false,
    }
}

/// In one directory, load `deps` then `main` for the first major version that has all.
fn load_group(dir: &Path, majors: &[&str], group: &[&str]) -> Option<PathBuf> {
    for major in majors {
        let Some(files) = group
            .iter()
            .map(|stem| find_versioned(dir, stem, major))
            .collect::<Option<Vec<PathBuf>>>()
        else {
            continue;
        };
        if files.iter().all(|f| load_abs(f)) {
            return files.last().cloned();
        }
    }
    None
}

/// `dir/{stem}.so.{major}` or, for nvrtc-builtins, `dir/{stem}.so.{major}.*`.
fn find_versioned(dir: &Path, stem: &str, major: &str) -> Option<PathBuf> {
    let exact = dir.join(format!("{stem}.so.{major}"));
    if exact.is_file() {
        return Some(exact);
    }
    let prefix = format!("{stem}.so.{major}.");
    let rd = std::fs::read_dir(dir).ok()?;
    let mut hits: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    hits.sort();
    hits.pop()
}

/// One line of the preload report: the library `name` preloaded from `found`, or missing.
fn preloaded(name: &str, found: Option<PathBuf>, missing: &str) -> String {
    match found {
        Some(p) => format!("{name}: preloaded {}", p.display()),
        None => format!("{name}: {missing}"),
    }
}

/// What the preload step did, for diagnostics.
pub fn preload_report() -> &'static str {
    preload()
}

/// Make the driver, NVRTC and cuBLAS loadable if they exist anywhere we know. Idempotent.
pub fn preload() -> &'static str {
    static REPORT: OnceLock<String> = OnceLock::new();
    REPORT.get_or_init(|| {
        let mut report = Vec::new();
        let dirs = search_dirs();
        let majors = ["13", "12"];
        // SAFETY: is_culib_present only tries dlopen on candidate sonames.
        let driver_ok = unsafe { cudarc::driver::sys::is_culib_present() };
        if !driver_ok {
            let found = dirs.iter().find_map(|d| {
                let p = d.join("libcuda.so.1");
                (p.is_file() && load_abs(&p)).then_some(p)
            });
            report.push(preloaded("driver", found, "libcuda.so.1 not found"));
        }
        type Present = unsafe fn() -> bool;
        let groups: [(&str, Present, [&str; 2]); 2] = [
            (
                "nvrtc",
                cudarc::nvrtc::sys::is_culib_present,
                ["libnvrtc-builtins", "libnvrtc"],
            ),
            (
                "cublas",
                cudarc::cublas::sys::is_culib_present,
                ["libcublasLt", "libcublas"],
            ),
        ];
        for (name, present, libs) in groups {
            // SAFETY: as above, is_culib_present only tries dlopen on candidate sonames.
            if !unsafe { present() } {
                let found = dirs.iter().find_map(|d| load_group(d, &majors, &libs));
                report.push(preloaded(name, found, "not found"));
            }
        }
        if report.is_empty() {
            "all CUDA libraries resolved by soname".to_string()
        } else {
            report.join("; ")
        }
    })
}

/// Is each library loadable now (after [`preload`])? Never panics.
pub fn driver_present() -> bool {
    preload();
    unsafe { cudarc::driver::sys::is_culib_present() }
}
pub fn nvrtc_present() -> bool {
    preload();
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}
pub fn cublas_present() -> bool {
    preload();
    unsafe { cudarc::cublas::sys::is_culib_present() }
}
