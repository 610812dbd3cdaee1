//! Which SIMD path the CPU backend runs on this machine, found once at run time.
//!
//! The `gemm` crate picks its microkernels when it first runs: AVX-512 when the crate is
//! built with its `x86-v4` feature (fusebox's default feature `avx512`) and the CPU has
//! AVX-512F, else AVX2 + FMA, else scalar; NEON on aarch64. The backend's own vectorised
//! loops (`simd.rs`) dispatch on the same answer, so one name says what ran, and
//! `bench` prints it beside every figure. f32 results depend on the path (the GEMMs'
//! accumulation order differs), so a seed reproduces a run on the same path.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuPath {
    Avx512,
    Avx2,
    Neon,
    Scalar,
}

impl CpuPath {
    pub fn name(self) -> &'static str {
        match self {
            CpuPath::Avx512 => "AVX-512",
            CpuPath::Avx2 => "AVX2",
            CpuPath::Neon => "NEON",
            CpuPath::Scalar => "scalar",
        }
    }
}

/// The path this process runs (detected on the first call).
pub fn cpu_path() -> CpuPath {
    static PATH: OnceLock<CpuPath> = OnceLock::new();
    *PATH.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> CpuPath {
    let avx2 =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    if cfg!(feature = "avx512") && avx2 && std::arch::is_x86_feature_detected!("avx512f") {
        CpuPath::Avx512
    } else if avx2 {
        CpuPath::Avx2
    } else {
        CpuPath::Scalar
    }
}

#[cfg(target_arch = "aarch64")]
fn detect() -> CpuPath {
    if std::arch::is_aarch64_feature_detected!("neon") {
        CpuPath::Neon
    } else {
        CpuPath::Scalar
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect() -> CpuPath {
    CpuPath::Scalar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_matches_the_cpu_flags() {
        let p = cpu_path();
        assert_eq!(p, cpu_path(), "detected once, the same every call");
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = std::arch::is_x86_feature_detected!("avx512f");
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            let want = match (cfg!(feature = "avx512") && avx512 && avx2, avx2) {
                (true, _) => CpuPath::Avx512,
                (false, true) => CpuPath::Avx2,
                _ => CpuPath::Scalar,
            };
            assert_eq!(p, want);
        }
        assert!(["AVX-512", "AVX2", "NEON", "scalar"].contains(&p.name()));
        // CI runs this under `qemu-x86_64 -cpu Haswell` (an AVX2-only CPU) and says so.
        if let Ok(want) = std::env::var("FUSEBOX_EXPECT_CPU_PATH") {
            assert_eq!(p.name(), want, "FUSEBOX_EXPECT_CPU_PATH");
        }
    }
}
