//! The F16 emulation against its definition: for each family, the f16 op must give
//! exactly the f32 op on the same (f16-representable) inputs rounded to f16, with the
//! auxiliary outputs CUDA keeps in f32 left in f32; and a value past 65504 must become
//! inf, so an fp16 overflow shows on the CPU as it would on the GPU.

use crate::backend::{AttnSpec, BackendStorage, BinaryOp, CpuStorage, MatmulSpec, UnaryOp};
use crate::shape::DType;

/// Deterministic values in [-scale, scale), already representable in f16 (so the f32
/// reference and the f16 op read the same numbers).
fn vals(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0;
            half::f16::from_f32(u * scale).to_f32()
        })
        .collect()
}

fn f32s(v: &[f32]) -> CpuStorage {
    CpuStorage::from_f32(v.to_vec())
}
fn f16s(v: &[f32]) -> CpuStorage {
    f32s(v).cast(DType::F16).unwrap()
}

/// `got` is f16 and bit-equal to the f32 reference rounded to f16.
fn same_as_rounded(what: &str, got: &CpuStorage, want_f32: &CpuStorage) {
    assert_eq!(got.dtype(), DType::F16, "{what}: output dtype");
    assert_eq!(want_f32.dtype(), DType::F32, "{what}: reference dtype");
    let want = want_f32.cast(DType::F16).unwrap().to_vec_f32().unwrap();
    let got = got.to_vec_f32().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

/// `got` is f32 and bit-equal to `want`.
fn same_f32(what: &str, got: &CpuStorage, want: &CpuStorage) {
    assert_eq!(got.dtype(), DType::F32, "{what}: stays f32 as on CUDA");
    assert_eq!(
        got.to_vec_f32().unwrap(),
        want.to_vec_f32().unwrap(),
        "{what}"
    );
}

#[test]
fn matmul_is_f32_rounded() {
    let (m, k, n) = (5, 7, 3);
    let spec = MatmulSpec {
        trans_b: true,
        ..MatmulSpec::plain(m, k, n)
    };
    let (a, b) = (vals(m * k, 1, 2.0), vals(n * k, 2, 2.0));
    let got = f16s(&a).matmul(&f16s(&b), &spec).unwrap();
    let want = f32s(&a).matmul(&f32s(&b), &spec).unwrap();
    same_as_rounded("matmul", &got, &want);
    // The mixed-output GEMM keeps the f32 product unrounded.
    let wide = f16s(&a).matmul_out(&f16s(&b), &spec, DType::F32).unwrap();
    same_f32("matmul_out f32", &wide, &want);
    // An f32 operand in an f16 op is the dtype error CUDA gives.
    assert!(f16s(&a).matmul(&f32s(&b), &spec).is_err());
    assert!(f32s(&a).matmul_out(&f32s(&b), &spec, DType::F16).is_err());
}

#[test]
fn elementwise_is_f32_rounded() {
    let (x, y) = (vals(40, 3, 4.0), vals(40, 4, 4.0));
    for op in [BinaryOp::Add, BinaryOp::Mul, BinaryOp::Div] {
        let got = f16s(&x).binary(&f16s(&y), op).unwrap();
        same_as_rounded("binary", &got, &f32s(&x).binary(&f32s(&y), op).unwrap());
    }
    for op in [
        UnaryOp::Relu,
        UnaryOp::Gelu,
        UnaryOp::GeluNew,
        UnaryOp::Silu,
        UnaryOp::Exp,
    ] {
        let got = f16s(&x).unary(op).unwrap();
        same_as_rounded("unary", &got, &f32s(&x).unary(op).unwrap());
        let got = f16s(&x).unary_backward(&f16s(&y), op).unwrap();
        let want = f32s(&x).unary_backward(&f32s(&y), op).unwrap();
        same_as_rounded("unary_backward", &got, &want);
    }
    let got = f16s(&x).gated(&f16s(&y), UnaryOp::GeluNew).unwrap();
    let want = f32s(&x).gated(&f32s(&y), UnaryOp::GeluNew).unwrap();
    same_as_rounded("gated", &got, &want);
    let got = f16s(&x).dropout(0.3, 9).unwrap();
    same_as_rounded("dropout", &got, &f32s(&x).dropout(0.3, 9).unwrap());
    let got = f16s(&x).sum_rows(8).unwrap();
    same_as_rounded("sum_rows", &got, &f32s(&x).sum_rows(8).unwrap());
    same_f32(
        "sum_sq",
        &f16s(&x).sum_sq().unwrap(),
        &f32s(&x).sum_sq().unwrap(),
    );
    // In place: f16 += f16, and f32 += f16 (gradient accumulation), as CUDA's axpy pairs.
    let mut acc = f16s(&x);
    acc.axpy_(&f16s(&y), 0.5).unwrap();
    let mut want = f32s(&x);
    want.axpy_(&f32s(&y), 0.5).unwrap();
    same_as_rounded("axpy_ f16", &acc, &want);
    let mut acc32 = f32s(&x);
    acc32.axpy_(&f16s(&y), 0.5).unwrap();
    same_f32("axpy_ f32 += f16", &acc32, &want);
}

#[test]
fn softmax_and_loss_follow_cuda() {
    let (rows, cols) = (6, 11);
    let (x, dy) = (vals(rows * cols, 5, 6.0), vals(rows * cols, 6, 1.0));
    let got = f16s(&x).softmax(cols).unwrap();
    let want = f32s(&x).softmax(cols).unwrap();
    same_as_rounded("softmax", &got, &want);
    // Backward reads the stored (f16) probabilities, as the GPU does.
    let y16 = got.cast(DType::F32).unwrap();
    let gotb = got.softmax_backward(&f16s(&dy), cols).unwrap();
    let wantb = y16.softmax_backward(&f32s(&dy), cols).unwrap();
    same_as_rounded("softmax_backward", &gotb, &wantb);
    let t = CpuStorage::from_i32(vec![0, 3, -100, 10, 2, 5]);
    let (loss, lse) = f16s(&x).cross_entropy(&t, cols, -100).unwrap();
    let (wl, wlse) = f32s(&x).cross_entropy(&t, cols, -100).unwrap();
    same_f32("cross_entropy loss", &loss, &wl);
    same_f32("cross_entropy lse", &lse, &wlse);
    let dl = CpuStorage::from_f32(vec![2.0]);
    let got = f16s(&x)
        .cross_entropy_backward(&t, &lse, &dl, cols, -100)
        .unwrap();
    let want = f32s(&x)
        .cross_entropy_backward(&t, &wlse, &dl, cols, -100)
        .unwrap();
    same_as_rounded("cross_entropy_backward", &got, &want);
}

#[test]
fn norms_keep_f32_statistics() {
    let (rows, cols) = (4, 24);
    let x = vals(rows * cols, 7, 3.0);
    let (g, b, dy) = (
        vals(cols, 8, 2.0),
        vals(cols, 9, 1.0),
        vals(rows * cols, 10, 1.0),
    );
    let (y, mean, rstd) = f16s(&x)
        .layer_norm(&f16s(&g), &f16s(&b), cols, 1e-5)
        .unwrap();
    let (wy, wm, wr) = f32s(&x)
        .layer_norm(&f32s(&g), &f32s(&b), cols, 1e-5)
        .unwrap();
    same_as_rounded("layer_norm y", &y, &wy);
    same_f32("layer_norm mean", &mean, &wm);
    same_f32("layer_norm rstd", &rstd, &wr);
    let (dx, dg, db) = f16s(&x)
        .layer_norm_backward(&f16s(&g), &mean, &rstd, &f16s(&dy), cols)
        .unwrap();
    let (wdx, wdg, wdb) = f32s(&x)
        .layer_norm_backward(&f32s(&g), &wm, &wr, &f32s(&dy), cols)
        .unwrap();
    same_as_rounded("layer_norm dx", &dx, &wdx);
    same_as_rounded("layer_norm dgamma", &dg, &wdg);
    same_as_rounded("layer_norm dbeta", &db, &wdb);

    let (y, rstd) = f16s(&x).rms_norm(&f16s(&g), cols, 1e-6).unwrap();
    let (wy, wr) = f32s(&x).rms_norm(&f32s(&g), cols, 1e-6).unwrap();
    same_as_rounded("rms_norm y", &y, &wy);
    same_f32("rms_norm rstd", &rstd, &wr);
    let (dx, dg) = f16s(&x)
        .rms_norm_backward(&f16s(&g), &rstd, &f16s(&dy), cols)
        .unwrap();
    let (wdx, wdg) = f32s(&x)
        .rms_norm_backward(&f32s(&g), &wr, &f32s(&dy), cols)
        .unwrap();
    same_as_rounded("rms_norm dx", &dx, &wdx);
    same_as_rounded("rms_norm dgamma", &dg, &wdg);
}

#[test]
fn attention_rounds_outputs_keeps_lse() {
    let sp = AttnSpec {
        b: 2,
        h: 3,
        lq: 5,
        lk: 4,
        d: 8,
        scale: 1.0,
        causal: false,
        dropout: 0.0,
        seed: 0,
    };
    let nq = sp.b * sp.lq * sp.h * sp.d;
    let nk = sp.b * sp.lk * sp.h * sp.d;
    let (q, k, v) = (vals(nq, 11, 1.0), vals(nk, 12, 1.0), vals(nk, 13, 1.0));
    let bias = vals(sp.h * sp.lq * sp.lk, 14, 2.0);
    let mask = CpuStorage::from_i32(vec![1, 1, 1, 0, 1, 1, 0, 0]);
    let (o, lse) = f16s(&q)
        .attention(&f16s(&k), &f16s(&v), Some(&mask), Some(&f16s(&bias)), &sp)
        .unwrap();
    let (wo, wlse) = f32s(&q)
        .attention(&f32s(&k), &f32s(&v), Some(&mask), Some(&f32s(&bias)), &sp)
        .unwrap();
    same_as_rounded("attention out", &o, &wo);
    same_f32("attention lse", &lse, &wlse);
    let dout = vals(nq, 15, 1.0);
    let o32 = o.cast(DType::F32).unwrap();
    let (dq, dk, dv, db) = f16s(&q)
        .attention_backward(
            &f16s(&k),
            &f16s(&v),
            &o,
            &lse,
            &f16s(&dout),
            Some(&mask),
            Some(&f16s(&bias)),
            &sp,
        )
        .unwrap();
    let (wq, wk, wv, wb) = f32s(&q)
        .attention_backward(
            &f32s(&k),
            &f32s(&v),
            &o32,
            &wlse,
            &f32s(&dout),
            Some(&mask),
            Some(&f32s(&bias)),
            &sp,
        )
        .unwrap();
    same_as_rounded("attention dq", &dq, &wq);
    same_as_rounded("attention dk", &dk, &wk);
    same_as_rounded("attention dv", &dv, &wv);
    match (db, wb) {
        (Some(db), Some(wb)) => same_as_rounded("attention dbias", &db, &wb),
        _ => panic!("attention_backward: dbias missing"),
    }
}

#[test]
fn overflow_past_65504_is_inf() {
    // 40000 + 30000 is fine in f32 and inf in f16: the emulation must not hide it.
    let a = f16s(&[40000.0, -40000.0, 1.0]);
    let b = f16s(&[30000.0, -30000.0, 1.0]);
    let s = a.binary(&b, BinaryOp::Add).unwrap().to_vec_f32().unwrap();
    assert_eq!(s, vec![f32::INFINITY, f32::NEG_INFINITY, 2.0]);
    assert!(a
        .binary(&b, BinaryOp::Add)
        .unwrap()
        .has_non_finite()
        .unwrap());
    let scaled = f16s(&[1000.0]).affine(70.0, 0.0).unwrap();
    assert_eq!(scaled.to_vec_f32().unwrap(), vec![f32::INFINITY]);
    // A GEMM whose every product fits but whose sum does not: inf in f16, exact with an
    // f32 output.
    let x = f16s(&[200.0; 4]);
    let w = f16s(&[100.0; 4]);
    let spec = MatmulSpec::plain(1, 4, 1);
    let y = x.matmul(&w, &spec).unwrap().to_vec_f32().unwrap();
    assert_eq!(y, vec![f32::INFINITY]);
    let y32 = x.matmul_out(&w, &spec, DType::F32).unwrap();
    assert_eq!(y32.to_vec_f32().unwrap(), vec![80000.0]);
    // The largest f16 itself is finite.
    assert_eq!(
        f16s(&[65504.0])
            .affine(1.0, 0.0)
            .unwrap()
            .to_vec_f32()
            .unwrap(),
        vec![65504.0]
    );
}

#[test]
fn adamw_takes_f16_grads_not_f16_masters() {
    let hp = crate::backend::AdamWStep {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        step: 1,
        grad_scale: 0.5,
        check_finite: true,
    };
    let g = vals(6, 21, 1.0);
    let (mut p, mut m, mut v) = (f32s(&[1.0; 6]), f32s(&[0.0; 6]), f32s(&[0.0; 6]));
    let mut w = f16s(&[0.0; 6]);
    assert!(!p
        .adamw_(&f16s(&g), &mut m, &mut v, Some(&mut w), &hp)
        .unwrap());
    let (mut p2, mut m2, mut v2) = (f32s(&[1.0; 6]), f32s(&[0.0; 6]), f32s(&[0.0; 6]));
    assert!(!p2.adamw_(&f32s(&g), &mut m2, &mut v2, None, &hp).unwrap());
    same_f32("adamw master", &p, &p2);
    same_as_rounded("adamw working copy", &w, &p2);
    // An inf in the f16 gradient skips the step.
    let bad = f16s(&[1.0, f32::INFINITY, 0.0, 0.0, 0.0, 0.0]);
    assert!(p.adamw_(&bad, &mut m, &mut v, None, &hp).unwrap());
    let mut h = f16s(&[1.0; 6]);
    assert!(h.adamw_(&f16s(&g), &mut m, &mut v, None, &hp).is_err());
}
