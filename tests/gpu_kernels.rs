//! Every CUDA op against the CPU reference backend, on fresh random inputs.
//!
//! Why it is built this way (DESIGN.md, "Rules that keep it honest"): each op runs at
//! several shapes including odd sizes, in f32 and f16 storage, with every new device
//! buffer poisoned (0xFF bytes = NaN) before the kernel writes it, so an element a kernel
//! forgets fails. Errors are ‖out−ref‖/‖ref‖ with NaN never passing; bounds are 1e-5
//! (f32) and 1e-2 (f16). The f16 reference is the CPU op in f32 on the f16-rounded
//! inputs, so the bound measures the kernel, not the input rounding. Without a GPU every
//! test prints why it skipped and returns. Each check prints one `GPUCHECK` line that
//! tools/gpu_check.sh turns into the summary table. Seeds come from the clock (printed);
//! FUSEBOX_TEST_SEED=<n> replays one.

use std::time::Instant;

use fusebox::backend::cuda::{self, CudaStorage};
use fusebox::backend::{
    AdamWStep, AttnSpec, BackendStorage, BinaryOp, CpuStorage, MatmulSpec, UnaryOp,
};
use fusebox::DType;
use half::f16;

mod gpu_common;
use gpu_common::*;

#[test]
fn elementwise_binary_affine() {
    let Some(mut rng) = setup("elementwise_binary_affine") else {
        return;
    };
    for &n in [1usize, 1000, 4097, 65_537].iter().filter(|&&n| keep(n)) {
        for dt in DTS {
            let a = rng.normal(n, 1.0);
            let b = rng
                .normal(n, 1.0)
                .iter()
                .map(|v| v + 3.0_f32.copysign(*v))
                .collect::<Vec<_>>();
            let (ca, ga) = pair(&a, dt);
            let (cb, gb) = pair(&b, dt);
            for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
                let want = ok(ca.binary(&cb, op));
                let t = Instant::now();
                let got = ok(ga.binary(&gb, op));
                check(&format!("binary_{op:?}"), &[n], dt, &got, &want, t);
            }
            let want = ok(ca.affine(1.5, -0.25));
            let t = Instant::now();
            let got = ok(ga.affine(1.5, -0.25));
            check("affine", &[n], dt, &got, &want, t);
        }
    }
}

#[test]
fn activations_forward_backward() {
    let Some(mut rng) = setup("activations_forward_backward") else {
        return;
    };
    let ops = [
        UnaryOp::Relu,
        UnaryOp::Gelu,
        UnaryOp::GeluNew,
        UnaryOp::Tanh,
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Sqr,
    ];
    for &n in [3usize, 4096, 30_001].iter().filter(|&&n| keep(n)) {
        for dt in DTS {
            let x = rng.normal(n, 2.0);
            let dy = rng.normal(n, 1.0);
            let (cx, gx) = pair(&x, dt);
            let (cd, gd) = pair(&dy, dt);
            for op in ops {
                let want = ok(cx.unary(op));
                let t = Instant::now();
                let got = ok(gx.unary(op));
                check(&format!("unary_{op:?}"), &[n], dt, &got, &want, t);
                let want = ok(cx.unary_backward(&cd, op));
                let t = Instant::now();
                let got = ok(gx.unary_backward(&gd, op));
                check(&format!("unary_bwd_{op:?}"), &[n], dt, &got, &want, t);
            }
            let (cl, gl) = pair(&rng.normal(n, 1.0), dt);
            for act in [UnaryOp::Gelu, UnaryOp::GeluNew, UnaryOp::Relu] {
                let want = ok(cx.gated(&cl, act));
                let t = Instant::now();
                let got = ok(gx.gated(&gl, act));
                check(&format!("gated_{act:?}"), &[n], dt, &got, &want, t);
                let (wg, wl) = ok(cx.gated_backward(&cl, &cd, act));
                let t = Instant::now();
                let (gg, glin) = ok(gx.gated_backward(&gl, &gd, act));
                check(&format!("gated_bwd_gate_{act:?}"), &[n], dt, &gg, &wg, t);
                check(&format!("gated_bwd_lin_{act:?}"), &[n], dt, &glin, &wl, t);
            }
        }
    }
}

