//! Live and peak bytes of every storage allocation, per device.
//!
//! Every backend buffer registers its size here when created and releases it on drop,
//! so the VRAM planner's prediction can be checked against a measurement on any backend
//! (the CPU in CI). On CUDA the caching allocator reports the bytes handed to tensors,
//! not what it keeps cached (that is reported separately by the allocator).
//!
//! The CPU and the first CUDA ordinals have lock-free counters; higher ordinals get
//! their own counters in a map (never merged with another device's). The meta device
//! counts per thread: a plan runs its step on one thread, and two plans on two threads
//! (tests, a binary search over micro-batches) must not see each other's bytes.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use crate::shape::Device;

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;

/// CPU + CUDA ordinals 0..FAST-1 with atomic counters.
const FAST: usize = 16;

struct Counters {
    live: AtomicI64,
    peak: AtomicI64,
    allocs: AtomicI64,
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: Counters = Counters {
    live: AtomicI64::new(0),
    peak: AtomicI64::new(0),
    allocs: AtomicI64::new(0),
};

static COUNTERS: [Counters; FAST + 1] = [ZERO; FAST + 1];
/// CUDA ordinals FAST and up (leaked once per ordinal, so references stay valid).
static HIGH: Mutex<BTreeMap<usize, &'static Counters>> = Mutex::new(BTreeMap::new());

thread_local! {
    /// Meta: (live, peak, allocs) of this thread.
    static META: [Cell<i64>; 3] = const { [Cell::new(0), Cell::new(0), Cell::new(0)] };
}

fn counters(device: Device) -> &'static Counters {
    match device {
        Device::Cpu | Device::Auto => &COUNTERS[0],
        Device::Cuda(n) if n < FAST => &COUNTERS[1 + n],
        Device::Cuda(n) => {
            let mut map = HIGH.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(n).or_insert_with(|| Box::leak(Box::new(ZERO)))
        }
        Device::Meta(_) => unreachable!("meta counts per thread"),
    }
}

/// Record an allocation of `bytes` on `device`.
pub fn on_alloc(device: Device, bytes: usize) {
    let b = bytes as i64;
    if let Device::Meta(_) = device {
        return META.with(|[live, peak, allocs]| {
            live.set(live.get() + b);
            peak.set(peak.get().max(live.get()));
            allocs.set(allocs.get() + 1);
        });
    }
    let c = counters(device);
    let live = c.live.fetch_add(b, Ordering::Relaxed) + b;
    c.peak.fetch_max(live, Ordering::Relaxed);
    c.allocs.fetch_add(1, Ordering::Relaxed);
}

/// Record that `bytes` on `device` were released.
pub fn on_free(device: Device, bytes: usize) {
    let b = bytes as i64;
    if let Device::Meta(_) = device {
        return META.with(|[live, _, _]| live.set(live.get() - b));
    }
    counters(device).live.fetch_sub(b, Ordering::Relaxed);
}

/// (live, peak, allocs) of `device`.
fn read(device: Device) -> [i64; 3] {
    if let Device::Meta(_) = device {
        return META.with(|m| [m[0].get(), m[1].get(), m[2].get()]);
    }
    let c = counters(device);
    [&c.live, &c.peak, &c.allocs].map(|a| a.load(Ordering::Relaxed))
}

/// Bytes currently held by tensors on `device`.
pub fn live_bytes(device: Device) -> usize {
    read(device)[0].max(0) as usize
}

/// Highest live byte count since the last [`reset_peak`].
pub fn peak_bytes(device: Device) -> usize {
    read(device)[1].max(0) as usize
}

/// Number of allocations since start.
pub fn alloc_count(device: Device) -> usize {
    read(device)[2].max(0) as usize
}

/// Start a new peak measurement from the current live bytes.
pub fn reset_peak(device: Device) {
    if let Device::Meta(_) = device {
        return META.with(|[live, peak, _]| peak.set(live.get()));
    }
    let c = counters(device);
    c.peak
        .store(c.live.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Bytes for people: KiB / MiB / GiB (two decimals for GiB, one below).
pub fn human(b: usize) -> String {
    let f = b as f64;
    if b >= GIB {
        format!("{:.2} GiB", f / GIB as f64)
    } else if b >= MIB {
        format!("{:.1} MiB", f / MIB as f64)
    } else if b >= 1024 {
        format!("{:.1} KiB", f / 1024.0)
    } else {
        format!("{b} B")
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::Target;

    #[test]
    fn high_ordinals_and_meta_threads_count_apart() {
        // Ordinals past the fast slots each get their own counters.
        on_alloc(Device::Cuda(20), 100);
        on_alloc(Device::Cuda(21), 7);
        assert_eq!(live_bytes(Device::Cuda(20)), 100);
        assert_eq!(live_bytes(Device::Cuda(21)), 7);
        on_free(Device::Cuda(20), 100);
        on_free(Device::Cuda(21), 7);
        assert_eq!(live_bytes(Device::Cuda(20)), 0);
        assert_eq!(peak_bytes(Device::Cuda(20)), 100);
        // Meta bytes are this thread's only.
        let meta = Device::Meta(Target::Cuda);
        on_alloc(meta, 64);
        let other = std::thread::spawn(move || {
            on_alloc(meta, 1);
            live_bytes(meta)
        })
        .join()
        .expect("thread");
        assert_eq!(other, 1);
        assert_eq!(live_bytes(meta), 64);
        reset_peak(meta);
        on_free(meta, 64);
        assert_eq!((live_bytes(meta), peak_bytes(meta)), (0, 64));
    }
}
