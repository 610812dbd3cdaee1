//! The hard memory cap on CUDA: with `--vram-budget` or `--gpu` on a CUDA device, the
//! caching allocator's reserved bytes plus the fixed costs the plan counts outside it
//! (CUDA context, cuBLAS workspace) never pass the budget, so a run on an 80 GB card
//! with `--gpu t4` shows that it fits a T4.
//!
//! Why a decision of its own: the allocator's calls into the driver cannot run without a
//! card, the decision can. Before the allocator asks the driver for a new block it asks
//! [`MemoryCap::verdict`]: the block fits under the cap as things stand; or it fits once
//! the cached (freed, kept for reuse) blocks are returned to the driver, which the
//! allocator then does (PyTorch's caching allocator frees its cache the same way before
//! it reports out of memory); or it does not fit even then, and the allocation fails
//! with [`MemoryCap::refusal`]: the request, the budget and the plan, and the biggest
//! holders of device memory (live blocks by size), never a driver out-of-memory error.

use std::collections::HashMap;

use super::alloc::AllocStats;
use crate::backend::tracker::human;
use crate::error::Error;

/// A budget for one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryCap {
    /// The budget `--vram-budget` / `--gpu` names (bytes).
    pub budget: usize,
    /// Bytes the plan counts outside the caching allocator (CUDA context, cuBLAS
    /// workspace): the allocator may reserve the budget less these.
    pub fixed: usize,
    /// The plan the run follows (its table), for the refusal.
    pub plan: String,
}

/// What the allocator does with a request for a new block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Ask the driver: reserved + block stays under the cap.
    Allocate,
    /// Return the cached blocks to the driver first; then it fits.
    EmptyCacheFirst,
    /// Past the cap even with the cache emptied: fail with [`MemoryCap::refusal`].
    Refuse,
}

impl MemoryCap {
    /// Bytes the allocator may hold reserved.
    pub fn limit(&self) -> usize {
        self.budget.saturating_sub(self.fixed)
    }

    /// The verdict on a new block of `block` bytes when the allocator holds `reserved`
    /// bytes from the driver, `cached` of them in its free lists.
    pub fn verdict(&self, reserved: usize, cached: usize, block: usize) -> Verdict {
        let limit = self.limit();
        if reserved.saturating_add(block) <= limit {
            Verdict::Allocate
        } else if reserved.saturating_sub(cached).saturating_add(block) <= limit {
            Verdict::EmptyCacheFirst
        } else {
            Verdict::Refuse
        }
    }

    /// The error of a refused request of `request` bytes (a `block`-byte block) on
    /// `cuda:ordinal`; `live` counts the blocks tensors hold, by size.
    pub fn refusal(
        &self,
        ordinal: usize,
        request: usize,
        block: usize,
        stats: &AllocStats,
        live: &HashMap<usize, usize>,
    ) -> Error {
        let in_use = stats.reserved - stats.cached;
        Error::OverBudget(format!(
            "cuda:{ordinal}: allocating {} (a {}-byte request, {} block) would pass the memory \
             budget {} (--vram-budget / --gpu): fusebox's allocator holds {} for tensors and \
             {} cached, and the plan counts {} outside it (CUDA context, cuBLAS workspace), \
             so it may hold at most {}.\nbiggest holders (live blocks): {}\nthe plan:\n{}",
            human(request),
            request,
            human(block),
            human(self.budget),
            human(in_use),
            human(stats.cached),
            human(self.fixed),
            human(self.limit()),
            holders(live, 6),
            self.plan.trim_end()
        ))
    }
}