#[test]
fn dropout_matches_cpu_mask() {
    let Some(mut rng) = setup("dropout_matches_cpu_mask") else {
        return;
    };
    for &n in [17usize, 100_003].iter().filter(|&&n| keep(n)) {
        for dt in DTS {
            let x = rng.normal(n, 1.0);
            let (cx, gx) = pair(&x, dt);
            for p in [0.0f32, 0.1, 0.5] {
                let seed = rng.next_u64();
                let want = ok(cx.dropout(p, seed));
                let t = Instant::now();
                let got = ok(gx.dropout(p, seed));
                check(&format!("dropout_p{p}"), &[n], dt, &got, &want, t);
                // The mask is the shared hash: kept elements are exactly x/(1-p).
                let g = ok(got.to_vec_f32());
                let kept = (0..n)
                    .filter(|&i| fusebox::backend::dropout_keep(seed, i as u64, p))
                    .count();
                let nz = g
                    .iter()
                    .zip(&x)
                    .filter(|(o, xi)| **o != 0.0 || **xi == 0.0)
                    .count();
                assert!(
                    nz.abs_diff(kept) <= n / 1000 + 1,
                    "dropout mask differs: {nz} vs {kept}"
                );
            }
        }
    }
}

#[test]
fn bias_and_reductions() {
    let Some(mut rng) = setup("bias_and_reductions") else {
        return;
    };
    for &(rows, cols) in [(1usize, 1usize), (7, 13), (128, 768), (333, 97)]
        .iter()
        .filter(|s| keep(s.0 * s.1))
    {
        for dt in DTS {
            let n = rows * cols;
            let (cx, gx) = pair(&rng.normal(n, 1.0), dt);
            let (cb, gb) = pair(&rng.normal(cols, 1.0), dt);
            let want = ok(cx.add_bias(&cb, cols));
            let t = Instant::now();
            let got = ok(gx.add_bias(&gb, cols));
            check("add_bias", &[rows, cols], dt, &got, &want, t);
            let want = ok(cx.sum_rows(cols));
            let t = Instant::now();
            let got = ok(gx.sum_rows(cols));
            check("sum_rows", &[rows, cols], dt, &got, &want, t);
            let want = ok(cx.sum_all());
            let t = Instant::now();
            let got = ok(gx.sum_all());
            check("sum_all", &[rows, cols], dt, &got, &want, t);
            let want = ok(cx.sum_sq());
            let t = Instant::now();
            let got = ok(gx.sum_sq());
            check("sum_sq", &[rows, cols], dt, &got, &want, t);
        }
    }
}

