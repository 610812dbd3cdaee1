//! Norms, softmax/cross-entropy, AdamW, attention and span search against the CPU backend.

use std::time::Instant;

use fusebox::backend::cuda::{self, CudaStorage};
use fusebox::backend::{
    AdamWState, AdamWStep, AttnArgs, AttnSaved, AttnSpec, BackendStorage, CpuStorage, ResidualNorm,
};
use fusebox::DType;

use crate::common::*;

#[test]
fn norms_forward_backward() {
    let Some(mut rng) = setup("norms_forward_backward") else {
        return;
    };
    for (rows, cols, dt) in cases_2d(&[(1, 1), (5, 7), (64, 768), (257, 1000), (8, 4100)]) {
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
        // With one column dx = rstd·(g − mean g) is 0 times rstd = 1/√eps = 1e6:
        // one ulp of difference in mean(g) becomes 0.1, on any implementation.
        if cols > 1 {
            check("layer_norm_bwd_dx", &s, dt, &dx, &wdx, t);
        } else {
            assert!(
                ok(dx.to_vec_f32()).iter().all(|v| v.is_finite()),
                "layer_norm dx finite"
            );
        }
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

/// The fused `LayerNorm(dropout(a) + res)` kernels against the CPU running dropout, add
/// and LayerNorm in sequence (what the op is defined as), with and without dropout, at a
/// width with a scalar tail and at vector widths.
#[test]
fn dropout_add_layer_norm_matches_the_unfused_ops() {
    let Some(mut rng) = setup("dropout_add_layer_norm_matches_the_unfused_ops") else {
        return;
    };
    use fusebox::backend::BinaryOp;
    for (rows, cols, dt) in cases_2d(&[(5, 7), (64, 768), (37, 1000), (3, 4104)]) {
        for p in [0.0f32, 0.1] {
            let n = rows * cols;
            let sh = [rows, cols];
            let seed = 0x5eed_0000 + rows as u64;
            let (ca, ga) = pair(&rng.normal(n, 2.0), dt);
            let (cr, gr) = pair(&rng.normal(n, 1.0), dt);
            let (cg, gg) = pair(&rng.normal(cols, 1.0), dt);
            let (cb, gb) = pair(&rng.normal(cols, 1.0), dt);
            let (cd, gd) = pair(&rng.normal(n, 1.0), dt);
            let cdrop = if p > 0.0 {
                ok(ca.dropout(p, seed))
            } else {
                ok(ca.duplicate())
            };
            let ws = ok(cdrop.binary(&cr, BinaryOp::Add));
            let (wy, wm, wr) = ok(ws.layer_norm(&cg, &cb, cols, 1e-12));
            let t = Instant::now();
            let rn = ResidualNorm {
                cols,
                eps: 1e-12,
                p,
                seed,
            };
            let (y, s, m, r) = ok(ga.dropout_add_layer_norm(&gr, &gg, &gb, rn));
            let name = if p > 0.0 { "dropout_add_ln" } else { "add_ln" };
            check(&format!("{name}_sum"), &sh, dt, &s, &ws, t);
            check(&format!("{name}_y"), &sh, dt, &y, &wy, t);
            check(&format!("{name}_mean"), &sh, dt, &m, &wm, t);
            check(&format!("{name}_rstd"), &sh, dt, &r, &wr, t);
            let (wds, wdg, wdb) = ok(ws.layer_norm_backward(&cg, &wm, &wr, &cd, cols));
            let t = Instant::now();
            let (ds, da, dg, db) = ok(s.dropout_add_layer_norm_backward(&gg, &m, &r, &gd, rn));
            check(&format!("{name}_bwd_ds"), &sh, dt, &ds, &wds, t);
            match da {
                Some(da) => {
                    let wda = ok(wds.dropout(p, seed));
                    check(&format!("{name}_bwd_da"), &sh, dt, &da, &wda, t);
                }
                None => assert_eq!(p, 0.0, "{name}: no separate da only without dropout"),
            }
            check(&format!("{name}_bwd_dgamma"), &sh, dt, &dg, &wdg, t);
            check(&format!("{name}_bwd_dbeta"), &sh, dt, &db, &wdb, t);
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
            // The loss and its gradient are f32 whatever the logits' dtype.
            let (cdl, gdl) = pair(&[0.7], DType::F32);
            let want = ok(cx.cross_entropy_backward(&ct, &wlse, &cdl, cols, -100));
            let t = Instant::now();
            let got = ok(gx.cross_entropy_backward(&gt, &lse, &gdl, cols, -100));
            check("cross_entropy_bwd", &s, dt, &got, &want, t);
            let want = ok(ok(cx.argmax_last(cols)).to_vec_i32());
            let t = Instant::now();
            let got = ok(ok(gx.argmax_last(cols)).to_vec_i32());
            let why = format_args!("{got:?} vs {want:?}");
            check_that("argmax_last", &s, dt, got == want, t, why);
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
                check_finite: true,
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
            assert!(!ok(cp.adamw_(
                &cg,
                AdamWState::new(&mut cm, &mut cv, None),
                &hp
            )));
            let t = Instant::now();
            let skipped =
                ok(gp.adamw_(&gg, AdamWState::new(&mut gm, &mut gv, Some(&mut work)), &hp));
            assert!(!skipped, "a finite gradient must not skip the step");
            check("adamw_param", &[n], gdt, &gp, &cp, t);
            check("adamw_m", &[n], gdt, &gm, &cm, t);
            check("adamw_v", &[n], gdt, &gv, &cv, t);
            check("adamw_working_f16", &[n], DType::F16, &work, &cp, t);
            // The unchecked path (the optimizer checked every gradient at once): the same
            // update, from fresh copies of the same state.
            {
                let unchecked = AdamWStep {
                    check_finite: false,
                    ..hp
                };
                let (mut cp2, mut gp2) = pair(&p0, DType::F32);
                let (mut cm2, mut gm2) = pair(&m0, DType::F32);
                let (mut cv2, mut gv2) = pair(&v0, DType::F32);
                assert!(!ok(cp2.adamw_(
                    &cg,
                    AdamWState::new(&mut cm2, &mut cv2, None),
                    &unchecked
                )));
                let t = Instant::now();
                assert!(!ok(gp2.adamw_(
                    &gg,
                    AdamWState::new(&mut gm2, &mut gv2, None),
                    &unchecked
                )));
                check("adamw_unchecked_param", &[n], gdt, &gp2, &cp2, t);
                check("adamw_unchecked_v", &[n], gdt, &gv2, &cv2, t);
            }
            // An inf in the scaled gradient: nothing changes, and the skip is reported.
            let mut gbad = g.clone();
            gbad[n - 1] = f32::INFINITY;
            let gb = up(&host(&gbad, gdt));
            let before = ok(gp.to_vec_f32());
            let t = Instant::now();
            let skipped =
                ok(gp.adamw_(&gb, AdamWState::new(&mut gm, &mut gv, Some(&mut work)), &hp));
            let after = ok(gp.to_vec_f32());
            let pass = skipped && before == after;
            check_that(
                "adamw_overflow_skip",
                &[n],
                gdt,
                pass,
                t,
                format_args!("skipped={skipped}, params unchanged={}", before == after),
            );
        }
    }
}

/// The CUDA attention paths to run for a case, with their check-name tags: the fused
/// kernels take f16 with head dim 32/64/128, so both paths run there, the naive elsewhere;
/// head dim 64 also runs the 128-key backward (fb_attn_bwd_f16_k128).
fn attn_impls(dt: DType, d: usize, dropout: f32) -> Vec<(cuda::AttnImpl, cuda::BwdTile, String)> {
    use cuda::{AttnImpl, BwdTile};
    let fused = dt == DType::F16 && matches!(d, 32 | 64 | 128);
    let mut v = vec![(AttnImpl::Naive, BwdTile::K64, "naive")];
    if fused {
        v.push((AttnImpl::Fused, BwdTile::K64, "fused"));
    }
    if fused && d == 64 {
        v.push((AttnImpl::Fused, BwdTile::K128, "fused_k128"));
    }
    v.into_iter()
        .map(|(w, tile, name)| {
            let tag = if dropout > 0.0 {
                format!("{name}_dropout")
            } else {
                name.to_string()
            };
            (w, tile, tag)
        })
        .collect()
}

/// Selects one attention path for the CUDA calls that follow, until the returned guard
/// drops (also when a check panics: later tests must not inherit a forced path).
#[must_use]
fn use_attn(which: cuda::AttnImpl, tile: cuda::BwdTile) -> AttnGuard {
    cuda::set_attention_impl(which);
    cuda::set_backward_tile(tile);
    AttnGuard
}

struct AttnGuard;

impl Drop for AttnGuard {
    fn drop(&mut self) {
        cuda::set_attention_impl(cuda::AttnImpl::Auto);
        cuda::set_backward_tile(cuda::BwdTile::K64);
    }
}

/// The optional key mask (`[b, lk]`) and T5 bias (`[h, lq, lk]`) of one case, on the
/// CPU (the reference) and on the device.
struct MaskBias {
    cmask: Option<CpuStorage>,
    gmask: Option<CudaStorage>,
    cb: Option<CpuStorage>,
    gb: Option<CudaStorage>,
}

impl MaskBias {
    /// The bias is drawn from `rng` even when unused.
    fn new(rng: &mut Rng, mask: Option<Vec<i32>>, bias: bool, sp: &AttnSpec, dt: DType) -> Self {
        let cmask = mask.map(CpuStorage::from_i32);
        let gmask = cmask.as_ref().map(up);
        let (cb, gb) = pair(&rng.normal(sp.h * sp.lq * sp.lk, 1.0), dt);
        let (cb, gb) = if bias {
            (Some(cb), Some(gb))
        } else {
            (None, None)
        };
        MaskBias {
            cmask,
            gmask,
            cb,
            gb,
        }
    }
    /// The attention arguments of `sp` on the CPU and on the device.
    fn args(&self, sp: AttnSpec) -> (AttnArgs<'_, CpuStorage>, AttnArgs<'_, CudaStorage>) {
        (
            AttnArgs::new(self.cmask.as_ref(), self.cb.as_ref(), sp),
            AttnArgs::new(self.gmask.as_ref(), self.gb.as_ref(), sp),
        )
    }
}

/// The forward's `attn_{tag}_fwd_out` and `attn_{tag}_fwd_lse` checks.
fn check_forward(
    tag: &str,
    (shape, dt, t): (&[usize], DType, Instant),
    (o, lse): (&CudaStorage, &CudaStorage),
    (wo, wl): (&CpuStorage, &CpuStorage),
) {
    check(&format!("attn_{tag}_fwd_out"), shape, dt, o, wo, t);
    check_lse(&format!("attn_{tag}_fwd_lse"), (shape, dt, t), lse, wl);
}

/// The bias gradient (`attn_{tag}_bwd_dbias`): present on both sides (and close) or on
/// neither.
fn check_dbias(
    tag: &str,
    (shape, dt, t): (&[usize], DType, Instant),
    got: Option<CudaStorage>,
    want: Option<&CpuStorage>,
) {
    let name = format!("attn_{tag}_bwd_dbias");
    match (got, want) {
        (Some(g), Some(w)) => check(&name, shape, dt, &g, w, t),
        (None, None) => {}
        (g, w) => panic!(
            "{name}: dbias presence differs: gpu {} cpu {}",
            g.is_some(),
            w.is_some()
        ),
    }
}

#[test]
fn attention_forward_backward() {
    let Some(mut rng) = setup("attention_forward_backward") else {
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
        // Two 128-key tiles, the second partial, for the _k128 backward.
        (2, 1, 70, 200, 64, false, true, true, 0.125),
        (2, 2, 9, 70, 32, false, true, true, 1.0),
        (1, 2, 65, 31, 128, true, true, true, 0.088),
    ];
    // Every case also runs with probability dropout (the CPU reference draws the same
    // mask from the same seed).
    let with_dropout = cases.iter().flat_map(|c| [(*c, 0.0f32), (*c, 0.15f32)]);
    for ((b, h, lq, lk, d, causal, mask, bias, scale), dropout) in
        with_dropout.filter(|(c, _)| keep(c.0 * c.1 * c.2 * c.3))
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
                dropout,
                seed: 4242,
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
            let mb = MaskBias::new(&mut rng, mask.then_some(mvec), bias, &sp, dt);
            let (ca, ga) = mb.args(sp);
            let (wo, wl) = ok(cq.attention(&ck, &cv, ca));
            let saved = AttnSaved::new(&wo, &wl, &cdo);
            let (wdq, wdk, wdv, wdb) = ok(cq.attention_backward(&ck, &cv, saved, ca));
            for (which, tile, tag) in attn_impls(dt, d, dropout) {
                let _path = use_attn(which, tile);
                let t = Instant::now();
                let (o, l) = ok(gq.attention(&gk, &gv, ga));
                check_forward(&tag, (&shape, dt, t), (&o, &l), (&wo, &wl));
                let t = Instant::now();
                let saved = AttnSaved::new(&o, &l, &gdo);
                let (dq, dk, dv, db) = ok(gq.attention_backward(&gk, &gv, saved, ga));
                for (part, got, want) in [("dq", &dq, &wdq), ("dk", &dk, &wdk), ("dv", &dv, &wdv)] {
                    check(&format!("attn_{tag}_bwd_{part}"), &shape, dt, got, want, t);
                }
                check_dbias(&tag, (&shape, dt, t), db, wdb.as_ref());
            }
        }
    }
}

