//! Gradchecks for every differentiable primitive of the CPU backend, in F64.
//!
//! For an op `y = fwd(x)` and a fixed random weight `w`, the scalar
//! `f(x) = Σ w ⊙ fwd(x)` has gradient `backward(dy = w)`; each input's analytic gradient
//! is compared with central differences (eps 1e-6). The tolerance,
//! 1e-7 · max(1, max|grad|), is far below the size of any dropped or wrong term, and
//! shapes are odd (3, 5, 7) so a transposed index or a swapped dimension cannot hide.
//! Measured errors of the correct backwards are 1e-10..2e-9, so the bound has ~50x
//! headroom against finite-difference noise. Run with --nocapture to see each one.

use fusebox::backend::{
    AttnArgs, AttnSaved, AttnSpec, BackendStorage, CpuStorage, MatmulSpec, UnaryOp,
};

mod common;
use common::{
    attn, attn_inputs, attn_sizes, f64s as st, ids, qkv_pack, qkv_part, vals, Rng, UNARY_OPS,
};

fn dot(w: &[f64], y: &CpuStorage) -> f64 {
    let y = vals(y);
    assert_eq!(w.len(), y.len(), "weight and output lengths differ");
    w.iter().zip(&y).map(|(a, b)| a * b).sum()
}