#[test]
fn casts_fills_and_in_place() {
    let Some(mut rng) = setup("casts_fills_and_in_place") else {
        return;
    };
    for &n in [1usize, 999, 262_147].iter().filter(|&&n| keep(n)) {
        let x = rng.normal(n, 100.0);
        let g32 = up(&CpuStorage::from_f32(x.clone()));
        // f32 -> f16 -> f32 against the half crate (round to nearest even).
        let t = Instant::now();
        let h = ok(g32.cast(DType::F16));
        let want: Vec<f32> = x.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
        check_vec(
            "cast_f32_f16",
            &[n],
            DType::F16,
            &ok(h.to_vec_f32()),
            &want,
            0.0,
            t,
        );
        let t = Instant::now();
        let back = ok(h.cast(DType::F32));
        check_vec(
            "cast_f16_f32",
            &[n],
            DType::F32,
            &ok(back.to_vec_f32()),
            &want,
            0.0,
            t,
        );
        let t = Instant::now();
        let mut h2 = ok(g32.zeros_like_dev(n, DType::F16));
        ok(h2.copy_from_(&g32));
        check_vec(
            "copy_from_cast_f32_f16",
            &[n],
            DType::F16,
            &ok(h2.to_vec_f32()),
            &want,
            0.0,
            t,
        );
        let t = Instant::now();
        let gi = ok(ok(g32.cast(DType::I32)).to_vec_i32());
        let wi = ok(ok(CpuStorage::from_f32(x.clone()).cast(DType::I32)).to_vec_i32());
        let same = gi == wi;
        gpucheck(
            "cast_f32_i32",
            &[n],
            DType::I32,
            if same { 0.0 } else { 1.0 },
            same,
            t,
        );
        assert!(same, "cast f32 -> i32 differs from the CPU");
        for dt in DTS {
            let (cy, gy) = pair(&rng.normal(n, 1.0), dt);
            let (cxx, gxx) = pair(&rng.normal(n, 1.0), dt);
            let (mut cy, mut gy) = (cy, gy);
            ok(cy.axpy_(&cxx, -0.75));
            let t = Instant::now();
            ok(gy.axpy_(&gxx, -0.75));
            check("axpy_", &[n], dt, &gy, &cy, t);
            ok(cy.scale_(0.125));
            let t = Instant::now();
            ok(gy.scale_(0.125));
            check("scale_", &[n], dt, &gy, &cy, t);
            let t = Instant::now();
            let f = ok(gy.full_like_dev(n, dt, 2.5));
            check_vec("full", &[n], dt, &ok(f.to_vec_f32()), &vec![2.5; n], 0.0, t);
            let z = ok(gy.zeros_like_dev(n, dt));
            check_vec(
                "zeros",
                &[n],
                dt,
                &ok(z.to_vec_f32()),
                &vec![0.0; n],
                0.0,
                t,
            );
            let t = Instant::now();
            let dup = ok(gy.duplicate());
            check("duplicate", &[n], dt, &dup, &cy, t);
            let mut d = ok(gy.zeros_like_dev(n, dt));
            let t = Instant::now();
            ok(d.copy_from_(&gy));
            check("copy_from_", &[n], dt, &d, &cy, t);
            let t = Instant::now();
            let clean = ok(gy.has_non_finite());
            let mut v = ok(gy.to_vec_f32());
            v[n / 2] = f32::INFINITY;
            let bad = ok(up(&host(&v, dt)).has_non_finite());
            v[n / 2] = f32::NAN;
            let bad_nan = ok(up(&host(&v, dt)).has_non_finite());
            let pass = !clean && bad && bad_nan;
            gpucheck(
                "has_non_finite",
                &[n],
                dt,
                if pass { 0.0 } else { 1.0 },
                pass,
                t,
            );
            assert!(
                pass,
                "has_non_finite: clean={clean} inf={bad} nan={bad_nan}"
            );
        }
        // Mixed-precision accumulation: f32 += f16.
        let (c32, mut g32) = pair(&rng.normal(n, 1.0), DType::F32);
        let (c16, g16) = pair(&rng.normal(n, 1.0), DType::F16);
        let mut c32 = c32;
        ok(c32.axpy_(&c16, 2.0));
        let t = Instant::now();
        ok(g32.axpy_(&g16, 2.0));
        check("axpy_f32_f16", &[n], DType::F32, &g32, &c32, t);
    }
}

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
            let want = ok(cd.index_add(&cids, rows, cols));
            let t = Instant::now();
            let got = ok(gd.index_add(&gids, rows, cols));
            check("index_add", &[rows, cols], dt, &got, &want, t);
            let bad = up(&CpuStorage::from_i32(vec![0, rows as i32]));
            assert!(
                gt.index_select(&bad, cols).is_err(),
                "out-of-range id must be an error"
            );
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
fn norms_forward_backward() {
    let Some(mut rng) = setup("norms_forward_backward") else {
        return;
    };
    for &(rows, cols) in [(1usize, 1usize), (5, 7), (64, 768), (257, 1000), (8, 4100)]
        .iter()
        .filter(|s| keep(s.0 * s.1))
    {
        for dt in DTS {
            let n = rows * cols;
            let (cx, gx) = pair(
                &rng.normal(n, 3.0)
                    .iter()
                    .map(|v| v + 1.0)
                    .collect::<Vec<_>>(),
                dt,
            );
            let (cg, gg) = pair(&rng.normal(cols, 1.0), dt);
            let (cb, gb) = pair(&rng.normal(cols, 1.0), dt);
            let (cd, gd) = pair(&rng.normal(n, 1.0), dt);
            let (wy, wm, wr) = ok(cx.layer_norm(&cg, &cb, cols, 1e-12));
            let t = Instant::now();
            let (y, m, r) = ok(gx.layer_norm(&gg, &gb, cols, 1e-12));
            let s = [rows, cols];
            check("layer_norm", &s, dt, &y, &wy, t);
            check("layer_norm_mean", &s, dt, &m, &wm, t);
            check("layer_norm_rstd", &s, dt, &r, &wr, t);
            let (wdx, wdg, wdb) = ok(cx.layer_norm_backward(&cg, &wm, &wr, &cd, cols));
            let t = Instant::now();
            let (dx, dg, db) = ok(gx.layer_norm_backward(&gg, &m, &r, &gd, cols));
            check("layer_norm_bwd_dx", &s, dt, &dx, &wdx, t);
            check("layer_norm_bwd_dgamma", &s, dt, &dg, &wdg, t);
            check("layer_norm_bwd_dbeta", &s, dt, &db, &wdb, t);
            let (wy, wr) = ok(cx.rms_norm(&cg, cols, 1e-6));
            let t = Instant::now();
            let (y, r) = ok(gx.rms_norm(&gg, cols, 1e-6));
            check("rms_norm", &s, dt, &y, &wy, t);
            check("rms_norm_rstd", &s, dt, &r, &wr, t);
            let (wdx, wdg) = ok(cx.rms_norm_backward(&cg, &wr, &cd, cols));
            let t = Instant::now();
            let (dx, dg) = ok(gx.rms_norm_backward(&gg, &r, &gd, cols));
            check("rms_norm_bwd_dx", &s, dt, &dx, &wdx, t);
            check("rms_norm_bwd_dgamma", &s, dt, &dg, &wdg, t);
        }
    }
}

