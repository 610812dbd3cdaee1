//! Forward of every CPU backend op against a naive, obviously-correct reference written
//! here with plain loops, at odd shapes; plus the error paths (bad shapes, bad ids,
//! mixed f16/f32 operands) and AdamW against hand-computed values. Gradients are covered by
//! tests/gradcheck.rs.

use fusebox::backend::{
    AdamWState, AdamWStep, AttnArgs, AttnSaved, AttnSpec, BackendStorage, BinaryOp, CpuStorage,
    MatmulSpec, UnaryOp,
};
use fusebox::{DType, Error};

mod common;
use common::{attn, attn_inputs, f64s, ids, qkv_pack, qkv_part, vals, Rng};

#[path = "cpu_backend/attention.rs"]
mod attention;
#[path = "cpu_backend/optim_span.rs"]
mod optim_span;

fn f32s(v: &[f64]) -> CpuStorage {
    CpuStorage::from_f32(v.iter().map(|&x| x as f32).collect())
}

/// max |a - b| <= tol · max(1, max |b|), NaN never passes; -inf must match exactly.
fn close(name: &str, a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "{name}: length");
    let scale = b
        .iter()
        .filter(|v| v.is_finite())
        .fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if y.is_infinite() {
            assert_eq!(x, y, "{name}[{i}]");
            continue;
        }
        assert!(
            (x - y).abs() <= tol * scale,
            "{name}[{i}]: got {x}, expected {y}"
        );
    }
}

/// Both dtypes: F64 tight, F32 at f32 precision.
fn both(
    name: &str,
    input: impl Fn(&dyn Fn(&[f64]) -> CpuStorage) -> CpuStorage,
    reference: &[f64],
) {
    close(
        &format!("{name} f64"),
        &vals(&input(&f64s)),
        reference,
        1e-12,
    );
    close(
        &format!("{name} f32"),
        &vals(&input(&f32s)),
        reference,
        2e-5,
    );
}

#[test]
fn elementwise_forward() {
    let mut rng = Rng::new(1);
    let (rows, cols) = (3, 7);
    let n = rows * cols;
    let (a, b) = (rng.vec(n, 2.0), rng.vec(n, 2.0));
    let b_nz: Vec<f64> = b.iter().map(|v| v + 3.0).collect();
    for (op, f) in [
        (BinaryOp::Add, (|x, y| x + y) as fn(f64, f64) -> f64),
        (BinaryOp::Sub, |x, y| x - y),
        (BinaryOp::Mul, |x, y| x * y),
        (BinaryOp::Div, |x, y| x / y),
    ] {
        let r: Vec<f64> = a.iter().zip(&b_nz).map(|(&x, &y)| f(x, y)).collect();
        both(
            &format!("{op:?}"),
            |s| s(&a).binary(&s(&b_nz), op).unwrap(),
            &r,
        );
    }
    let r: Vec<f64> = a.iter().map(|x| x * 1.5 - 0.25).collect();
    both("affine", |s| s(&a).affine(1.5, -0.25).unwrap(), &r);

    // Known values (Python math.erf / math.tanh) pin the two GELUs.
    let x = [1.0, -0.5, 2.5];
    both(
        "gelu",
        |s| s(&x).unary(UnaryOp::Gelu).unwrap(),
        &[0.8413447460685429, -0.15426876936299344, 2.4844758366855597],
    );
    let gn = [0.8411919906082768, -0.15428599017485606, 2.484915733910001];
    both("gelu_new", |s| s(&x).unary(UnaryOp::GeluNew).unwrap(), &gn);
    for (op, f) in [
        (UnaryOp::Relu, (|x: f64| x.max(0.0)) as fn(f64) -> f64),
        (UnaryOp::Tanh, f64::tanh),
        (UnaryOp::Neg, |x| -x),
        (UnaryOp::Exp, f64::exp),
        (UnaryOp::Sqr, |x| x * x),
        (UnaryOp::Silu, |x| x / (1.0 + (-x).exp())),
    ] {
        let r: Vec<f64> = a.iter().map(|&v| f(v)).collect();
        both(&format!("{op:?}"), |s| s(&a).unary(op).unwrap(), &r);
    }
    // gated = act(gate) * lin.
    let r: Vec<f64> = a.iter().zip(&b).map(|(&g, &l)| g.max(0.0) * l).collect();
    both(
        "gated relu",
        |s| s(&a).gated(&s(&b), UnaryOp::Relu).unwrap(),
        &r,
    );

    let bias = rng.vec(cols, 1.0);
    let r: Vec<f64> = (0..n).map(|i| a[i] + bias[i % cols]).collect();
    both("add_bias", |s| s(&a).add_bias(&s(&bias), cols).unwrap(), &r);
    let r: Vec<f64> = (0..cols)
        .map(|c| (0..rows).map(|r| a[r * cols + c]).sum())
        .collect();
    both("sum_rows", |s| s(&a).sum_rows(cols).unwrap(), &r);
    both("sum_all", |s| s(&a).sum_all().unwrap(), &[a.iter().sum()]);
    both(
        "sum_sq",
        |s| s(&a).sum_sq().unwrap(),
        &[a.iter().map(|v| v * v).sum()],
    );

    // Big enough to take the parallel path, odd so the chunks do not divide evenly.
    let big = rng.vec(70_001, 1.0);
    let r: Vec<f64> = big.iter().map(|x| x * x).collect();
    both("sqr parallel", |s| s(&big).unary(UnaryOp::Sqr).unwrap(), &r);
    both(
        "sum_all parallel",
        |s| s(&big).sum_all().unwrap(),
        &[big.iter().sum()],
    );
}

