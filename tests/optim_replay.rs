//! AdamW + linear warmup/decay + global-norm clipping, and the dynamic loss scaler,
//! replayed against torch (tests/fixtures/adamw.safetensors, grad_scaler.json, made by
//! tools/fixtures/make_fixtures.py). The stored gradients are fed to our optimizer, so the
//! comparison measures the update rule alone.

mod common;

use common::{assert_close, get, load};
use fusebox::autograd::Grads;
use fusebox::optim::{decays, AdamW, AdamWConfig, LinearSchedule, LossScaler};
use fusebox::{DType, Tensor};

const NAMES: [&str; 4] = ["w0", "b0", "w1", "LayerNorm.weight"];

fn replay(prec: &str, dtype: DType, tol: f64) {
    let f = load("adamw.safetensors", dtype);
    let params: Vec<(String, Tensor)> = NAMES
        .iter()
        .map(|n| {
            (
                n.to_string(),
                Tensor::var(&get(&f, &format!("{prec}.{n}.init")).deep_clone().unwrap()),
            )
        })
        .collect();
    // The fixture's groups: decay for the matrices only (b0 plays a bias).
    let mut opt = AdamW::with_decay_rule(
        &params,
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        },
        |n| n.starts_with('w'),
    )
    .unwrap();
    let groups = opt.groups();
    assert_eq!(
        groups.iter().map(|g| g.1).collect::<Vec<_>>(),
        vec![0.01, 0.0, 0.01, 0.0]
    );
    let sched = LinearSchedule::new(1e-3, 2, 5);
    let lrs = get(&f, &format!("{prec}.lr")).to_vec_f64().unwrap();
    let norms = get(&f, &format!("{prec}.clip_norm")).to_vec_f64().unwrap();
    for step in 1..=4u64 {
        let lr = sched.lr_at(step - 1);
        assert!(
            (lr - lrs[step as usize - 1]).abs() <= 1e-7 * lr + 1e-15,
            "lr at step {step}: {lr} vs {}",
            lrs[step as usize - 1]
        );
        let mut grads = Grads::default();
        for (n, p) in &params {
            let g = get(&f, &format!("{n}.step{step}.grad"))
                .to_dtype(dtype)
                .unwrap();
            grads.insert(p, g.detach());
        }
        let out = opt.step(&grads, lr, 1.0, Some(1.0)).unwrap();
        assert!(!out.skipped);
        let want = norms[step as usize - 1];
        assert!(
            (out.grad_norm - want).abs() <= 1e-6 * want,
            "clip norm at step {step}: {} vs {want}",
            out.grad_norm
        );
        for (n, p) in &params {
            assert_close(
                &format!("{prec} {n} param after step {step}"),
                p,
                get(&f, &format!("{prec}.{n}.step{step}.param")),
                tol,
            );
            let (m, v) = opt.moments(n).unwrap();
            assert_close(
                &format!("{prec} {n} exp_avg after step {step}"),
                m,
                get(&f, &format!("{prec}.{n}.step{step}.exp_avg")),
                tol,
            );
            assert_close(
                &format!("{prec} {n} exp_avg_sq after step {step}"),
                v,
                get(&f, &format!("{prec}.{n}.step{step}.exp_avg_sq")),
                tol,
            );
        }
    }
}

#[test]
fn adamw_schedule_and_clipping_match_torch_f32() {
    replay("f32", DType::F32, 1e-6);
}

#[test]
fn adamw_schedule_and_clipping_match_torch_f64() {
    // Hyper-parameters travel as f32 to the backend step: 1e-7 relative is the floor.
    replay("f64", DType::F64, 1e-6);
}

#[test]
fn hf_decay_groups() {
    for n in [
        "distilbert.transformer.layer.0.sa_layer_norm.weight",
        "bert.embeddings.LayerNorm.weight",
        "encoder.block.0.layer.0.layer_norm.weight",
        "decoder.final_layer_norm.weight",
        "qa_outputs.bias",
    ] {
        assert!(!decays(n), "{n} must not decay");
    }
    for n in [
        "qa_outputs.weight",
        "shared.weight",
        "encoder.block.0.layer.1.DenseReluDense.wo.weight",
        "distilbert.transformer.layer.0.attention.q_lin.weight",
    ] {
        assert!(decays(n), "{n} must decay");
    }
}

#[test]
fn loss_scaler_matches_torch_grad_scaler() {
    let p = common::fixture("grad_scaler.json");
    let text = std::fs::read_to_string(&p).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = doc["cases"].as_object().unwrap();
    assert!(cases.len() >= 3);
    for (name, c) in cases {
        let num = |k: &str| c[k].as_f64().unwrap_or_else(|| panic!("{name}.{k}"));
        let arr = |k: &str| -> Vec<f64> {
            c[k].as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        };
        let mut s = LossScaler::new(
            num("init_scale"),
            num("growth_factor"),
            num("backoff_factor"),
            num("growth_interval") as u64,
        );
        let found = arr("found");
        let (after, tracker, taken) = (
            arr("scale_after"),
            arr("growth_tracker_after"),
            arr("step_taken"),
        );
        for i in 0..found.len() {
            let inf = found[i] != 0.0;
            assert_eq!(!inf, taken[i] == 1.0, "{name} step {i}: step taken");
            s.update(inf);
            assert_eq!(s.scale, after[i], "{name} step {i}: scale");
            assert_eq!(
                s.growth_tracker() as f64,
                tracker[i],
                "{name} step {i}: growth tracker"
            );
        }
    }
}
