//! Elementwise ops, reductions, casts and in-place updates against the CPU backend.
//!
//! The elementwise kernels move 8-element chunks per thread (16-byte vectors), so the
//! sizes cover a multiple of 8 (whole vector chunks only), a tail chunk of 1..7
//! elements, and one case past 4096 blocks x 256 threads x 8 = 8_388_608 elements so
//! the chunk-stride loop turns over. Every CudaStorage is its own allocation (no
//! element-offset views), so the unaligned scalar path cannot be reached from here; the
//! emulator check (dev/cuda/emu/check_vec.inc) covers it.

use std::time::Instant;

use fusebox::backend::{BackendStorage, BinaryOp, CpuStorage, UnaryOp};
use fusebox::DType;
use half::f16;

use crate::common::*;
use crate::shared::UNARY_OPS;

#[test]
fn elementwise_binary_affine() {
    let Some(mut rng) = setup("elementwise_binary_affine") else {
        return;
    };
    for (n, dt) in cases_1d(&[1, 1000, 1005, 4097, 65_537, 8_388_621]) {
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

#[test]
fn activations_forward_backward() {
    let Some(mut rng) = setup("activations_forward_backward") else {
        return;
    };
    for (n, dt) in cases_1d(&[3, 1005, 4096, 30_001]) {
        let (cx, gx) = pair(&rng.normal(n, 2.0), dt);
        let (cd, gd) = pair(&rng.normal(n, 1.0), dt);
        for op in UNARY_OPS {
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
        for act in [
            UnaryOp::Gelu,
            UnaryOp::GeluNew,
            UnaryOp::Relu,
            UnaryOp::Silu,
        ] {
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

#[test]
fn dropout_matches_cpu_mask() {
    let Some(mut rng) = setup("dropout_matches_cpu_mask") else {
        return;
    };
    for (n, dt) in cases_1d(&[17, 4096, 100_003, 8_388_613]) {
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

#[test]
fn bias_and_reductions() {
    let Some(mut rng) = setup("bias_and_reductions") else {
        return;
    };
    for (rows, cols, dt) in cases_2d(&[(1, 1), (7, 13), (16, 6), (128, 768), (333, 97)]) {
        let (cx, gx) = pair(&rng.normal(rows * cols, 1.0), dt);
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
        // A plain sum cancels (the exact result can be near 0), so its rounding is
        // measured against Σ|x|, the sum's condition, not against the result.
        let l1: f64 = ok(cx.to_vec_f32()).iter().map(|v| v.abs() as f64).sum();
        let (g, w) = (
            ok(got.to_vec_f32())[0] as f64,
            ok(want.to_vec_f32())[0] as f64,
        );
        let err = if g.is_finite() {
            (g - w).abs() / l1.max(1e-30)
        } else {
            f64::INFINITY
        };
        let pass = err <= tol_of(dt) as f64;
        gpucheck("sum_all", &[rows, cols], dt, err, pass, t);
        assert!(
            pass,
            "sum_all {rows}x{cols} {dt}: error {err:.3e} of sum |x|"
        );
        let want = ok(cx.sum_sq());
        let t = Instant::now();
        let got = ok(gx.sum_sq());
        check("sum_sq", &[rows, cols], dt, &got, &want, t);
    }
}

#[test]
fn casts_fills_and_in_place() {
    let Some(mut rng) = setup("casts_fills_and_in_place") else {
        return;
    };
    for &n in [1usize, 999, 4096, 262_147].iter().filter(|&&n| keep(n)) {
        let x = rng.normal(n, 100.0);
        let g32 = up(&CpuStorage::from_f32(x.clone()));
        // f32 -> f16 -> f32 against the half crate (round to nearest even).
        let t = Instant::now();
        let h = ok(g32.cast(DType::F16));
        let want: Vec<f32> = x.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
        check_host("cast_f32_f16", &[n], DType::F16, &h, &want, t);
        let t = Instant::now();
        let back = ok(h.cast(DType::F32));
        check_host("cast_f16_f32", &[n], DType::F32, &back, &want, t);
        let t = Instant::now();
        let mut h2 = ok(g32.zeros_like_dev(n, DType::F16));
        ok(h2.copy_from_(&g32));
        check_host("copy_from_cast_f32_f16", &[n], DType::F16, &h2, &want, t);
        let t = Instant::now();
        let gi = ok(ok(g32.cast(DType::I32)).to_vec_i32());
        let wi = ok(ok(CpuStorage::from_f32(x.clone()).cast(DType::I32)).to_vec_i32());
        let same = gi == wi;
        check_that(
            "cast_f32_i32",
            &[n],
            DType::I32,
            same,
            t,
            format_args!("differs from the CPU"),
        );
        // clamp_i32 (QA positions to [0, S] on the device) on the same ints.
        let t = Instant::now();
        let ci = ok(CpuStorage::from_f32(x.clone()).cast(DType::I32));
        let gi = ok(g32.cast(DType::I32));
        let got = ok(ok(gi.clamp_i32(-1, 1)).to_vec_i32());
        let want = ok(ok(ci.clamp_i32(-1, 1)).to_vec_i32());
        let same = got == want && want.iter().all(|v| (-1..=1).contains(v));
        check_that(
            "clamp_i32",
            &[n],
            DType::I32,
            same,
            t,
            format_args!("differs from the CPU"),
        );
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
            check_host("full", &[n], dt, &f, &vec![2.5; n], t);
            let z = ok(gy.zeros_like_dev(n, dt));
            check_host("zeros", &[n], dt, &z, &vec![0.0; n], t);
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
            // The last element sits in the tail chunk when n % 8 != 0.
            v[n / 2] = 0.0;
            v[n - 1] = f32::INFINITY;
            let bad_last = ok(up(&host(&v, dt)).has_non_finite());
            let pass = !clean && bad && bad_nan && bad_last;
            check_that(
                "has_non_finite",
                &[n],
                dt,
                pass,
                t,
                format_args!("clean={clean} inf={bad} nan={bad_nan} last={bad_last}"),
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
