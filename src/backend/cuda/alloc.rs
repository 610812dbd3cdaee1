//! The caching device allocator: size-bucketed free lists over cuMemAlloc.
//!
//! Why it is built this way: cuMemAlloc/cuMemFree cost tens of microseconds and cuMemFree
//! synchronises the device, while a training step allocates and frees the same few
//! hundred sizes every iteration. Freed blocks go to a free list keyed by their rounded
//! size and are handed out again; stream order (one stream per device) makes reuse safe
//! without events. Sizes round up to 512 bytes below 1 MiB and to 2 MiB above, as in
//! PyTorch's allocator, so slightly different shapes share blocks. On an out-of-memory
//! error the cache is released and the allocation retried once. Tensor bytes (not the
//! rounded block size) go to `memory::tracker` so the VRAM planner is checked against
//! what tensors hold; the allocator keeps its own reserved/cached/peak figures.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Allocator statistics for one device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Bytes obtained from the driver and not yet returned.
    pub reserved: usize,
    /// Highest `reserved` seen.
    pub peak_reserved: usize,
    /// Bytes sitting in free lists.
    pub cached: usize,
    /// cuMemAlloc calls made.
    pub driver_allocs: usize,
    /// Allocations served from a free list.
    pub cache_hits: usize,
}

pub struct Allocator {
    ordinal: usize,
    free: HashMap<usize, Vec<u64>>,
    stats: AllocStats,
}

const SMALL: usize = 1 << 20;

/// The block size a request of `bytes` is served with.
pub fn round_size(bytes: usize) -> usize {
    if bytes <= SMALL {
        bytes.div_ceil(512).max(1) * 512
    } else {
        bytes.div_ceil(2 << 20) * (2 << 20)
    }
}

impl Allocator {
    pub fn new(ordinal: usize) -> Allocator {
        Allocator {
            ordinal,
            free: HashMap::new(),
            stats: AllocStats::default(),
        }
    }

    /// A block of at least `bytes` (caller binds the context first). Returns (ptr, size).
    pub fn alloc(&mut self, bytes: usize) -> Result<(u64, usize)> {
        if bytes == 0 {
            return Ok((0, 0));
        }
        let size = round_size(bytes);
        if let Some(p) = self.free.get_mut(&size).and_then(|v| v.pop()) {
            self.stats.cached -= size;
            self.stats.cache_hits += 1;
            return Ok((p, size));
        }
        // SAFETY: a plain device allocation in the current context.
        let first = unsafe { cudarc::driver::result::malloc_sync(size) };
        let ptr = match first {
            Ok(p) => p,
            Err(_) => {
                self.empty_cache();
                // SAFETY: as above.
                unsafe { cudarc::driver::result::malloc_sync(size) }.map_err(|e| {
                    Error::Cuda(format!(
                        "cuda:{}: out of memory allocating {} bytes ({} reserved by fusebox): {e:?}",
                        self.ordinal, size, self.stats.reserved
                    ))
                })?
            }
        };
        self.stats.driver_allocs += 1;
        self.stats.reserved += size;
        self.stats.peak_reserved = self.stats.peak_reserved.max(self.stats.reserved);
        Ok((ptr, size))
    }

    /// Return a block to its free list.
    pub fn release(&mut self, ptr: u64, size: usize) {
        if ptr == 0 || size == 0 {
            return;
        }
        self.stats.cached += size;
        self.free.entry(size).or_default().push(ptr);
    }

    /// Give every cached block back to the driver.
    pub fn empty_cache(&mut self) {
        for (size, ptrs) in self.free.drain() {
            for p in ptrs {
                // SAFETY: p came from malloc_sync and is in no tensor.
                let _ = unsafe { cudarc::driver::result::free_sync(p) };
                self.stats.reserved -= size;
                self.stats.cached -= size;
            }
        }
    }

    pub fn stats(&self) -> AllocStats {
        self.stats
    }

    /// Start a new `peak_reserved` measurement from what is reserved now.
    pub fn reset_peak(&mut self) {
        self.stats.peak_reserved = self.stats.reserved;
    }
}
