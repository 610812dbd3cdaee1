//! The memory flags `train` and `bench` share (flattened into each one's arguments).

use fusebox::backend::cuda::cap::MemoryCap;
use fusebox::plan::{available_memory, budget_from_flags, human, Plan, CUDA_FIXED};
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

/// Refuse a CPU run whose predicted peak does not fit in the memory available (None
/// from [`available_memory`] skips the check), with the
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

/// On a CUDA device with a budget (--vram-budget / --gpu), make it a hard cap: the
/// allocator's reserved bytes plus the fixed costs the plan counts (CUDA context, cuBLAS
/// workspace) never pass it, and a request past it fails naming the plan.
pub fn cap_cuda(device: Device, budget: Option<usize>, plan: &Plan) -> Result<()> {
    if let (Device::Cuda(n), Some(budget)) = (device, budget) {
        let cap = MemoryCap {
            budget,
            fixed: CUDA_FIXED,
            plan: plan.table(),
        };
        fusebox::backend::cuda::set_memory_cap(n, Some(cap))?;
    }
    Ok(())
}
