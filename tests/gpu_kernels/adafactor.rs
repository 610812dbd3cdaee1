//! The multi-tensor Adafactor on the GPU (kernels/adafactor.cu through
//! `Adafactor::step`) against its per-tensor CUDA path and the CPU reference, over
//! factored (2-D, 3-D, a single row, rows wider than a chunk, many chunks) and 1-D
//! tensors in f16 (fp32 masters) and f32, more than one launch table, with loss scaling,
//! the global-norm clip, an inf and a NaN step that must change nothing, and each
//! configuration that changes the kernels' path (external lr; relative step with the
//! parameter scale and the first moment; weight decay).

use fusebox::optim::{Adafactor, AdafactorConfig};
use fusebox::DType;

use crate::common::*;
use crate::optim::{err_floor, host_vec, params, poison, Trio};

/// (name, dims, dtype): 40 tensors, so two launch tables of 32.
fn specs() -> Vec<(String, Vec<usize>, DType)> {
    let mut v: Vec<(String, Vec<usize>, DType)> = vec![
        ("shared.weight".into(), vec![1000, 96], DType::F16), // many chunks
        ("wide.weight".into(), vec![3, 20_000], DType::F32),  // rows wider than a chunk
        ("row.weight".into(), vec![1, 77], DType::F16),       // a single row
        ("conv.weight".into(), vec![3, 37, 5], DType::F16),   // three matrices
        ("q.weight".into(), vec![64, 33], DType::F32),
        ("q.bias".into(), vec![33], DType::F16),
        ("long.bias".into(), vec![40_001], DType::F32), // 1-D over several chunks
        ("layer_norm.weight".into(), vec![1], DType::F16),
    ];
    for i in 0..32 {
        let dt = if i % 3 == 0 { DType::F32 } else { DType::F16 };
        let dims = if i % 2 == 0 {
            vec![1 + i % 7, 2 + (i * 13) % 61]
        } else {
            vec![1 + (i * 37) % 301]
        };
        v.push((format!("extra.{i}.weight"), dims, dt));
    }
    v
}

fn configs() -> [(&'static str, AdafactorConfig, f64); 3] {
    [
        ("trainer", AdafactorConfig::trainer(0.0), 1e-3),
        (
            "relative_beta1",
            AdafactorConfig {
                beta1: Some(0.9),
                ..AdafactorConfig::default()
            },
            f64::NAN,
        ),
        (
            "wd_scaled",
            AdafactorConfig {
                scale_parameter: true,
                weight_decay: 0.1,
                clip_threshold: 0.5,
                ..AdafactorConfig::trainer(0.1)
            },
            1e-3,
        ),
    ]
}

#[test]
fn adafactor_multi_tensor_matches_per_tensor_and_cpu() {
    let Some(mut rng) = setup("adafactor_multi_tensor_matches_per_tensor_and_cpu") else {
        return;
    };
    let specs = specs();
    let n = |d: &[usize]| d.iter().product::<usize>();
    for (cname, cfg, lr) in configs() {
        let init: Vec<Vec<f32>> = specs.iter().map(|s| rng.normal(n(&s.1), 0.5)).collect();
        let decay = fusebox::optim::decays;
        let make = |dev| params(&specs, &init, dev);
        let mut trio = Trio::new(make, |p| Adafactor::new(p, cfg, decay));
        let scale = 1024.0f64;
        for step in 0..5 {
            let mut g: Vec<Vec<f32>> = specs
                .iter()
                .map(|s| rng.normal(n(&s.1), 0.5 * scale as f32 * (1 + step % 3) as f32))
                .collect();
            let skip = poison(&mut g, step, 1);
            let t = trio.step(&format!("{cname} step {step}"), (&g, skip), lr, scale);
            let Trio {
                sets: [pm, pp, pc],
                multi,
                cpu,
                ..
            } = &trio;
            if let (Some(a), Some(b)) = (multi.last_lr(), cpu.last_lr()) {
                assert!((a - b).abs() <= 1e-5 * b.abs(), "{cname}: lr {a} vs {b}");
            }
            let mut worst = [0.0f64; 3];
            for (k, (name, p)) in pm.iter().enumerate() {
                let got = host_vec(p);
                // f16 working copies may differ by one f16 ulp where the masters differ
                // in their last bits.
                let tol_w = if p.dtype() == DType::F16 { 2e-3 } else { 1e-5 };
                let e = [
                    err_floor(&got, &host_vec(&pp[k].1)),
                    err_floor(&got, &host_vec(&pc[k].1)),
                ];
                for (i, e) in e.into_iter().enumerate() {
                    worst[i] = worst[i].max(e);
                    assert!(
                        e <= tol_w,
                        "{cname} step {step} {name}: comparison {i} error {e:.3e}"
                    );
                }
                for kind in ["exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq", "exp_avg"] {
                    let (Some(a), Some(b)) = (multi.state(name, kind), cpu.state(name, kind))
                    else {
                        continue;
                    };
                    let e = rel_err(&host_vec(a), &host_vec(b));
                    worst[2] = worst[2].max(e);
                    assert!(
                        e <= 1e-5,
                        "{cname} step {step} {name} {kind}: error {e:.3e}"
                    );
                }
            }
            for (name, e) in ["vs_per_tensor", "vs_cpu", "state_vs_cpu"]
                .iter()
                .zip(worst)
            {
                let tol = if *name == "state_vs_cpu" { 1e-5 } else { 2e-3 };
                gpucheck(
                    &format!("adafactor_multi_{cname}_{name}_step{step}"),
                    &[pm.len()],
                    DType::F16,
                    e,
                    e <= tol,
                    t,
                );
            }
        }
        assert_eq!(
            trio.multi.steps(),
            3,
            "{cname}: three applied steps, two skipped"
        );
    }
}
