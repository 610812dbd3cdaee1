//! Live and peak bytes of every storage allocation, per device.
//!
//! Every backend buffer registers its size here when created and releases it on drop,
//! so the VRAM planner's prediction can be checked against a measurement on any backend
//! (the CPU in CI). On CUDA the caching allocator reports the bytes handed to tensors,
//! not what it keeps cached (that is reported separately by the allocator).

use std::sync::atomic::{AtomicI64, Ordering};

use crate::shape::Device;

const SLOTS: usize = 9; // CPU + 8 CUDA ordinals

struct Counters {
    live: [AtomicI64; SLOTS],
    peak: [AtomicI64; SLOTS],
    allocs: [AtomicI64; SLOTS],
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicI64 = AtomicI64::new(0);

static COUNTERS: Counters = Counters {
    live: [ZERO; SLOTS],
    peak: [ZERO; SLOTS],
    allocs: [ZERO; SLOTS],
};

fn slot(device: Device) -> usize {
    match device {
        Device::Cpu | Device::Auto => 0,
        Device::Cuda(n) => 1 + n.min(SLOTS - 2),
    }
}

/// Record an allocation of `bytes` on `device`.
pub fn on_alloc(device: Device, bytes: usize) {
    let s = slot(device);
    let live = COUNTERS.live[s].fetch_add(bytes as i64, Ordering::Relaxed) + bytes as i64;
    COUNTERS.peak[s].fetch_max(live, Ordering::Relaxed);
    COUNTERS.allocs[s].fetch_add(1, Ordering::Relaxed);
}

/// Record that `bytes` on `device` were released.
pub fn on_free(device: Device, bytes: usize) {
    COUNTERS.live[slot(device)].fetch_sub(bytes as i64, Ordering::Relaxed);
}

/// Bytes currently held by tensors on `device`.
pub fn live_bytes(device: Device) -> usize {
    COUNTERS.live[slot(device)].load(Ordering::Relaxed).max(0) as usize
}

/// Highest live byte count since the last [`reset_peak`].
pub fn peak_bytes(device: Device) -> usize {
    COUNTERS.peak[slot(device)].load(Ordering::Relaxed).max(0) as usize
}

/// Number of allocations since start.
pub fn alloc_count(device: Device) -> usize {
    COUNTERS.allocs[slot(device)].load(Ordering::Relaxed).max(0) as usize
}

/// Start a new peak measurement from the current live bytes.
pub fn reset_peak(device: Device) {
    let s = slot(device);
    COUNTERS.peak[s].store(COUNTERS.live[s].load(Ordering::Relaxed), Ordering::Relaxed);
}

/// A snapshot for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemStats {
    pub live: usize,
    pub peak: usize,
}

pub fn stats(device: Device) -> MemStats {
    MemStats {
        live: live_bytes(device),
        peak: peak_bytes(device),
    }
}
