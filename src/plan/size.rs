//! Memory sizes for people and from people: `human`, `parse_size` (--vram-budget),
//! `gpu_memory` (--gpu) and the budget those flags name, and `available_memory` (this
//! machine's).

pub use crate::backend::tracker::human;
use crate::error::{Error, Result};

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;

/// The budget the command-line flags name: `--vram-budget SIZE` or `--gpu CARD` (the
/// binaries make them exclusive), or None.
pub fn budget_from_flags(vram_budget: Option<&str>, gpu: Option<&str>) -> Result<Option<usize>> {
    match (vram_budget, gpu) {
        (Some(s), _) => parse_size(s)
            .map(Some)
            .map_err(|e| Error::msg(format!("--vram-budget: {e}"))),
        (None, Some(g)) => gpu_memory(g).map(Some),
        (None, None) => Ok(None),
    }
}

/// Parse a size: plain bytes ("16000000000") or a number with a unit, decimal (KB, MB,
/// GB, TB) or binary (KiB, MiB, GiB, TiB), case-insensitive, e.g. "15GiB", "16GB",
/// "12000MiB", "1.5 GiB".
pub fn parse_size(s: &str) -> Result<usize> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (t[..split].trim(), t[split..].trim());
    let bad = || {
        Error::msg(format!(
            "{s:?} is not a memory size: expected a number of bytes or a number with a unit \
             (KB MB GB TB = powers of 1000; KiB MiB GiB TiB = powers of 1024), e.g. 15GiB"
        ))
    };
    let x: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => MIB as f64,
        "gib" => GIB as f64,
        "tib" => GIB as f64 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = x * mult;
    if !bytes.is_finite() || !(1.0..=1e18).contains(&bytes) {
        return Err(bad());
    }
    Ok(bytes as usize)
}

/// Memory of a named card as `nvidia-smi` reports its total (the CUDA context is a
/// separate component of the plan): t4 15360 MiB (16 GB card), a100 40960 MiB (40 GB),
/// a100-80 81920 MiB, h100 81559 MiB (80 GB HBM3), h200 143771 MiB (what `nvidia-smi`
/// printed on the lent H200, benches/RESULTS.md).
pub fn gpu_memory(name: &str) -> Result<usize> {
    match name.to_ascii_lowercase().as_str() {
        "t4" => Ok(15360 * MIB),
        "a100" | "a100-40" => Ok(40960 * MIB),
        "a100-80" => Ok(81920 * MIB),
        "h100" => Ok(81559 * MIB),
        "h200" => Ok(143771 * MIB),
        other => Err(Error::msg(format!(
            "--gpu {other:?}: expected t4, a100 (40 GB), a100-80, h100 or h200"
        ))),
    }
}

/// Bytes this machine can still hand out without swapping: `MemAvailable` in
/// /proc/meminfo (Linux). None where it cannot be read.
pub fn available_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
