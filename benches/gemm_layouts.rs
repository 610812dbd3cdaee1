//! The `gemm` crate's f32 product for one shape in three layouts of its operands — both
//! row-major, the right operand stored transposed (`x · Wᵀ`, a linear layer's forward),
//! the left one stored transposed (`dyᵀ · x`, its weight gradient) — and the transposed
//! operands first copied row-major (the copy timed in). Best of 5, all threads. This is
//! the measurement behind `backend::cpu::scratch_len` (benches/RESULTS.md, sessions 11 and 13).
//!
//!     cargo bench --bench gemm_layouts -- 1536x768x3072 512x512x2048   # MxNxK ...

use std::time::Instant;

use fusebox::backend::cpu::{transpose_f32 as transpose, x_wt_f32};

/// `c (m × n, row-major) = a · b` with a's and b's (row, column) strides given.
#[allow(clippy::too_many_arguments)]
fn product(
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
    a: &[f32],
    (ars, acs): (isize, isize),
    b: &[f32],
    (brs, bcs): (isize, isize),
) {
    assert!(c.len() >= m * n && a.len() >= m * k && b.len() >= k * n);
    // SAFETY: the strides given address only the m·k, k·n and m·n elements checked above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            acs,
            ars,
            b.as_ptr(),
            bcs,
            brs,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

fn best_ms(mut f: impl FnMut()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    let shapes: Vec<(usize, usize, usize)> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .filter_map(|s| {
            let v: Vec<usize> = s.split('x').filter_map(|x| x.parse().ok()).collect();
            (v.len() == 3).then(|| (v[0], v[1], v[2]))
        })
        .collect();
    let shapes = if shapes.is_empty() {
        // DistilBERT-QA 4 × 384 (rows 1536) and T5-small 4 × 512 → 128 forward shapes.
        vec![
            (1536, 2304, 768),
            (1536, 768, 768),
            (1536, 3072, 768),
            (1536, 768, 3072),
            (2048, 512, 2048),
            (512, 512, 2048),
            (512, 32128, 512),
        ]
    } else {
        shapes
    };
    println!(
        "ms, best of 5: m n k | plain | rhs T | rhs T copied | lhs T | lhs T copied | rhs T few-row | rhs T swapped"
    );
    for (m, n, k) in shapes {
        let dims = (m, n, k);
        let (a, b) = (vec![0.5f32; m * k], vec![0.25f32; k * n]);
        let (mut c, mut t) = (vec![0f32; m * n], vec![0f32; (m * k).max(k * n)]);
        let row = |ld: usize| (ld as isize, 1);
        let col = |ld: usize| (1, ld as isize);
        let plain = best_ms(|| product(dims, &mut c, &a, row(k), &b, row(n)));
        let rt = best_ms(|| product(dims, &mut c, &a, row(k), &b, col(k)));
        let rc = best_ms(|| {
            transpose(&b, n, k, &mut t[..k * n]);
            product(dims, &mut c, &a, row(k), &t, row(n))
        });
        let lt = best_ms(|| product(dims, &mut c, &a, col(m), &b, row(n)));
        let lc = best_ms(|| {
            transpose(&a, k, m, &mut t[..m * k]);
            product(dims, &mut c, &t, row(k), &b, row(n))
        });
        // The CPU backend's own x · Wᵀ for 2..=16 rows (backend/cpu/skinny.rs).
        let few = if (2..=16).contains(&m) {
            format!("{:.2}", best_ms(|| x_wt_f32(&a, &b, dims, &mut c).unwrap()))
        } else {
            "-".into()
        };
        // x · Wᵀ as (W · xᵀ)ᵀ: gemm's n × m product of W (row-major) and xᵀ into a
        // row-major scratch, then transposed into the m × n output. (Written straight
        // through transposed strides instead, gemm runs it as slowly as "rhs T".)
        let mut sc = vec![0f32; m * n];
        let sw = best_ms(|| {
            product((n, m, k), &mut sc, &b, row(k), &a, col(k));
            transpose(&sc, n, m, &mut c[..m * n]);
        });
        println!(
            "{m} {n} {k} | {plain:.2} | {rt:.2} | {rc:.2} | {lt:.2} | {lc:.2} | {few} | {sw:.2}"
        );
    }
}
