//! `--vram-budget` as a hard cap on CUDA (backend/cuda/cap.rs): on a card, the caching
//! allocator empties its cache when that makes room under the cap and refuses a request
//! past it with the cap's error (never a driver out-of-memory). The decision itself is
//! unit-tested on the CPU (cap.rs); this runs it through the allocator. Skips without a
//! CUDA device.

use fusebox::backend::cuda::{self, cap::MemoryCap};
use fusebox::plan::CUDA_FIXED;
use fusebox::shape::{DType, Device};
use fusebox::tensor::Tensor;
use fusebox::Error;

use super::lock;

#[test]
fn cuda_memory_cap_empties_the_cache_then_refuses_past_the_budget() {
    if !cuda::is_available() {
        eprintln!("skipping: no CUDA device");
        return;
    }
    let _l = lock();
    let dev = Device::Cuda(0);
    const MIB: usize = 1 << 20;
    cuda::empty_cache(0).expect("empty cache");
    let base = cuda::mem_stats(0).expect("stats").reserved;
    // Room for 64 MiB of blocks beyond what is held now.
    let cap = MemoryCap {
        budget: base + 64 * MIB + CUDA_FIXED,
        fixed: CUDA_FIXED,
        plan: "the test's plan: 64 MiB".into(),
    };
    cuda::set_memory_cap(0, Some(cap)).expect("cap");
    let f32s = |mib: usize| Tensor::zeros([mib * MIB / 4], DType::F32, dev);
    let a = f32s(40).expect("40 MiB fits");
    drop(a); // cached, still reserved
    assert_eq!(cuda::mem_stats(0).expect("stats").cached, 40 * MIB);
    // 48 MiB (another size class) fits only once the cached 40 MiB go back.
    let b = f32s(48).expect("48 MiB fits after the cache is emptied");
    let st = cuda::mem_stats(0).expect("stats");
    assert_eq!((st.cached, st.reserved), (0, base + 48 * MIB), "{st:?}");
    // 32 MiB more passes the cap: refused with the cap's error, nothing allocated.
    let e = f32s(32).expect_err("past the cap");
    let msg = e.to_string();
    cuda::set_memory_cap(0, None).expect("lift the cap");
    eprintln!("{msg}");
    assert!(matches!(e, Error::OverBudget(_)), "{e:?}");
    for want in ["32.0 MiB", "1 x 48.0 MiB", "the test's plan", "budget"] {
        assert!(msg.contains(want), "{want:?} missing: {msg}");
    }
    assert_eq!(cuda::mem_stats(0).expect("stats").reserved, base + 48 * MIB);
    // Without the cap the same request is served.
    let c = f32s(32).expect("no cap");
    drop((b, c));
}