/// The `n` block sizes holding the most bytes, as "count x size" (largest first).
fn holders(live: &HashMap<usize, usize>, n: usize) -> String {
    let mut by_bytes: Vec<(usize, usize)> = live
        .iter()
        .filter(|(_, &count)| count > 0)
        .map(|(&size, &count)| (size, count))
        .collect();
    by_bytes.sort_by_key(|&(size, count)| std::cmp::Reverse((size * count, size)));
    if by_bytes.is_empty() {
        return "none".into();
    }
    let total: usize = by_bytes.iter().map(|(s, c)| s * c).sum();
    let mut parts: Vec<String> = by_bytes
        .iter()
        .take(n)
        .map(|(size, count)| format!("{count} x {} = {}", human(*size), human(size * count)))
        .collect();
    if by_bytes.len() > n {
        let rest: usize = by_bytes[n..].iter().map(|(s, c)| s * c).sum();
        parts.push(format!(
            "{} in {} smaller sizes",
            human(rest),
            by_bytes.len() - n
        ));
    }
    format!("{} (in all {})", parts.join(", "), human(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn cap(budget: usize, fixed: usize) -> MemoryCap {
        MemoryCap {
            budget,
            fixed,
            plan: "memory plan: T5 ...\n  14.38 GiB  predicted peak\n".into(),
        }
    }

    fn stats(reserved: usize, cached: usize) -> AllocStats {
        AllocStats {
            reserved,
            cached,
            ..AllocStats::default()
        }
    }

    #[test]
    fn the_cap_is_the_budget_less_the_fixed_costs() {
        let c = cap(1000 * MIB, 482 * MIB);
        assert_eq!(c.limit(), 518 * MIB);
        // Up to the limit exactly: allocate.
        assert_eq!(c.verdict(500 * MIB, 0, 18 * MIB), Verdict::Allocate);
        assert_eq!(c.verdict(0, 0, 518 * MIB), Verdict::Allocate);
        // One byte past it with nothing cached: refuse.
        assert_eq!(c.verdict(500 * MIB, 0, 18 * MIB + 1), Verdict::Refuse);
        // Past it, but the cache holds enough: empty the cache, then allocate.
        assert_eq!(
            c.verdict(510 * MIB, 20 * MIB, 16 * MIB),
            Verdict::EmptyCacheFirst
        );
        assert_eq!(
            c.verdict(510 * MIB, 8 * MIB, 16 * MIB),
            Verdict::EmptyCacheFirst
        );
        // The cache is not enough: refuse.
        assert_eq!(c.verdict(510 * MIB, 7 * MIB, 16 * MIB), Verdict::Refuse);
        // Fixed costs past the budget leave nothing.
        let none = cap(100 * MIB, 482 * MIB);
        assert_eq!(none.limit(), 0);
        assert_eq!(none.verdict(0, 0, 512), Verdict::Refuse);
        // No overflow at the extremes.
        assert_eq!(c.verdict(usize::MAX, 0, 1), Verdict::Refuse);
    }

    #[test]
    fn a_refusal_names_the_request_the_budget_the_plan_and_the_holders() {
        let c = cap(1000 * MIB, 482 * MIB);
        let live = HashMap::from([(256 * MIB, 1), (64 * MIB, 3), (1024, 10), (2048, 0)]);
        let e = c.refusal(
            0,
            100 * MIB + 7,
            104 * MIB,
            &stats(500 * MIB, 40 * MIB),
            &live,
        );
        assert!(matches!(e, Error::OverBudget(_)), "{e:?}");
        let m = e.to_string();
        for want in [
            "cuda:0",
            "104857607-byte request",
            "104.0 MiB block",
            "budget 1000.0 MiB",
            "460.0 MiB for tensors",
            "40.0 MiB cached",
            "482.0 MiB outside it",
            "at most 518.0 MiB",
            "14.38 GiB  predicted peak",
        ] {
            assert!(m.contains(want), "{want:?} missing from: {m}");
        }
        // Largest holders first by bytes; empty size classes left out.
        let h = m
            .split("biggest holders (live blocks): ")
            .nth(1)
            .expect("holders");
        let (big, mid) = (h.find("1 x 256.0 MiB"), h.find("3 x 64.0 MiB = 192.0 MiB"));
        assert!(big.is_some() && mid.is_some() && big < mid, "{h}");
        assert!(
            h.contains("10 x 1.0 KiB") && !h.contains("0 x 2.0 KiB"),
            "{h}"
        );
        assert!(h.contains("in all 448.0 MiB"), "{h}");
        assert_eq!(holders(&HashMap::new(), 3), "none");
        let many: HashMap<usize, usize> = (1..=8).map(|i| (i * MIB, 1)).collect();
        assert!(holders(&many, 2).contains("21.0 MiB in 6 smaller sizes"));
    }
}
