//! The memory flags `train` and `bench` share (flattened into each one's arguments).

use fusebox::plan::{budget_from_flags, human, Plan};
use fusebox::shape::Target;
use fusebox::{Device, Result};

/// The memory flags `train` and `bench` share (flattened into each one's arguments).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct MemoryArgs {
    /// Activation checkpointing: recompute each layer's forward in backward instead of
    /// keeping its activations (less memory, about a third more compute).
    #[arg(long)]
    pub checkpointing: bool,
    /// Fit into this much device memory (15GiB, 16GB, 12000MiB or bytes): the largest
    /// micro-batch that fits, the accumulation steps that keep --batch (train), and
    /// checkpointing if even micro-batch 1 needs it; refuses with the breakdown when
    /// nothing fits.
    #[arg(long, value_name = "SIZE", conflicts_with = "gpu")]
    pub vram_budget: Option<String>,
    /// Fit into a card's memory: t4 (16 GB), a100 (40 GB), a100-80, h100 or h200.
    #[arg(long, value_name = "CARD")]
    pub gpu: Option<String>,
    /// Print the memory plan (predicted peak by component) and exit.
    #[arg(long)]
    pub plan: bool,
}

impl MemoryArgs {
    /// The budget these flags name, or None.
    pub fn budget(&self) -> Result<Option<usize>> {
        budget_from_flags(self.vram_budget.as_deref(), self.gpu.as_deref())
    }

    /// The backend the plan is for: CUDA on a CUDA device or for a named card (even
    /// when only planning here), else the CPU (fp16 included: the CPU's emulation).
    pub fn target(&self, device: Device) -> Target {
        if device.is_cuda() || self.gpu.is_some() {
            Target::Cuda
        } else {
            Target::Cpu
        }
    }
}

/// Bytes this machine can still hand out without swapping: `MemAvailable` in
/// /proc/meminfo (Linux). None where it cannot be read; the check below is then skipped.
pub fn available_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Refuse a CPU run whose predicted peak does not fit in the memory available, with the
/// plan's table, instead of letting an allocation abort the process later. `held`:
/// bytes of the plan the process holds already (weights loaded before the check), no
/// longer counted in MemAvailable. `what` says what was planned, `advice` what to change.
pub fn check_cpu_memory(plan: &Plan, held: usize, what: &str, advice: &str) -> anyhow::Result<()> {
    let Some(available) = available_memory() else {
        return Ok(());
    };
    let need = plan.peak_bytes.saturating_sub(held);
    if need > available {
        anyhow::bail!(
            "{what} needs {} of CPU memory (the memory plan's predicted peak{}), but this machine has {} available (MemAvailable in /proc/meminfo); {advice}\n{}",
            human(need),
            if held > 0 {
                format!(", less the {} already loaded", human(held))
            } else {
                String::new()
            },
            human(available),
            plan.table().trim_end()
        );
    }
    Ok(())
}
