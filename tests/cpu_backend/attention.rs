//! The CPU attention against a naive f64 reference, and the f16 emulation of the packed
//! layout (a module of tests/cpu_backend.rs).

use super::*;

/// Straightforward attention: per (b, h, i) a masked softmax over keys, in f64.
fn naive_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    mask: &[i32],
    bias: &[f64],
    s: &AttnSpec,
) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; s.b * s.lq * s.h * s.d];
    let mut lse = vec![0.0; s.b * s.h * s.lq];
    let qi = |b: usize, i: usize, h: usize, c: usize| ((b * s.lq + i) * s.h + h) * s.d + c;
    let ki = |b: usize, j: usize, h: usize, c: usize| ((b * s.lk + j) * s.h + h) * s.d + c;
    for b in 0..s.b {
        for h in 0..s.h {
            for i in 0..s.lq {
                let scores: Vec<Option<f64>> = (0..s.lk)
                    .map(|j| {
                        let visible = mask[b * s.lk + j] != 0
                            && (!s.causal || j as i64 <= i as i64 + s.lk as i64 - s.lq as i64);
                        visible.then(|| {
                            let dotp: f64 = (0..s.d)
                                .map(|c| q[qi(b, i, h, c)] * k[ki(b, j, h, c)])
                                .sum();
                            dotp * s.scale as f64 + bias[(h * s.lq + i) * s.lk + j]
                        })
                    })
                    .collect();
                let sum: f64 = scores.iter().flatten().map(|x| x.exp()).sum();
                lse[(b * s.h + h) * s.lq + i] = sum.ln(); // ln 0 = -inf for a masked row
                for (j, sc) in scores.iter().enumerate() {
                    if let Some(sc) = sc {
                        let p = sc.exp() / sum;
                        for c in 0..s.d {
                            out[qi(b, i, h, c)] += p * v[ki(b, j, h, c)];
                        }
                    }
                }
            }
        }
    }
    (out, lse)
}

#[test]
fn attention_forward() {
    let s = AttnSpec {
        scale: 0.5,
        causal: true,
        ..attn(2, 3, 5, 7, 4)
    };
    let mut rng = Rng::new(5);
    let (q, k, v) = attn_inputs(&mut rng, &s);
    let bias = rng.vec(s.h * s.lq * s.lk, 1.0);
    // Batch 1 masks keys 0..=2, so its query 0 (causal: keys <= 2) sees nothing.
    let mask = [1, 1, 1, 1, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1];
    let (ro, rl) = naive_attention(&q, &k, &v, &mask, &bias, &s);
    assert_eq!(rl[s.h * s.lq], f64::NEG_INFINITY);
    let run = |st: &dyn Fn(&[f64]) -> CpuStorage| {
        let (m, b) = (ids(&mask), st(&bias));
        st(&q)
            .attention(&st(&k), &st(&v), AttnArgs::new(Some(&m), Some(&b), s))
            .unwrap()
    };
    both("attention out", |st| run(st).0, &ro);
    both("attention lse", |st| run(st).1, &rl);
    let o = vals(&run(&f64s).0);
    let row0 = (s.lq * s.h) * s.d; // b = 1, i = 0
    assert!(
        o[row0..row0 + s.h * s.d].iter().all(|&x| x == 0.0),
        "masked row must be zero"
    );

    // No mask, no bias, not causal.
    let plain = AttnSpec {
        causal: false,
        scale: 1.0,
        ..s
    };
    let (ro, rl) = naive_attention(&q, &k, &v, &[1; 14], &vec![0.0; bias.len()], &plain);
    let (o, l) = f64s(&q)
        .attention(&f64s(&k), &f64s(&v), AttnArgs::new(None, None, plain))
        .unwrap();
    close("attention plain out", &vals(&o), &ro, 1e-12);
    close("attention plain lse", &vals(&l), &rl, 1e-12);
    // Causal with lq > lk: queries 0..=3 see no key at all (j <= i - 4).
    let tall = AttnSpec {
        causal: true,
        ..attn(1, 2, 7, 3, 5)
    };
    let (q2, k2, v2) = (rng.vec(70, 1.0), rng.vec(30, 1.0), rng.vec(30, 1.0));
    let (ro, rl) = naive_attention(&q2, &k2, &v2, &[1; 3], &[0.0; 42], &tall);
    let (o, l) = f64s(&q2)
        .attention(&f64s(&k2), &f64s(&v2), AttnArgs::new(None, None, tall))
        .unwrap();
    close("attention tall causal out", &vals(&o), &ro, 1e-12);
    close("attention tall causal lse", &vals(&l), &rl, 1e-12);
    assert_eq!(vals(&l).iter().filter(|x| x.is_infinite()).count(), 8);
    let short_mask = ids(&mask[..7]);
    assert!(f64s(&q)
        .attention(
            &f64s(&k),
            &f64s(&v),
            AttnArgs::new(Some(&short_mask), None, s)
        )
        .is_err());
    assert!(f64s(&q[1..])
        .attention(&f64s(&k), &f64s(&v), AttnArgs::new(None, None, s))
        .is_err());
}

/// The f16 emulation of the packed attention (one widened buffer) gives exactly what the
/// separate call gives on the three slices, forward and backward.
#[test]
fn packed_attention_f16_matches_separate() {
    let mut rng = Rng::new(21);
    let s = AttnSpec {
        scale: 0.5,
        dropout: 0.2,
        seed: 3,
        ..attn(2, 2, 6, 6, 4)
    };
    let (rows, hd) = (s.b * s.lq, s.h * s.d);
    let x: Vec<f64> = rng.vec(rows * 3 * hd, 1.0);
    let f16 = |v: &[f64]| f32s(v).cast(DType::F16).unwrap();
    let part = |j: usize| qkv_part(&x, rows, hd, j);
    let dout = f16(&rng.vec(rows * hd, 1.0));
    let mask = ids(&[1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0]);
    let packed = f16(&x);
    let a = AttnArgs::new(Some(&mask), None, s);
    let (o, lse) = packed.attention_qkv(a).unwrap();
    let (g, _) = packed
        .attention_qkv_backward(AttnSaved::new(&o, &lse, &dout), a)
        .unwrap();
    let (q, k, v) = (f16(&part(0)), f16(&part(1)), f16(&part(2)));
    let (o2, lse2) = q.attention(&k, &v, a).unwrap();
    let (dq, dk, dv, _) = q
        .attention_backward(&k, &v, AttnSaved::new(&o2, &lse2, &dout), a)
        .unwrap();
    assert_eq!(o.dtype(), DType::F16);
    assert_eq!(vals(&o), vals(&o2));
    let (dq, dk, dv) = (vals(&dq), vals(&dk), vals(&dv));
    assert_eq!(vals(&g), qkv_pack([&dq, &dk, &dv], rows, hd));
}