#[test]
fn softmax_family_and_cross_entropy() {
    let Some(mut rng) = setup("softmax_family_and_cross_entropy") else {
        return;
    };
    for &(rows, cols) in [(1usize, 1usize), (3, 5), (64, 384), (37, 32_128)]
        .iter()
        .filter(|s| keep(s.0 * s.1))
    {
        for dt in DTS {
            let n = rows * cols;
            let s = [rows, cols];
            let (cx, gx) = pair(&rng.normal(n, 4.0), dt);
            let (cd, gd) = pair(&rng.normal(n, 1.0), dt);
            let wy = ok(cx.softmax(cols));
            let t = Instant::now();
            let y = ok(gx.softmax(cols));
            check("softmax", &s, dt, &y, &wy, t);
            let want = ok(wy.softmax_backward(&cd, cols));
            let t = Instant::now();
            let got = ok(y.softmax_backward(&gd, cols));
            check("softmax_bwd", &s, dt, &got, &want, t);
            let want = ok(cx.log_softmax(cols));
            let t = Instant::now();
            let got = ok(gx.log_softmax(cols));
            check("log_softmax", &s, dt, &got, &want, t);
            let tg: Vec<i32> = (0..rows)
                .map(|r| {
                    if r % 4 == 3 {
                        -100
                    } else {
                        (rng.next_u64() % cols as u64) as i32
                    }
                })
                .collect();
            let ct = CpuStorage::from_i32(tg.clone());
            let gt = up(&ct);
            let (wl, wlse) = ok(cx.cross_entropy(&ct, cols, -100));
            let t = Instant::now();
            let (l, lse) = ok(gx.cross_entropy(&gt, cols, -100));
            check("cross_entropy_loss", &s, dt, &l, &wl, t);
            check("cross_entropy_lse", &s, dt, &lse, &wlse, t);
            let (cdl, gdl) = pair(&[0.7], dt);
            let want = ok(cx.cross_entropy_backward(&ct, &wlse, &cdl, cols, -100));
            let t = Instant::now();
            let got = ok(gx.cross_entropy_backward(&gt, &lse, &gdl, cols, -100));
            check("cross_entropy_bwd", &s, dt, &got, &want, t);
            let want = ok(ok(cx.argmax_last(cols)).to_vec_i32());
            let t = Instant::now();
            let got = ok(ok(gx.argmax_last(cols)).to_vec_i32());
            let same = got == want;
            gpucheck("argmax_last", &s, dt, if same { 0.0 } else { 1.0 }, same, t);
            assert!(same, "argmax_last differs: {got:?} vs {want:?}");
        }
        // All targets ignored: loss 0, zero gradient.
        let (cx, gx) = pair(&rng.normal(rows * cols, 1.0), DType::F32);
        let ig = CpuStorage::from_i32(vec![-100; rows]);
        let (wl, _) = ok(cx.cross_entropy(&ig, cols, -100));
        let t = Instant::now();
        let (l, _) = ok(gx.cross_entropy(&up(&ig), cols, -100));
        check(
            "cross_entropy_all_ignored",
            &[rows, cols],
            DType::F32,
            &l,
            &wl,
            t,
        );
    }
}