/// Compare an analytic gradient with central differences of `f` around `x`.
fn gradcheck(name: &str, x: &[f64], analytic: &[f64], f: impl Fn(&[f64]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
    let eps = 1e-6;
    let mut xp = x.to_vec();
    let (mut max_err, mut max_g, mut worst) = (0.0f64, 0.0f64, 0);
    for i in 0..x.len() {
        let orig = xp[i];
        xp[i] = orig + eps;
        let fp = f(&xp);
        xp[i] = orig - eps;
        let fm = f(&xp);
        xp[i] = orig;
        let num = (fp - fm) / (2.0 * eps);
        let err = (num - analytic[i]).abs();
        if err > max_err {
            max_err = err;
            worst = i;
        }
        max_g = max_g.max(analytic[i].abs());
    }
    assert!(
        max_g > 0.0,
        "{name}: gradient is identically zero, the check would be vacuous"
    );
    let tol = 1e-7 * max_g.max(1.0);
    eprintln!("{name}: max err {max_err:.2e} (tol {tol:.2e})");
    assert!(
        max_err <= tol,
        "{name}: max |analytic - numeric| = {max_err:.3e} at {worst} (tol {tol:.3e}, max|grad| {max_g:.3e})"
    );
}

fn mm(a: &CpuStorage, b: &CpuStorage, spec: MatmulSpec) -> CpuStorage {
    a.matmul(b, &spec).expect("matmul")
}

#[allow(clippy::too_many_arguments)]
fn spec(
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    sa: usize,
    sb: usize,
) -> MatmulSpec {
    MatmulSpec {
        batch,
        m,
        n,
        k,
        trans_a: ta,
        trans_b: tb,
        stride_a: sa,
        stride_b: sb,
    }
}

#[test]
fn matmul_all_transposes_and_broadcast() {
    let mut rng = Rng::new(1);
    let (m, k, n) = (5, 3, 7);
    for batch in [1usize, 3] {
        for ta in [false, true] {
            for tb in [false, true] {
                // A broadcast over the batch when batched, B per-batch.
                let sa = if batch > 1 { 0 } else { m * k };
                let a = rng.vec(m * k, 1.0);
                let b = rng.vec(batch * k * n, 1.0);
                let w = rng.vec(batch * m * n, 1.0);
                let fwd = spec(batch, m, k, n, ta, tb, sa, k * n);
                let (sa_, sb_, dc) = (st(&a), st(&b), st(&w));
                // dA (stored layout), per batch, then summed over a broadcast batch.
                let da = if ta {
                    // A stored k×m: dA = op(B) · dCᵀ.
                    mm(&sb_, &dc, spec(batch, k, n, m, tb, true, k * n, m * n))
                } else {
                    // dA = dC · op(B)ᵀ.
                    mm(&dc, &sb_, spec(batch, m, n, k, false, !tb, m * n, k * n))
                };
                let da = if batch > 1 {
                    vals(&da.sum_rows(m * k).unwrap())
                } else {
                    vals(&da)
                };
                let db = if tb {
                    // B stored n×k: dB = dCᵀ · op(A).
                    mm(&dc, &sa_, spec(batch, n, m, k, true, ta, m * n, sa))
                } else {
                    // dB = op(A)ᵀ · dC.
                    mm(&sa_, &dc, spec(batch, k, m, n, !ta, false, sa, m * n))
                };
                let name = format!("matmul batch {batch} trans_a {ta} trans_b {tb}");
                gradcheck(&format!("{name} dA"), &a, &da, |x| {
                    dot(&w, &mm(&st(x), &sb_, fwd))
                });
                gradcheck(&format!("{name} dB"), &b, &vals(&db), |x| {
                    dot(&w, &mm(&sa_, &st(x), fwd))
                });
            }
        }
    }
}

#[test]
fn add_bias_and_sum_rows() {
    let mut rng = Rng::new(2);
    let (rows, cols) = (3, 7);
    let (x, b, w) = (
        rng.vec(rows * cols, 1.0),
        rng.vec(cols, 1.0),
        rng.vec(rows * cols, 1.0),
    );
    let db = vals(&st(&w).sum_rows(cols).unwrap());
    gradcheck("add_bias d bias", &b, &db, |bb| {
        dot(&w, &st(&x).add_bias(&st(bb), cols).unwrap())
    });
    gradcheck("add_bias d x", &x, &w, |xx| {
        dot(&w, &st(xx).add_bias(&st(&b), cols).unwrap())
    });
}

#[test]
fn unary_ops_and_gated() {
    let mut rng = Rng::new(3);
    let n = 21;
    for op in UNARY_OPS {
        let (x, w) = (rng.vec(n, 3.0), rng.vec(n, 1.0));
        let dx = vals(&st(&x).unary_backward(&st(&w), op).unwrap());
        gradcheck(&format!("unary {op:?}"), &x, &dx, |xx| {
            dot(&w, &st(xx).unary(op).unwrap())
        });
    }
    for op in [
        UnaryOp::GeluNew,
        UnaryOp::Gelu,
        UnaryOp::Relu,
        UnaryOp::Silu,
    ] {
        let (g, l, w) = (rng.vec(n, 3.0), rng.vec(n, 1.0), rng.vec(n, 1.0));
        let (dg, dl) = st(&g).gated_backward(&st(&l), &st(&w), op).unwrap();
        gradcheck(&format!("gated {op:?} d gate"), &g, &vals(&dg), |x| {
            dot(&w, &st(x).gated(&st(&l), op).unwrap())
        });
        gradcheck(&format!("gated {op:?} d lin"), &l, &vals(&dl), |x| {
            dot(&w, &st(&g).gated(&st(x), op).unwrap())
        });
    }
}

#[test]
fn dropout_same_seed() {
    let mut rng = Rng::new(4);
    let (x, w) = (rng.vec(37, 1.0), rng.vec(37, 1.0));
    let (p, seed) = (0.3, 12345);
    let dx = vals(&st(&w).dropout(p, seed).unwrap());
    assert!(
        dx.contains(&0.0) && dx.iter().any(|&v| v != 0.0),
        "mask is trivial"
    );
    gradcheck("dropout", &x, &dx, |xx| {
        dot(&w, &st(xx).dropout(p, seed).unwrap())
    });
}

#[test]
fn layer_norm_and_rms_norm() {
    let mut rng = Rng::new(5);
    let (rows, cols, eps) = (3, 7, 1e-5);
    let x: Vec<f64> = rng.vec(rows * cols, 2.0).iter().map(|v| v + 0.5).collect();
    let (g, b, w) = (
        rng.vec(cols, 1.0),
        rng.vec(cols, 1.0),
        rng.vec(rows * cols, 1.0),
    );
    let (_, mean, rstd) = st(&x).layer_norm(&st(&g), &st(&b), cols, eps).unwrap();
    let (dx, dg, db) = st(&x)
        .layer_norm_backward(&st(&g), &mean, &rstd, &st(&w), cols)
        .unwrap();
    let ln = |x: &[f64], g: &[f64], b: &[f64]| {
        dot(&w, &st(x).layer_norm(&st(g), &st(b), cols, eps).unwrap().0)
    };
    gradcheck("layer_norm dx", &x, &vals(&dx), |v| ln(v, &g, &b));
    gradcheck("layer_norm dgamma", &g, &vals(&dg), |v| ln(&x, v, &b));
    gradcheck("layer_norm dbeta", &b, &vals(&db), |v| ln(&x, &g, v));

    let (_, rstd) = st(&x).rms_norm(&st(&g), cols, eps).unwrap();
    let (dx, dg) = st(&x)
        .rms_norm_backward(&st(&g), &rstd, &st(&w), cols)
        .unwrap();
    let rms = |x: &[f64], g: &[f64]| dot(&w, &st(x).rms_norm(&st(g), cols, eps).unwrap().0);
    gradcheck("rms_norm dx", &x, &vals(&dx), |v| rms(v, &g));
    gradcheck("rms_norm dgamma", &g, &vals(&dg), |v| rms(&x, v));
}

#[test]
fn softmax_and_cross_entropy() {
    let mut rng = Rng::new(6);
    let (rows, cols) = (5, 7);
    let (x, w) = (rng.vec(rows * cols, 3.0), rng.vec(rows * cols, 1.0));
    let y = st(&x).softmax(cols).unwrap();
    let dx = vals(&y.softmax_backward(&st(&w), cols).unwrap());
    gradcheck("softmax", &x, &dx, |v| {
        dot(&w, &st(v).softmax(cols).unwrap())
    });

    let t = ids(&[3, -100, 0, 6, -100]);
    let w0 = 0.7;
    let (_, lse) = st(&x).cross_entropy(&t, cols, -100).unwrap();
    let dx = st(&x)
        .cross_entropy_backward(&t, &lse, &st(&[w0]), cols, -100)
        .unwrap();
    let dx = vals(&dx);
    assert!(
        dx[cols..2 * cols].iter().all(|&v| v == 0.0),
        "ignored row has a gradient"
    );
    gradcheck("cross_entropy", &x, &dx, |v| {
        w0 * vals(&st(v).cross_entropy(&t, cols, -100).unwrap().0)[0]
    });
}

#[test]
fn index_select_table_grad() {
    let mut rng = Rng::new(7);
    let (n, cols) = (5, 3);
    let id = [4, 0, 4, 2, 4, 1, 0];
    let (table, w) = (rng.vec(n * cols, 1.0), rng.vec(id.len() * cols, 1.0));
    let dt = vals(&st(&w).index_add(&ids(&id), n, cols, None).unwrap());
    gradcheck("index_select table", &table, &dt, |v| {
        dot(&w, &st(v).index_select(&ids(&id), cols).unwrap())
    });
}

#[test]
fn permute_narrow_cat() {
    let mut rng = Rng::new(8);
    let dims = [2usize, 3, 5, 7];
    let x = rng.vec(dims.iter().product(), 1.0);
    for perm in [[0usize, 2, 1, 3], [3, 1, 0, 2], [1, 3, 2, 0]] {
        let w = rng.vec(x.len(), 1.0);
        let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
        let mut inv = [0usize; 4];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        let dx = vals(&st(&w).permute(&out_dims, &inv).unwrap());
        gradcheck(&format!("permute {perm:?}"), &x, &dx, |v| {
            dot(&w, &st(v).permute(&dims, &perm).unwrap())
        });
    }
    // narrow along dim 2 (size 5 → [1, 4)); its backward is cat(zeros, dy, zeros).
    let (dim, start, len) = (2, 1, 3);
    let nd = [2usize, 3, len, 7];
    let w = rng.vec(nd.iter().product(), 1.0);
    let z = |l: usize| st(&vec![0.0; 2 * 3 * l * 7]);
    let (z0, z1) = (z(start), z(dims[dim] - start - len));
    let parts_dims = vec![
        vec![2, 3, start, 7],
        nd.to_vec(),
        vec![2, 3, dims[dim] - start - len, 7],
    ];
    let dx = vals(&CpuStorage::cat(&[&z0, &st(&w), &z1], &parts_dims, dim).unwrap());
    gradcheck("narrow", &x, &dx, |v| {
        dot(&w, &st(v).narrow(&dims, dim, start, len).unwrap())
    });
    // cat along dim 1 of [2,3,5,7] and [2,4,5,7]; each part's gradient is a narrow of dy.
    let y = rng.vec(2 * 4 * 5 * 7, 1.0);
    let cd = vec![dims.to_vec(), vec![2, 4, 5, 7]];
    let w = rng.vec(x.len() + y.len(), 1.0);
    let odims = [2usize, 7, 5, 7];
    let dxa = vals(&st(&w).narrow(&odims, 1, 0, 3).unwrap());
    let dya = vals(&st(&w).narrow(&odims, 1, 3, 4).unwrap());
    gradcheck("cat part 0", &x, &dxa, |v| {
        dot(&w, &CpuStorage::cat(&[&st(v), &st(&y)], &cd, 1).unwrap())
    });
    gradcheck("cat part 1", &y, &dya, |v| {
        dot(&w, &CpuStorage::cat(&[&st(&x), &st(v)], &cd, 1).unwrap())
    });
}

/// Attention with every feature on: key mask, causal, T5 bias, scale, and a row whose
/// keys are all masked (batch 1, query 0: causal allows keys 0..=2, the mask drops them).
#[test]
fn attention_q_k_v_bias() {
    attention_all_features(0.0);
}

/// The same with dropout on the probabilities: the mask is re-derived from the seed in
/// backward, so the gradient is that of the same dropped function.
#[test]
fn attention_q_k_v_bias_with_dropout() {
    attention_all_features(0.3);
}

fn attention_all_features(dropout: f32) {
    let s = AttnSpec {
        scale: 0.5,
        causal: true,
        dropout,
        seed: 77,
        ..attn(2, 3, 5, 7, 4)
    };
    let (nq, _) = attn_sizes(&s);
    let mut rng = Rng::new(9);
    let (q, k, v) = attn_inputs(&mut rng, &s);
    let bias = rng.vec(s.h * s.lq * s.lk, 1.0);
    let wo = rng.vec(nq, 1.0);
    let mask = ids(&[1, 1, 1, 1, 0, 1, 1, /* b1 */ 0, 0, 0, 1, 1, 0, 1]);
    let run = |q: &[f64], k: &[f64], v: &[f64], b: &[f64]| {
        let b = st(b);
        st(q)
            .attention(&st(k), &st(v), AttnArgs::new(Some(&mask), Some(&b), s))
            .unwrap()
    };
    let (out, lse) = run(&q, &k, &v, &bias);
    let l = vals(&lse);
    assert_eq!(
        l[s.h * s.lq],
        f64::NEG_INFINITY,
        "fully masked row must have lse = -inf"
    );
    let (b, w) = (st(&bias), st(&wo));
    let a = AttnArgs::new(Some(&mask), Some(&b), s);
    let (dq, dk, dv, db) = st(&q)
        .attention_backward(&st(&k), &st(&v), AttnSaved::new(&out, &lse, &w), a)
        .unwrap();
    let db = db.expect("dbias when bias is given");
    let f = |q: &[f64], k: &[f64], v: &[f64], b: &[f64]| dot(&wo, &run(q, k, v, b).0);
    gradcheck("attention dq", &q, &vals(&dq), |x| f(x, &k, &v, &bias));
    gradcheck("attention dk", &k, &vals(&dk), |x| f(&q, x, &v, &bias));
    gradcheck("attention dv", &v, &vals(&dv), |x| f(&q, &k, x, &bias));
    gradcheck("attention dbias", &bias, &vals(&db), |x| f(&q, &k, &v, x));
    for g in [&dq, &dk, &dv, &db] {
        assert!(vals(g).iter().all(|v| v.is_finite()), "non-finite gradient");
    }
    // The fully masked query (b 1, i 0) gets no gradient, in any head.
    let row = s.lq * s.h * s.d;
    assert!(vals(&dq)[row..row + s.h * s.d].iter().all(|&x| x == 0.0));
}

/// Without mask, bias or causal, and with lq > lk, to cover the plain BERT path.
#[test]
fn attention_plain() {
    let s = AttnSpec {
        scale: 1.0 / 5f32.sqrt(),
        ..attn(1, 2, 7, 3, 5)
    };
    let mut rng = Rng::new(10);
    let (q, k, v) = attn_inputs(&mut rng, &s);
    let w = rng.vec(attn_sizes(&s).0, 1.0);
    let a = AttnArgs::new(None, None, s);
    let run = |q: &[f64], k: &[f64], v: &[f64]| st(q).attention(&st(k), &st(v), a).unwrap();
    let (out, lse) = run(&q, &k, &v);
    let ws = st(&w);
    let (dq, dk, dv, db) = st(&q)
        .attention_backward(&st(&k), &st(&v), AttnSaved::new(&out, &lse, &ws), a)
        .unwrap();
    assert!(db.is_none());
    gradcheck("attention plain dq", &q, &vals(&dq), |x| {
        dot(&w, &run(x, &k, &v).0)
    });
    gradcheck("attention plain dk", &k, &vals(&dk), |x| {
        dot(&w, &run(&q, x, &v).0)
    });
    gradcheck("attention plain dv", &v, &vals(&dv), |x| {
        dot(&w, &run(&q, &k, x).0)
    });
}

/// Attention over one packed `[b, l, 3, h, d]` QKV buffer (the fused projection's
/// output): the packed gradient against finite differences, with mask, bias, causal and
/// dropout on, and equal to the separate call's gradients placed in the packed layout.
#[test]
fn attention_packed_qkv() {
    let mut rng = Rng::new(11);
    let s = AttnSpec {
        scale: 0.6,
        causal: true,
        dropout: 0.25,
        seed: 5,
        ..attn(2, 2, 5, 5, 3)
    };
    let (b, l, hd) = (s.b, s.lq, s.h * s.d);
    let qkv = rng.vec(b * l * 3 * hd, 1.0);
    let bias = rng.vec(s.h * l * l, 1.0);
    let wo = rng.vec(b * l * hd, 1.0);
    let mask = ids(&[1, 1, 0, 1, 1, /* b1 */ 1, 1, 1, 1, 0]);
    let run = |x: &[f64], bv: &[f64]| {
        let bv = st(bv);
        st(x)
            .attention_qkv(AttnArgs::new(Some(&mask), Some(&bv), s))
            .unwrap()
    };
    let (out, lse) = run(&qkv, &bias);
    let (bs, w) = (st(&bias), st(&wo));
    let a = AttnArgs::new(Some(&mask), Some(&bs), s);
    let saved = AttnSaved::new(&out, &lse, &w);
    let (dqkv, db) = st(&qkv).attention_qkv_backward(saved, a).unwrap();
    let db = db.expect("dbias when bias is given");
    gradcheck("attention packed dqkv", &qkv, &vals(&dqkv), |x| {
        dot(&wo, &run(x, &bias).0)
    });
    gradcheck("attention packed dbias", &bias, &vals(&db), |x| {
        dot(&wo, &run(&qkv, x).0)
    });
    // The same numbers as three separate tensors.
    let part = |j: usize| qkv_part(&qkv, b * l, hd, j);
    let (q, k, v) = (st(&part(0)), st(&part(1)), st(&part(2)));
    let (o2, lse2) = q.attention(&k, &v, a).unwrap();
    assert_eq!(vals(&o2), vals(&out), "packed and separate outputs differ");
    assert_eq!(vals(&lse2), vals(&lse));
    let (dq, dk, dv, _) = q
        .attention_backward(&k, &v, AttnSaved::new(&o2, &lse2, &w), a)
        .unwrap();
    let packed = qkv_pack([&vals(&dq), &vals(&dk), &vals(&dv)], b * l, hd);
    assert_eq!(
        packed,
        vals(&dqkv),
        "packed gradient is not [dq | dk | dv] per token"
    );
}
