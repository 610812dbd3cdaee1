//! Every CUDA op against the CPU reference backend, on fresh random inputs.
//!
//! Why it is built this way (docs/ARCHITECTURE.md, "Rules that keep it honest"): each op
//! runs at several shapes including odd sizes, in f32 and f16 storage, with every new device
//! buffer poisoned (0xFF bytes = NaN) before the kernel writes it, so an element a kernel
//! forgets fails. Errors are ‖out−ref‖/‖ref‖ with NaN never passing; bounds are 1e-5
//! (f32) and 1e-2 (f16). The f16 reference is the CPU op in f32 on the f16-rounded
//! inputs, so the bound measures the kernel, not the input rounding. Without a GPU every
//! test prints why it skipped and returns. Each check prints one `GPUCHECK` line that
//! tools/gpu_check.sh turns into the summary table. Seeds come from the clock (printed);
//! FUSEBOX_TEST_SEED=<n> replays one.
//!
//! Layout: common.rs (skip logic, inputs, checks), elementwise.rs, data.rs, nn.rs,
//! linear_lt.rs (linear with bias through the cuBLASLt epilogues), optim.rs (multi-tensor
//! AdamW vs per-tensor and CPU; deferred bad-id errors), adafactor.rs (multi-tensor
//! Adafactor vs per-tensor and CPU),
//! stability.rs (500 fp16 training steps of DistilBERT-QA and T5-small), sync.rs (uploads
//! without a stream sync, host-clamped QA positions, losses read after the step).

mod adafactor;
mod common;
mod data;
mod elementwise;
mod linear_lt;
mod nn;
mod optim;
/// tests/common: helpers shared with the CPU test crates.
#[path = "../common/mod.rs"]
mod shared;
mod stability;
mod sync;