#[test]
fn adamw_mixed_precision() {
    let Some(mut rng) = setup("adamw_mixed_precision") else {
        return;
    };
    for &n in [1usize, 1001, 590_000].iter().filter(|&&n| keep(n)) {
        for gdt in DTS {
            let hp = AdamWStep {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
                step: 3,
                grad_scale: 1.0 / 1024.0,
            };
            let p0 = rng.normal(n, 1.0);
            let g = rng.normal(n, 1024.0);
            let m0 = rng.normal(n, 0.01);
            let v0: Vec<f32> = rng.normal(n, 0.01).iter().map(|x| x * x).collect();
            let (mut cp, mut gp) = pair(&p0, DType::F32);
            let (mut cm, mut gm) = pair(&m0, DType::F32);
            let (mut cv, mut gv) = pair(&v0, DType::F32);
            let (cg, gg) = pair(&g, gdt);
            let mut work = ok(gp.zeros_like_dev(n, DType::F16));
            assert!(!ok(cp.adamw_(&cg, &mut cm, &mut cv, None, &hp)));
            let t = Instant::now();
            let skipped = ok(gp.adamw_(&gg, &mut gm, &mut gv, Some(&mut work), &hp));
            assert!(!skipped, "a finite gradient must not skip the step");
            check("adamw_param", &[n], gdt, &gp, &cp, t);
            check("adamw_m", &[n], gdt, &gm, &cm, t);
            check("adamw_v", &[n], gdt, &gv, &cv, t);
            check("adamw_working_f16", &[n], DType::F16, &work, &cp, t);
            // An inf in the scaled gradient: nothing changes, and the skip is reported.
            let mut gbad = g.clone();
            gbad[n - 1] = f32::INFINITY;
            let gb = up(&host(&gbad, gdt));
            let before = ok(gp.to_vec_f32());
            let t = Instant::now();
            let skipped = ok(gp.adamw_(&gb, &mut gm, &mut gv, Some(&mut work), &hp));
            let after = ok(gp.to_vec_f32());
            let pass = skipped && before == after;
            gpucheck(
                "adamw_overflow_skip",
                &[n],
                gdt,
                if pass { 0.0 } else { 1.0 },
                pass,
                t,
            );
            assert!(
                pass,
                "overflowing step: skipped={skipped}, params unchanged={}",
                before == after
            );
        }
    }
}

#[test]
fn attention_naive_forward_backward() {
    let Some(mut rng) = setup("attention_naive_forward_backward") else {
        return;
    };
    // (b, h, lq, lk, d, causal, mask, bias, scale)
    let cases = [
        (
            1usize, 1usize, 1usize, 1usize, 8usize, false, false, false, 1.0f32,
        ),
        (2, 3, 5, 7, 16, false, true, true, 1.0),
        (2, 4, 33, 33, 64, true, true, false, 0.125),
        (1, 2, 17, 40, 64, true, false, true, 1.0),
        (3, 12, 128, 128, 64, false, true, false, 0.125),
    ];
    for &(b, h, lq, lk, d, causal, mask, bias, scale) in
        cases.iter().filter(|c| keep(c.0 * c.1 * c.2 * c.3))
    {
        for dt in DTS {
            let sp = AttnSpec {
                b,
                h,
                lq,
                lk,
                d,
                scale,
                causal,
            };
            let shape = [b, h, lq, lk, d];
            let (cq, gq) = pair(&rng.normal(b * lq * h * d, 1.0), dt);
            let (ck, gk) = pair(&rng.normal(b * lk * h * d, 1.0), dt);
            let (cv, gv) = pair(&rng.normal(b * lk * h * d, 1.0), dt);
            let (cdo, gdo) = pair(&rng.normal(b * lq * h * d, 1.0), dt);
            // Mask out a tail of keys per batch; batch 0 of the 2nd case loses all keys.
            let mvec: Vec<i32> = (0..b * lk)
                .map(|i| ((i % lk) < lk - (i / lk) % 3 && !(lq == 5 && i < lk)) as i32)
                .collect();
            let cmask = mask.then(|| CpuStorage::from_i32(mvec.clone()));
            let gmask = cmask.as_ref().map(up);
            let bvec = rng.normal(h * lq * lk, 1.0);
            let (cb, gb) = pair(&bvec, dt);
            let (cb, gb) = if bias {
                (Some(cb), Some(gb))
            } else {
                (None, None)
            };
            let (wo, wl) = ok(cq.attention(&ck, &cv, cmask.as_ref(), cb.as_ref(), &sp));
            let t = Instant::now();
            let (o, l) = ok(gq.attention(&gk, &gv, gmask.as_ref(), gb.as_ref(), &sp));
            check("attn_naive_fwd_out", &shape, dt, &o, &wo, t);
            check_lse("attn_naive_fwd_lse", &shape, dt, &l, &wl, t);
            let (wdq, wdk, wdv, wdb) = ok(cq.attention_backward(
                &ck,
                &cv,
                &wo,
                &wl,
                &cdo,
                cmask.as_ref(),
                cb.as_ref(),
                &sp,
            ));
            let t = Instant::now();
            let (dq, dk, dv, db) =
                ok(gq.attention_backward(&gk, &gv, &o, &l, &gdo, gmask.as_ref(), gb.as_ref(), &sp));
            check("attn_naive_bwd_dq", &shape, dt, &dq, &wdq, t);
            check("attn_naive_bwd_dk", &shape, dt, &dk, &wdk, t);
            check("attn_naive_bwd_dv", &shape, dt, &dv, &wdv, t);
            match (db, wdb) {
                (Some(g), Some(w)) => check("attn_naive_bwd_dbias", &shape, dt, &g, &w, t),
                (None, None) => {}
                (g, w) => panic!(
                    "dbias presence differs: gpu {} cpu {}",
                    g.is_some(),
                    w.is_some()
                ),
            }
        }
    }
}