#[test]
fn dropout_matches_shared_mask() {
    let x = vec![1.0; 10_007];
    let (p, seed) = (0.25f32, 99);
    let y = vals(&f64s(&x).dropout(p, seed).unwrap());
    for (i, &v) in y.iter().enumerate() {
        let keep = fusebox::backend::dropout_keep(seed, i as u64, p);
        assert_eq!(v, if keep { 1.0 / 0.75 } else { 0.0 }, "element {i}");
    }
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
    assert!((kept - 0.75).abs() < 0.02, "kept fraction {kept}");
    assert!(vals(&f64s(&x).dropout(1.0, 1).unwrap())
        .iter()
        .all(|&v| v == 0.0));
    assert!(f64s(&x).dropout(1.5, 1).is_err());
}

#[test]
fn casts_inplace_and_f16_storage() {
    let v = [1.5, -2.25, 65504.0, 0.1];
    let h = f64s(&v).cast(DType::F16).unwrap();
    assert_eq!(h.dtype(), DType::F16);
    let back = h.cast(DType::F32).unwrap().to_vec_f32().unwrap();
    assert_eq!(&back[..3], &[1.5, -2.25, 65504.0]);
    assert!((back[3] - 0.1).abs() < 1e-4);
    assert_eq!(
        f64s(&[2.7, -2.7])
            .cast(DType::I32)
            .unwrap()
            .to_vec_i32()
            .unwrap(),
        vec![2, -2]
    );
    assert_eq!(ids(&[3, -4]).to_vec_f32().unwrap(), vec![3.0, -4.0]);
    assert!(f64s(&v).to_vec_i32().is_err());
    let z = h.zeros_like_dev(5, DType::F16).unwrap();
    assert_eq!((z.dtype(), z.len()), (DType::F16, 5));
    assert_eq!(
        h.full_like_dev(2, DType::F64, 3.5)
            .unwrap()
            .to_vec_f64()
            .unwrap(),
        vec![3.5, 3.5]
    );

    // F16 computes (the emulation of CUDA's fp16: f32 math, f16 result); an f32 operand
    // in an f16 op is a clear dtype error, not a panic, as on CUDA.
    let r = h.unary(UnaryOp::Relu).unwrap();
    assert_eq!(r.dtype(), DType::F16);
    assert_eq!(&r.to_vec_f32().unwrap()[..3], &[1.5, 0.0, 65504.0]);
    match h.binary(&f32s(&v), BinaryOp::Add) {
        Err(Error::DType {
            op: "binary",
            got: DType::F32,
            ..
        }) => {}
        other => panic!("expected a dtype error, got {other:?}"),
    }
    assert!(h
        .matmul(&f32s(&[1.0, 2.0]), &MatmulSpec::plain(2, 2, 1))
        .is_err());
    assert!(
        f64s(&v).binary(&f32s(&v), BinaryOp::Add).is_err(),
        "mixed dtypes"
    );

    let mut y = f64s(&[1.0, 2.0, 3.0]);
    y.axpy_(&f64s(&[1.0, 1.0, 1.0]), 0.5).unwrap();
    y.scale_(2.0).unwrap();
    assert_eq!(vals(&y), vec![3.0, 5.0, 7.0]);
    assert!(y.axpy_(&f64s(&[1.0]), 1.0).is_err());
    let mut w = f32s(&[0.0, 0.0, 0.0]).cast(DType::F16).unwrap();
    w.copy_from_(&y).unwrap();
    assert_eq!(
        (w.dtype(), w.to_vec_f64().unwrap()),
        (DType::F16, vec![3.0, 5.0, 7.0])
    );
    assert!(w.copy_from_(&ids(&[1, 2, 3])).is_err());

    assert!(!f64s(&v).has_non_finite().unwrap());
    assert!(f64s(&[1.0, f64::NAN]).has_non_finite().unwrap());
    assert!(f32s(&[f64::INFINITY])
        .cast(DType::F16)
        .unwrap()
        .has_non_finite()
        .unwrap());
}

