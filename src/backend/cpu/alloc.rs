//! Large CPU buffers kept mapped and reused between training steps (Linux); small ones
//! from the system allocator.
//!
//! A training step allocates and frees the same activations and gradients, tens of
//! megabytes each, every step. glibc gives each a fresh `mmap` (or trims its heap after
//! it), so every step first-touches every 4 KiB page again: a page fault and a page
//! zeroed in the kernel each, and with several threads a TLB shootdown for each unmap.
//! Measured with `perf stat -e page-faults` on `bench --model distilbert-qa --device cpu
//! --batch 4 --seq 384`, that was about 100 000 faults per step. Buffers of [`LARGE`]
//! bytes or more are therefore mapped here, and when freed, kept (up to [`SLOTS`]
//! mappings and [`CACHE_BYTES`] bytes) for the next request of the same mapped length,
//! which the next step makes. A fresh mapping is zero; a reused one is zeroed by
//! `alloc_zeroed`. Mappings of 2 MiB or more start on a huge-page boundary and ask for
//! transparent huge pages (fewer TLB misses where the GEMMs pack their operands and the
//! optimizer streams its moments: DistilBERT-QA's CPU step about 3 % faster, benches/RESULTS.md
//! session 12). The bytes tensors hold, which the memory tracker counts, are not
//! changed by any of this; the process's resident size can exceed them by the cache.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;

/// The system allocator, with buffers of [`LARGE`] bytes or more mapped and reused.
pub struct ReuseLargeAlloc;

/// From this size a buffer is mapped on its own.
const LARGE: usize = 1 << 20;
const PAGE: usize = 4096;
/// Freed mappings kept at most, by count and by bytes.
const SLOTS: usize = 256;
const CACHE_BYTES: usize = 1 << 30;

fn is_large(l: &Layout) -> bool {
    cfg!(target_os = "linux") && l.size() >= LARGE && l.align() <= PAGE
}

fn mapped_len(size: usize) -> usize {
    size.div_ceil(PAGE) * PAGE
}

/// Freed mappings: (length, address); length 0 is an empty slot. Plus the bytes held.
struct Cache {
    slots: [(usize, usize); SLOTS],
    bytes: usize,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    slots: [(0, 0); SLOTS],
    bytes: 0,
});

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

fn take_cached(len: usize) -> Option<*mut u8> {
    let mut c = cache();
    let slot = c.slots.iter_mut().find(|(l, _)| *l == len)?;
    let p = slot.1;
    *slot = (0, 0);
    c.bytes -= len;
    Some(p as *mut u8)
}

fn put_cached(len: usize, p: *mut u8) -> bool {
    let mut c = cache();
    if c.bytes + len > CACHE_BYTES {
        return false;
    }
    match c.slots.iter_mut().find(|(l, _)| *l == 0) {
        Some(slot) => {
            *slot = (len, p as usize);
            c.bytes += len;
            true
        }
        None => false,
    }
}

/// Transparent huge pages' size on x86_64 and aarch64 (4 KiB base pages).
const HUGE: usize = 2 << 20;

#[cfg(target_os = "linux")]
unsafe fn mmap_anon(len: usize) -> *mut u8 {
    let p = libc::mmap(
        std::ptr::null_mut(),
        len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    );
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p as *mut u8
    }
}

/// A fresh mapping of `len` bytes. From [`HUGE`] bytes on it starts on a huge-page
/// boundary (a longer mapping, trimmed) and is offered to transparent huge pages
/// (`MADV_HUGEPAGE`, which kernels set to `madvise` honour), so the GEMMs' operand
/// packing and the optimizer's streams walk 2 MiB pages instead of 4 KiB ones. Where the
/// kernel declines, the mapping stays as it is.
#[cfg(target_os = "linux")]
unsafe fn map_fresh(len: usize) -> *mut u8 {
    if len < HUGE {
        return mmap_anon(len);
    }
    let raw = mmap_anon(len + HUGE);
    if raw.is_null() {
        return raw;
    }
    let head = raw.align_offset(HUGE);
    if head > 0 {
        libc::munmap(raw as *mut libc::c_void, head);
    }
    let p = raw.add(head);
    let tail = HUGE - head;
    if tail > 0 {
        libc::munmap(p.add(len) as *mut libc::c_void, tail);
    }
    libc::madvise(p as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    p
}

#[cfg(target_os = "linux")]
unsafe fn unmap(p: *mut u8, len: usize) {
    libc::munmap(p as *mut libc::c_void, len);
}

#[cfg(not(target_os = "linux"))]
unsafe fn map_fresh(_: usize) -> *mut u8 {
    unreachable!("is_large is false off Linux")
}

#[cfg(not(target_os = "linux"))]
unsafe fn unmap(_: *mut u8, _: usize) {
    unreachable!("is_large is false off Linux")
}

/// A mapping of `size` bytes, and whether it is known to be zero (a fresh one).
unsafe fn map(size: usize) -> (*mut u8, bool) {
    let len = mapped_len(size);
    match take_cached(len) {
        Some(p) => (p, false),
        None => (map_fresh(len), true),
    }
}

unsafe impl GlobalAlloc for ReuseLargeAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if is_large(&l) {
            map(l.size()).0
        } else {
            System.alloc(l)
        }
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if !is_large(&l) {
            return System.alloc_zeroed(l);
        }
        let (p, zero) = map(l.size());
        if !p.is_null() && !zero {
            std::ptr::write_bytes(p, 0, l.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if !is_large(&l) {
            return System.dealloc(p, l);
        }
        let len = mapped_len(l.size());
        if !put_cached(len, p) {
            unmap(p, len);
        }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align_unchecked(new_size, l.align());
        if !is_large(&l) && !is_large(&new) {
            return System.realloc(p, l, new_size);
        }
        if is_large(&l) && is_large(&new) && mapped_len(l.size()) == mapped_len(new_size) {
            return p;
        }
        let q = self.alloc(new);
        if !q.is_null() {
            std::ptr::copy_nonoverlapping(p, q, l.size().min(new_size));
            self.dealloc(p, l);
        }
        q
    }
}

#[cfg(test)]
mod tests {
    /// Large buffers (through the global allocator, which is this one): zeroed when
    /// asked, also when a freed mapping is reused; grown and shrunk across the
    /// threshold with their contents kept.
    #[test]
    fn large_buffers_round_trip() {
        let n = (super::LARGE / 4) * 3 + 17; // 3 × LARGE bytes and a bit, not page-sized
        let mut v: Vec<u32> = (0..n as u32).collect();
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
        // At least HUGE bytes: on Linux a mapping of its own, aligned for huge pages.
        if cfg!(target_os = "linux") {
            assert_eq!(v.as_ptr() as usize % super::HUGE, 0);
        }
        v.fill(7);
        drop(v);
        // The same mapped length again: reused (from any thread's free), and zeroed.
        let z = vec![0u32; n];
        assert!(z.iter().all(|&x| x == 0));
        // Grow from small to large one push at a time (realloc across the threshold).
        let mut g: Vec<u32> = Vec::new();
        for i in 0..(super::LARGE / 2) as u32 {
            g.push(i);
        }
        assert!(g.iter().enumerate().all(|(i, &x)| x == i as u32));
        g.truncate(10);
        g.shrink_to_fit();
        assert_eq!(g, (0..10).collect::<Vec<u32>>());
    }
}