#[test]
fn span_search_top_k() {
    let Some(mut rng) = setup("span_search_top_k") else {
        return;
    };
    for &(rows, cols, max_len, top_k) in &[
        (1usize, 8usize, 3usize, 5usize),
        (4, 384, 30, 20),
        (3, 77, 100, 32),
    ] {
        for dt in DTS {
            let n = rows * cols;
            let (cs, gs) = pair(&rng.normal(n, 3.0), dt);
            let (ce, ge) = pair(&rng.normal(n, 3.0), dt);
            // Question tokens and padding are not allowed; CLS (0) is not a span either.
            let allowed: Vec<i32> = (0..n)
                .map(|i| (i % cols > cols / 5 && i % cols < cols - cols / 7) as i32)
                .collect();
            let ca = CpuStorage::from_i32(allowed);
            let ga = up(&ca);
            let want = ok(cs.span_search(&ce, &ca, cols, max_len, top_k));
            let t = Instant::now();
            let got = ok(gs.span_search(&ge, &ga, cols, max_len, top_k));
            let tol = tol_of(dt);
            let same_spans = got.len() == want.len()
                && got.iter().zip(&want).all(|(g, w)| {
                    g.row == w.row
                        && ((g.start, g.end) == (w.start, w.end)
                            || (g.score - w.score).abs() <= tol * w.score.abs())
                });
            let gs_: Vec<f32> = got.iter().map(|c| c.score).collect();
            let ws_: Vec<f32> = want.iter().map(|c| c.score).collect();
            let err = if gs_.len() == ws_.len() {
                rel_err(&gs_, &ws_)
            } else {
                f64::INFINITY
            };
            let pass = same_spans && err <= tol as f64;
            gpucheck(
                "span_search",
                &[rows, cols, max_len, top_k],
                dt,
                err,
                pass,
                t,
            );
            assert!(
                pass,
                "span_search differs (err {err}):\n gpu {got:?}\n cpu {want:?}"
            );
        }
    }
}

#[test]
fn allocator_counts_bytes() {
    let Some(_rng) = setup("allocator_counts_bytes") else {
        return;
    };
    let dev = fusebox::Device::Cuda(0);
    let before = fusebox::memory::tracker::live_bytes(dev);
    let t = Instant::now();
    let a = up(&CpuStorage::from_f32(vec![1.0; 1000]));
    let b = ok(a.cast(DType::F16));
    let live = fusebox::memory::tracker::live_bytes(dev) - before;
    drop((a, b));
    let after = fusebox::memory::tracker::live_bytes(dev) - before;
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
