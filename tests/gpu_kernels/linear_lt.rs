//! `linear` with a bias on CUDA through the cuBLASLt epilogues (backend/cuda/blaslt.rs:
//! BIAS forward, BGRADB for the bias gradient in the weight-gradient GEMM) against the
//! CPU composition (GEMM + add_bias, GEMM + sum_rows), forward and all three gradients,
//! in f32 and f16, at odd shapes, the QA head's 2 outputs and DistilBERT's FFN sizes
//! (and one row, which the fused path declines: the fallback is checked there too).
//! The check also requires that the fused path actually ran (its call counter moved),
//! so a silent fallback to the old kernels cannot pass for it.

use std::time::Instant;

use fusebox::autograd::backward;
use fusebox::backend::cuda::blaslt;
use fusebox::{DType, Device, Tensor};
use half::f16;

use crate::common::*;

/// Round through f16 when `dt` is F16 (the reference then sees the device's inputs).
fn rounded(v: &[f32], dt: DType) -> Vec<f32> {
    match dt {
        DType::F16 => v.iter().map(|&x| f16::from_f32(x).to_f32()).collect(),
        _ => v.to_vec(),
    }
}

fn on(v: &[f32], shape: &[usize], dt: DType, dev: Device) -> Tensor {
    let t = ok(Tensor::from_f32(v.to_vec(), shape.to_vec(), dev));
    if dt == DType::F16 {
        ok(t.to_dtype(DType::F16))
    } else {
        t
    }
}

#[test]
fn linear_bias_epilogues_match_the_cpu() {
    let Some(mut rng) = setup("linear_bias_epilogues_match_the_cpu") else {
        return;
    };
    let shapes: [(usize, usize, usize); 6] = [
        (1, 8, 8),
        (37, 19, 23),
        (64, 768, 2),
        (130, 64, 96),
        (1536, 768, 3072),
        (1536, 3072, 768),
    ];
    let before = blaslt::fused_calls();
    for dt in DTS {
        for &(rows, fin, fout) in &shapes {
            if !keep(rows * fout.max(fin)) {
                continue;
            }
            let t = Instant::now();
            let x = rounded(&rng.normal(rows * fin, 1.0), dt);
            let w = rounded(&rng.normal(fout * fin, 1.0 / (fin as f32).sqrt()), dt);
            let b = rounded(&rng.normal(fout, 0.5), dt);
            let g = rounded(&rng.normal(rows * fout, 1.0), dt);
            let run = |dev: Device, dt: DType| {
                let xv = Tensor::var(&on(&x, &[rows, fin], dt, dev));
                let wv = Tensor::var(&on(&w, &[fout, fin], dt, dev));
                let bv = Tensor::var(&on(&b, &[fout], dt, dev));
                let y = ok(xv.linear(&wv, Some(&bv)));
                // loss = Σ y ⊙ g, so the upstream gradient is g.
                let gt = on(&g, &[rows, fout], dt, dev);
                let loss = ok(ok(ok(y.mul(&gt)).to_dtype(DType::F32)).sum_all());
                let grads = ok(backward(&loss));
                let get = |v: &Tensor| {
                    let gr = grads.get(v).expect("gradient");
                    ok(ok(gr.to_dtype(DType::F32)).to_vec_f32())
                };
                let yv = ok(ok(y.to_dtype(DType::F32)).to_vec_f32());
                (yv, get(&xv), get(&wv), get(&bv))
            };
            let want = run(Device::Cpu, DType::F32);
            let got = run(Device::Cuda(0), dt);
            let name = |what: &str| format!("linear_lt_{what}");
            let shape = [rows, fin, fout];
            check_vec(&name("fwd"), &shape, dt, &got.0, &want.0, 0.0, t);
            check_vec(&name("dx"), &shape, dt, &got.1, &want.1, 0.0, t);
            check_vec(&name("dw"), &shape, dt, &got.2, &want.2, 0.0, t);
            check_vec(&name("db"), &shape, dt, &got.3, &want.3, 0.0, t);
        }
    }
    let fused = blaslt::fused_calls() - before;
    println!("cuBLASLt epilogue GEMMs run: {fused}");
    let off = std::env::var("FUSEBOX_NO_LT").is_ok_and(|v| v == "1");
    assert!(
        off || fused > 0,
        "the cuBLASLt epilogue path never ran (declined for every shape)"
    );
}