fn naive_mm(a: &[f64], b: &[f64], s: &MatmulSpec) -> Vec<f64> {
    let mut c = vec![0.0; s.batch * s.m * s.n];
    for bi in 0..s.batch {
        let (oa, ob) = (bi * s.stride_a, bi * s.stride_b);
        for i in 0..s.m {
            for j in 0..s.n {
                let mut acc = 0.0;
                for p in 0..s.k {
                    let x = if s.trans_a {
                        a[oa + p * s.m + i]
                    } else {
                        a[oa + i * s.k + p]
                    };
                    let y = if s.trans_b {
                        b[ob + j * s.k + p]
                    } else {
                        b[ob + p * s.n + j]
                    };
                    acc += x * y;
                }
                c[(bi * s.m + i) * s.n + j] = acc;
            }
        }
    }
    c
}

#[test]
fn matmul_forward() {
    let mut rng = Rng::new(2);
    for (batch, m, k, n) in [
        (1, 5, 3, 7),
        (3, 5, 3, 7),
        (2, 67, 130, 71),
        // Batch 1 with m >= 64: the CPU copies a transposed rhs row-major first
        // (backend::cpu::scratch_len), sizes off its 16 x 16 tiles.
        (1, 70, 33, 21),
        (1, 67, 130, 71),
        // Batch 1, few rows, transposed rhs: the few-row kernel (2-8 rows) and the
        // swapped product (9-256 rows, W not copied); tails off the 16 lanes.
        (1, 4, 37, 200),
        (1, 7, 16, 65),
        (1, 20, 33, 1100),
        (1, 70, 33, 1500),
        (9, 4, 1, 6),
        (2, 3, 0, 2),
    ] {
        for ta in [false, true] {
            for tb in [false, true] {
                for (ba, bb) in [(false, false), (true, false), (false, true)] {
                    let s = MatmulSpec {
                        batch,
                        trans_a: ta,
                        trans_b: tb,
                        stride_a: if ba { 0 } else { m * k },
                        stride_b: if bb { 0 } else { k * n },
                        ..MatmulSpec::plain(m, k, n)
                    };
                    let a = rng.vec(if ba { m * k } else { batch * m * k }, 1.0);
                    let b = rng.vec(if bb { k * n } else { batch * k * n }, 1.0);
                    let r = naive_mm(&a, &b, &s);
                    let name = format!("matmul {s:?}");
                    close(
                        &name,
                        &vals(&f64s(&a).matmul(&f64s(&b), &s).unwrap()),
                        &r,
                        1e-12,
                    );
                    close(
                        &name,
                        &vals(&f32s(&a).matmul(&f32s(&b), &s).unwrap()),
                        &r,
                        1e-5 * (k as f64).sqrt().max(1.0),
                    );
                }
            }
        }
    }
    // Too-short operands are a shape error.
    let s = MatmulSpec::plain(5, 3, 7);
    assert!(matches!(
        f64s(&[0.0; 14]).matmul(&f64s(&[0.0; 21]), &s),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn norms_forward() {
    let mut rng = Rng::new(3);
    let (rows, cols, eps) = (3, 7, 1e-5);
    let x = rng.vec(rows * cols, 2.0);
    let (g, b) = (rng.vec(cols, 1.0), rng.vec(cols, 1.0));
    let (mut y, mut mean, mut rstd) = (vec![], vec![], vec![]);
    let (mut ry, mut rr) = (vec![], vec![]);
    for r in 0..rows {
        let xr = &x[r * cols..(r + 1) * cols];
        let m = xr.iter().sum::<f64>() / cols as f64;
        let var = xr.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / cols as f64;
        let s = 1.0 / (var + eps).sqrt();
        y.extend((0..cols).map(|c| (xr[c] - m) * s * g[c] + b[c]));
        mean.push(m);
        rstd.push(s);
        let ms = xr.iter().map(|v| v * v).sum::<f64>() / cols as f64;
        let s2 = 1.0 / (ms + eps).sqrt();
        ry.extend((0..cols).map(|c| g[c] * xr[c] * s2));
        rr.push(s2);
    }
    both(
        "layer_norm y",
        |s| s(&x).layer_norm(&s(&g), &s(&b), cols, eps).unwrap().0,
        &y,
    );
    both(
        "layer_norm mean",
        |s| s(&x).layer_norm(&s(&g), &s(&b), cols, eps).unwrap().1,
        &mean,
    );
    both(
        "layer_norm rstd",
        |s| s(&x).layer_norm(&s(&g), &s(&b), cols, eps).unwrap().2,
        &rstd,
    );
    both(
        "rms_norm y",
        |s| s(&x).rms_norm(&s(&g), cols, eps).unwrap().0,
        &ry,
    );
    both(
        "rms_norm rstd",
        |s| s(&x).rms_norm(&s(&g), cols, eps).unwrap().1,
        &rr,
    );
    assert!(matches!(
        f64s(&x).layer_norm(&f64s(&g), &f64s(&b), 8, eps),
        Err(Error::Shape { .. })
    ));
    assert!(f64s(&x).rms_norm(&f64s(&g[..6]), cols, eps).is_err());
}

#[test]
fn softmax_loss_argmax_forward() {
    let mut rng = Rng::new(4);
    let (rows, cols) = (5, 7);
    let mut x = rng.vec(rows * cols, 4.0);
    x[3] = 50.0; // a large logit must not overflow
    let lse: Vec<f64> = (0..rows)
        .map(|r| {
            x[r * cols..(r + 1) * cols]
                .iter()
                .map(|v| v.exp())
                .sum::<f64>()
                .ln()
        })
        .collect();
    let sm: Vec<f64> = (0..rows * cols)
        .map(|i| (x[i] - lse[i / cols]).exp())
        .collect();
    let ls: Vec<f64> = (0..rows * cols).map(|i| x[i] - lse[i / cols]).collect();
    both("softmax", |s| s(&x).softmax(cols).unwrap(), &sm);
    both("log_softmax", |s| s(&x).log_softmax(cols).unwrap(), &ls);

    let t = [2, -100, 6, 0, -100];
    let loss = [0usize, 2, 3]
        .iter()
        .map(|&r| lse[r] - x[r * cols + t[r] as usize])
        .sum::<f64>()
        / 3.0;
    both(
        "cross_entropy loss",
        |s| s(&x).cross_entropy(&ids(&t), cols, -100).unwrap().0,
        &[loss],
    );
    both(
        "cross_entropy lse",
        |s| s(&x).cross_entropy(&ids(&t), cols, -100).unwrap().1,
        &lse,
    );
    let all_ignored = f64s(&x)
        .cross_entropy(&ids(&[-100; 5]), cols, -100)
        .unwrap()
        .0;
    assert_eq!(vals(&all_ignored), vec![0.0]);
    let bad = f64s(&x).cross_entropy(&ids(&[0, 1, 7, 0, 0]), cols, -100);
    assert!(bad.unwrap_err().to_string().contains("target 7"));

    let am: Vec<i32> = (0..rows)
        .map(|r| {
            let row = &x[r * cols..(r + 1) * cols];
            (0..cols).fold(0, |b, c| if row[c] > row[b] { c } else { b }) as i32
        })
        .collect();
    assert_eq!(
        f32s(&x).argmax_last(cols).unwrap().to_vec_i32().unwrap(),
        am
    );
    assert_eq!(am[0], 3);
}

#[test]
fn embedding_and_layout_forward() {
    let mut rng = Rng::new(6);
    let (n, cols) = (5, 3);
    let table = rng.vec(n * cols, 1.0);
    let id = [4, 0, 4, 2];
    let r: Vec<f64> = id
        .iter()
        .flat_map(|&i| table[i * cols..(i + 1) * cols].to_vec())
        .collect();
    both(
        "index_select",
        |s| {
            s(&table)
                .index_select(&ids(&id.map(|i| i as i32)), cols)
                .unwrap()
        },
        &r,
    );
    let e = f64s(&table)
        .index_select(&ids(&[1, 5]), cols)
        .unwrap_err()
        .to_string();
    assert!(e.contains("id 5") && e.contains("5 rows"), "{e}");
    assert!(f64s(&table).index_select(&ids(&[-1]), cols).is_err());
    assert_eq!(
        ids(&[7, 8, 9, 10])
            .index_select(&ids(&[1, 0]), 2)
            .unwrap()
            .to_vec_i32()
            .unwrap(),
        vec![9, 10, 7, 8]
    );
    let dy = rng.vec(id.len() * cols, 1.0);
    let mut r = vec![0.0; n * cols];
    for (p, &i) in id.iter().enumerate() {
        for c in 0..cols {
            r[i * cols + c] += dy[p * cols + c];
        }
    }
    both(
        "index_add",
        |s| {
            s(&dy)
                .index_add(&ids(&id.map(|i| i as i32)), n, cols, None)
                .unwrap()
        },
        &r,
    );
    // padding_idx: the skipped row stays zero, every other row as before.
    let skip = id[0];
    let mut r_skip = r.clone();
    r_skip[skip * cols..(skip + 1) * cols].fill(0.0);
    both(
        "index_add (skip)",
        |s| {
            s(&dy)
                .index_add(&ids(&id.map(|i| i as i32)), n, cols, Some(skip))
                .unwrap()
        },
        &r_skip,
    );

    let dims = [2usize, 3, 5, 7];
    let x = rng.vec(210, 1.0);
    let at = |i: [usize; 4]| x[((i[0] * 3 + i[1]) * 5 + i[2]) * 7 + i[3]];
    let perm = [2usize, 0, 3, 1];
    let od: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let mut r = vec![];
    for a in 0..od[0] {
        for b in 0..od[1] {
            for c in 0..od[2] {
                for d in 0..od[3] {
                    let mut src = [0; 4];
                    for (o, &p) in [a, b, c, d].iter().zip(&perm) {
                        src[p] = *o;
                    }
                    r.push(at(src));
                }
            }
        }
    }
    both("permute", |s| s(&x).permute(&dims, &perm).unwrap(), &r);
    let r2: Vec<f64> = (0..15).map(|i| x[(i % 5) * 3 + i / 5]).collect();
    close(
        "permute rank 2",
        &vals(&f64s(&x[..15]).permute(&[5, 3], &[1, 0]).unwrap()),
        &r2,
        0.0,
    );
    assert!(f64s(&x).permute(&dims, &[0, 1, 1, 2]).is_err());
    assert!(f64s(&x).permute(&[2, 3, 5, 8], &[0, 1, 2, 3]).is_err());

    let mut r = vec![];
    for a in 0..2 {
        for b in 0..3 {
            for c in 1..4 {
                for d in 0..7 {
                    r.push(at([a, b, c, d]));
                }
            }
        }
    }
    both("narrow", |s| s(&x).narrow(&dims, 2, 1, 3).unwrap(), &r);
    assert!(f64s(&x).narrow(&dims, 2, 3, 3).is_err());
    assert!(f64s(&x).narrow(&dims, 4, 0, 1).is_err());

    let y = rng.vec(2 * 2 * 5 * 7, 1.0);
    let mut r = vec![];
    for a in 0..2 {
        r.extend_from_slice(&x[a * 105..(a + 1) * 105]);
        r.extend_from_slice(&y[a * 70..(a + 1) * 70]);
    }
    let cd = vec![dims.to_vec(), vec![2, 2, 5, 7]];
    let c = CpuStorage::cat(&[&f64s(&x), &f64s(&y)], &cd, 1).unwrap();
    close("cat", &vals(&c), &r, 0.0);
    assert!(CpuStorage::cat(
        &[&f64s(&x), &f64s(&y)],
        &[dims.to_vec(), vec![2, 2, 5, 6]],
        1
    )
    .is_err());
    assert!(CpuStorage::cat(&[&f64s(&x), &f32s(&y)], &cd, 1).is_err());
}

#[test]
fn empty_and_degenerate_shapes_do_not_panic() {
    let e = f64s(&[]);
    let g = f64s(&[1.0; 7]);
    assert_eq!(e.softmax(7).unwrap().len(), 0);
    assert_eq!(e.softmax(0).unwrap().len(), 0);
    assert!(f64s(&[1.0]).softmax(0).is_err());
    assert_eq!(e.layer_norm(&g, &g, 7, 1e-5).unwrap().0.len(), 0);
    assert_eq!(e.rms_norm(&g, 7, 1e-5).unwrap().1.len(), 0);
    assert_eq!(e.index_add(&ids(&[]), 3, 0, None).unwrap().len(), 0);
    assert_eq!(e.index_add(&ids(&[]), 3, 2, None).unwrap().len(), 6);
    assert_eq!(e.index_select(&ids(&[]), 4).unwrap().len(), 0);
    let s = MatmulSpec {
        batch: 0,
        ..MatmulSpec::plain(2, 3, 4)
    };
    assert_eq!(e.matmul(&e, &s).unwrap().len(), 0);
    assert_eq!(e.permute(&[0, 3], &[1, 0]).unwrap().len(), 0);
    assert_eq!(e.sum_all().unwrap().to_vec_f64().unwrap(), vec![0.0]);
    let (loss, _) = e.cross_entropy(&ids(&[]), 7, -100).unwrap();
    assert_eq!(loss.to_vec_f64().unwrap(), vec![0.0]);
    assert!(e.argmax_last(0).is_err());
    let a = AttnSpec {
        causal: true,
        ..attn(0, 2, 3, 4, 5)
    };
    let (o, l) = e.attention(&e, &e, AttnArgs::new(None, None, a)).unwrap();
    assert_eq!((o.len(), l.len()), (0, 0));
    let a = attn(1, 1, 2, 0, 3);
    let (o, l) = f64s(&[1.0; 6])
        .attention(&e, &e, AttnArgs::new(None, None, a))
        .unwrap();
    assert_eq!(vals(&o), vec![0.0; 6]);
    assert!(vals(&l).iter().all(|x| *x == f64::NEG_INFINITY));
    let sp = e.span_search(&e, &ids(&[]), 0, 15, 5).unwrap();
    assert!(sp.is_empty());
}
