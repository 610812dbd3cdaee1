//! The memory flags `train` and `bench` share (flattened into each one's arguments).

use fusebox::plan::budget_from_flags;
use fusebox::Result;

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
}
