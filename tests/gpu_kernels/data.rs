//! Data movement, gathers, cuBLAS products, the allocator and the NVRTC path.

use std::time::Instant;

use fusebox::backend::cuda::{self, CudaStorage};
use fusebox::backend::{BackendStorage, CpuStorage, MatmulSpec};
use fusebox::DType;

use crate::common::*;

#[test]
fn layout_permute_narrow_cat() {
    let Some(mut rng) = setup("layout_permute_narrow_cat") else {
        return;
    };
    let cases: &[(&[usize], &[usize])] = &[
        (&[5], &[0]),
        (&[3, 7], &[1, 0]),
        (&[2, 5, 3], &[2, 0, 1]),
        (&[2, 9, 4, 8], &[0, 2, 1, 3]),
        (&[3, 5, 7, 2], &[3, 2, 1, 0]),
    ];
    for dt in DTS {
        for (dims, perm) in cases {
            let n = dims.iter().product();
            let (cx, gx) = pair(&rng.normal(n, 1.0), dt);
            let want = ok(cx.permute(dims, perm));
            let t = Instant::now();
            let got = ok(gx.permute(dims, perm));
            check(&format!("permute{perm:?}"), dims, dt, &got, &want, t);
            for dim in 0..dims.len() {
                let (start, len) = (
                    dims[dim] / 3,
                    dims[dim] - dims[dim] / 3 - usize::from(dims[dim] > 2),
                );
                let want = ok(cx.narrow(dims, dim, start, len));
                let t = Instant::now();
                let got = ok(gx.narrow(dims, dim, start, len));
                check(&format!("narrow_d{dim}"), dims, dt, &got, &want, t);
                let mut d2 = dims.to_vec();
                d2[dim] += 2;
                let n2: usize = d2.iter().product();
                let (cy, gy) = pair(&rng.normal(n2, 1.0), dt);
                let shapes = vec![dims.to_vec(), d2.clone(), dims.to_vec()];
                let want = ok(CpuStorage::cat(&[&cx, &cy, &cx], &shapes, dim));
                let t = Instant::now();
                let got = ok(CudaStorage::cat(&[&gx, &gy, &gx], &shapes, dim));
                check(&format!("cat_d{dim}"), dims, dt, &got, &want, t);
            }
        }
    }
}

#[test]
fn embedding_gather_scatter() {
    let Some(mut rng) = setup("embedding_gather_scatter") else {
        return;
    };
    for &(rows, cols, n_ids) in [(1usize, 1usize, 1usize), (50, 33, 77), (30_522, 768, 512)]
        .iter()
        .filter(|s| keep(s.0 * s.1))
    {
        for dt in DTS {
            let (ct, gt) = pair(&rng.normal(rows * cols, 1.0), dt);
            // Repeated ids on purpose: the scatter must add, not overwrite.
            let ids: Vec<i32> = (0..n_ids)
                .map(|i| (rng.next_u64() % rows as u64) as i32 * (i % 5 != 4) as i32)
                .collect();
            let cids = CpuStorage::from_i32(ids.clone());
            let gids = up(&cids);
            let want = ok(ct.index_select(&cids, cols));
            let t = Instant::now();
            let got = ok(gt.index_select(&gids, cols));
            check("index_select", &[n_ids, cols], dt, &got, &want, t);
            let (cd, gd) = pair(&rng.normal(n_ids * cols, 1.0), dt);
            let want = ok(cd.index_add(&cids, rows, cols, None));
            let t = Instant::now();
            let got = ok(gd.index_add(&gids, rows, cols, None));
            check("index_add", &[rows, cols], dt, &got, &want, t);
            // padding_idx: id 0 (a fifth of the positions and random hits) adds nothing.
            let want = ok(cd.index_add(&cids, rows, cols, Some(0)));
            let t = Instant::now();
            let got = ok(gd.index_add(&gids, rows, cols, Some(0)));
            check("index_add_skip", &[rows, cols], dt, &got, &want, t);
            // Bad ids are reported at the next read from the device (no sync per call).
            let bad = up(&CpuStorage::from_i32(vec![0, rows as i32]));
            let r = gt.index_select(&bad, cols).and_then(|o| o.to_vec_f32());
            assert!(r.is_err(), "out-of-range id must be an error");
        }
    }
}

