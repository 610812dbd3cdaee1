//! The CPU AdamW step and the span search (a module of tests/cpu_backend.rs).

use super::*;

fn hp(step: u64, grad_scale: f64) -> AdamWStep {
    AdamWStep {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-6,
        weight_decay: 0.1,
        step,
        grad_scale,
        check_finite: true,
    }
}

#[test]
fn adamw_step() {
    // Third step with non-zero moments; expected values from torch's formula by hand
    // (p·(1−lr·wd), m = β1·m + (1−β1)·g, v = β2·v + (1−β2)·g², bias-corrected update),
    // evaluated in f64 (`AdamWStep` holds f64 hyper-parameters, as torch's Python floats).
    let mut p = f64s(&[1.0, 1.0]);
    let mut m = f64s(&[0.1, 0.1]);
    let mut v = f64s(&[0.02, 0.02]);
    // Second element: raw grad 1.0 with grad_scale 0.5 is the same scaled grad 0.5.
    let g = f64s(&[1.0, 1.0]);
    let mut w = f32s(&[0.0, 0.0]).cast(DType::F16).unwrap();
    let skipped = p
        .adamw_(
            &g,
            AdamWState::new(&mut m, &mut v, Some(&mut w)),
            &hp(3, 0.5),
        )
        .unwrap();
    assert!(!skipped);
    close("adamw p", &vals(&p), &[0.9930380085626146; 2], 1e-14);
    close("adamw m", &vals(&m), &[0.14; 2], 1e-14);
    close("adamw v", &vals(&v), &[0.0223; 2], 1e-14);
    assert!((w.to_vec_f64().unwrap()[0] - 0.993038).abs() < 1e-3);

    // F32 path agrees.
    let mut p32 = f32s(&[1.0]);
    let (mut m32, mut v32) = (f32s(&[0.1]), f32s(&[0.02]));
    p32.adamw_(
        &f32s(&[0.5]),
        AdamWState::new(&mut m32, &mut v32, None),
        &hp(3, 1.0),
    )
    .unwrap();
    close("adamw p f32", &vals(&p32), &[0.9930380085626146], 1e-6);

    // An inf (after scaling) anywhere: report it and change nothing.
    let g = f64s(&[0.5, f64::INFINITY]);
    let before = (vals(&p), vals(&m), vals(&v), w.to_vec_f64().unwrap());
    assert!(p
        .adamw_(
            &g,
            AdamWState::new(&mut m, &mut v, Some(&mut w)),
            &hp(4, 1.0)
        )
        .unwrap());
    assert_eq!(
        (vals(&p), vals(&m), vals(&v), w.to_vec_f64().unwrap()),
        before
    );
    let g = f64s(&[0.5, f64::NAN]);
    assert!(p
        .adamw_(&g, AdamWState::new(&mut m, &mut v, None), &hp(4, 1.0))
        .unwrap());
    assert_eq!(vals(&p), before.0);
    // Finite grad that overflows only once scaled.
    let g = f32s(&[3e38, 1.0]);
    let (mut p32, mut m32, mut v32) = (f32s(&[1.0, 1.0]), f32s(&[0.0; 2]), f32s(&[0.0; 2]));
    assert!(p32
        .adamw_(&g, AdamWState::new(&mut m32, &mut v32, None), &hp(1, 4.0))
        .unwrap());
    assert_eq!(vals(&p32), vec![1.0, 1.0]);

    assert!(p
        .adamw_(
            &f64s(&[0.5]),
            AdamWState::new(&mut m, &mut v, None),
            &hp(4, 1.0)
        )
        .is_err());
    assert!(p
        .adamw_(
            &f64s(&[0.5, 0.5]),
            AdamWState::new(&mut m, &mut v, None),
            &hp(0, 1.0)
        )
        .is_err());
}

#[test]
fn span_search_matches_brute_force() {
    let mut rng = Rng::new(7);
    let (rows, cols, max_len, top_k) = (2, 11, 4, 5);
    let s = rng.vec(rows * cols, 3.0);
    let e = rng.vec(rows * cols, 3.0);
    // Position 0 (CLS) and a question block are not allowed; CLS stays in the softmax.
    let allowed: Vec<i32> = (0..rows * cols)
        .map(|i| i32::from(i % cols >= 3 && i % cols != 8))
        .collect();
    let got = f64s(&s)
        .span_search(&f64s(&e), &ids(&allowed), cols, max_len, top_k)
        .unwrap();
    assert_eq!(got.len(), rows * top_k);
    for r in 0..rows {
        let keep = |i: usize| i == 0 || allowed[r * cols + i] != 0;
        let z = |x: &[f64]| {
            (0..cols)
                .filter(|&i| keep(i))
                .map(|i| x[r * cols + i].exp())
                .sum::<f64>()
        };
        let (zs, ze) = (z(&s), z(&e));
        let mut all = vec![];
        for i in 0..cols {
            for j in i..cols.min(i + max_len) {
                if allowed[r * cols + i] != 0 && allowed[r * cols + j] != 0 {
                    let sc = s[r * cols + i].exp() / zs * e[r * cols + j].exp() / ze;
                    all.push((sc, i, j));
                }
            }
        }
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mine: Vec<_> = got.iter().filter(|c| c.row == r).collect();
        for (c, want) in mine.iter().zip(&all) {
            assert_eq!((c.start, c.end), (want.1, want.2), "row {r}");
            assert!((c.score as f64 - want.0).abs() < 1e-6);
            let ls = s[r * cols + c.start] + e[r * cols + c.end];
            assert!((c.logit_sum as f64 - ls).abs() < 1e-5);
        }
    }
    assert!(f64s(&s)
        .span_search(&f64s(&e[1..]), &ids(&allowed), cols, max_len, top_k)
        .is_err());
}