/// Attention over one packed `[b, l, 3, h, d]` QKV buffer (the fused projection's
/// output): the fused kernels read q/k/v with row stride 3·H·D and write dq/dk/dv into
/// one packed gradient; the naive path copies. Against the CPU's packed attention
/// (itself checked against the separate call in tests/gradcheck.rs).
#[test]
fn attention_packed_qkv_forward_backward() {
    let Some(mut rng) = setup("attention_packed_qkv_forward_backward") else {
        return;
    };
    // (b, h, l, d, causal, mask, bias, scale)
    let cases = [
        (
            2usize, 12usize, 128usize, 64usize, false, true, false, 0.125f32,
        ),
        (3, 2, 33, 64, true, true, true, 1.0),
        (1, 3, 70, 32, false, true, true, 0.17),
        (2, 2, 65, 128, true, false, false, 0.088),
        (1, 1, 1, 64, false, false, false, 1.0),
    ];
    let with_dropout = cases.iter().flat_map(|c| [(*c, 0.0f32), (*c, 0.15f32)]);
    for ((b, h, l, d, causal, mask, bias, scale), dropout) in
        with_dropout.filter(|(c, _)| keep(c.0 * c.1 * c.2 * c.2))
    {
        for dt in DTS {
            let sp = AttnSpec {
                b,
                h,
                lq: l,
                lk: l,
                d,
                scale,
                causal,
                dropout,
                seed: 99,
            };
            let shape = [b, h, l, l, d];
            let (cx, gx) = pair(&rng.normal(b * l * 3 * h * d, 1.0), dt);
            let (cdo, gdo) = pair(&rng.normal(b * l * h * d, 1.0), dt);
            let mvec: Vec<i32> = (0..b * l)
                .map(|i| ((i % l) < l - (i / l) % 3) as i32)
                .collect();
            let mb = MaskBias::new(&mut rng, mask.then_some(mvec), bias, &sp, dt);
            let (ca, ga) = mb.args(sp);
            let (wo, wl) = ok(cx.attention_qkv(ca));
            let (wd, wdb) = ok(cx.attention_qkv_backward(AttnSaved::new(&wo, &wl, &cdo), ca));
            for (which, tile, tag) in attn_impls(dt, d, dropout) {
                let _path = use_attn(which, tile);
                let t = Instant::now();
                let tag = format!("qkv_{tag}");
                let (o, lse) = ok(gx.attention_qkv(ga));
                check_forward(&tag, (&shape, dt, t), (&o, &lse), (&wo, &wl));
                let t = Instant::now();
                let (dx, db) = ok(gx.attention_qkv_backward(AttnSaved::new(&o, &lse, &gdo), ga));
                check(&format!("attn_{tag}_bwd_dqkv"), &shape, dt, &dx, &wd, t);
                check_dbias(&tag, (&shape, dt, t), db, wdb.as_ref());
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