#[test]
fn matmul_cublas() {
    let Some(mut rng) = setup("matmul_cublas") else {
        return;
    };
    let shapes = [
        (1usize, 1usize, 1usize, 1usize),
        (1, 7, 13, 5),
        (3, 64, 768, 96),
        (2, 33, 65, 17),
        (1, 512, 768, 3072),
    ];
    for &(batch, m, k, n) in shapes.iter().filter(|s| keep(s.0 * s.1 * s.3)) {
        for dt in DTS {
            for (ta, tb, bcast) in [
                (false, false, false),
                (true, false, false),
                (false, true, false),
                (true, true, false),
                (false, true, true),
            ] {
                let spec = MatmulSpec {
                    batch,
                    m,
                    n,
                    k,
                    trans_a: ta,
                    trans_b: tb,
                    stride_a: m * k,
                    stride_b: if bcast { 0 } else { k * n },
                };
                let (ca, ga) = pair(&rng.normal(batch * m * k, 1.0), dt);
                let (cb, gb) = pair(
                    &rng.normal(if bcast { k * n } else { batch * k * n }, 1.0),
                    dt,
                );
                let want = ok(ca.matmul(&cb, &spec));
                let t = Instant::now();
                let got = ok(ga.matmul(&gb, &spec));
                check(
                    &format!(
                        "matmul_t{}{}{}",
                        ta as u8,
                        tb as u8,
                        if bcast { "_bcast" } else { "" }
                    ),
                    &[batch, m, k, n],
                    dt,
                    &got,
                    &want,
                    t,
                );
            }
        }
    }
}

#[test]
fn allocator_counts_bytes() {
    let Some(_rng) = setup("allocator_counts_bytes") else {
        return;
    };
    let dev = fusebox::Device::Cuda(0);
    let before = fusebox::backend::tracker::live_bytes(dev);
    let t = Instant::now();
    let a = up(&CpuStorage::from_f32(vec![1.0; 1000]));
    let b = ok(a.cast(DType::F16));
    let live = fusebox::backend::tracker::live_bytes(dev) - before;
    drop((a, b));
    let after = fusebox::backend::tracker::live_bytes(dev) - before;
    let stats = ok(cuda::mem_stats(0));
    let pass = live == 6000 && after == 0 && stats.cached > 0;
    gpucheck(
        "allocator_tracker",
        &[1000],
        DType::F32,
        if pass { 0.0 } else { 1.0 },
        pass,
        t,
    );
    assert!(
        pass,
        "tracker live {live} (want 6000), after drop {after}, stats {stats:?}"
    );
}

/// NVML finds cuda:0 by its PCI address (NVML indices ignore CUDA_VISIBLE_DEVICES), and
/// what it reports in use covers at least what this process's allocator holds.
#[test]
fn nvml_finds_the_cuda_device() {
    let Some(_rng) = setup("nvml_finds_the_cuda_device") else {
        return;
    };
    let t = Instant::now();
    let id = ok(cuda::pci_bus_id(0));
    let a = up(&CpuStorage::from_f32(vec![1.0; 1 << 20]));
    let held = ok(cuda::mem_stats(0)).reserved;
    let used = fusebox::backend::cuda::nvml_used_bytes(0);
    drop(a);
    let pass = used.is_some_and(|u| u as usize >= held);
    gpucheck("nvml_by_pci_address", &[1], DType::F32, 0.0, pass, t);
    assert!(pass, "PCI {id}: NVML used {used:?}, allocator holds {held}");
}

/// The run-time compile path (no nvcc at build time) must build every kernel file. Needs
/// only libnvrtc, not a GPU, so it also runs on CI machines with the NVRTC wheel.
#[test]
fn nvrtc_compiles_every_kernel() {
    let ver = match cuda::context::nvrtc_version_checked() {
        Ok(v) => v,
        Err(e) => {
            println!("SKIP nvrtc_compiles_every_kernel: {e}");
            return;
        }
    };
    println!(
        "NVRTC {}.{}; this binary has {}",
        ver.0,
        ver.1,
        cuda::context::build_info()
    );
    for arch in [(7, 5), (8, 0), (9, 0)] {
        let t = Instant::now();
        let r = cuda::context::nvrtc_compile_all(arch);
        let pass = matches!(&r, Ok(v) if !v.is_empty() && v.iter().all(|(_, n)| *n > 0));
        gpucheck(
            &format!("nvrtc_compile_sm{}{}", arch.0, arch.1),
            &[r.as_ref().map(|v| v.len()).unwrap_or(0)],
            DType::F32,
            if pass { 0.0 } else { 1.0 },
            pass,
            t,
        );
        assert!(pass, "NVRTC compile for sm_{}{}: {r:?}", arch.0, arch.1);
    }
}
