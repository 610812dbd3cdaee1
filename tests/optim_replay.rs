//! AdamW + linear warmup/decay + global-norm clipping, and the dynamic loss scaler,
//! replayed against torch (tests/fixtures/adamw.safetensors, grad_scaler.json, made by
//! tools/fixtures/make_fixtures.py); transformers' Adafactor under four configurations
//! (tests/fixtures/adafactor.safetensors, tools/fixtures/make_adafactor_ref.py). The
//! stored gradients are fed to our optimizer, so the comparison measures the update rule
//! alone.

mod common;

use common::{assert_close, get, load};
use fusebox::autograd::Grads;
use fusebox::optim::{decays, AdamW, AdamWConfig, LinearSchedule, LossScaler};
use fusebox::optim::{Adafactor, AdafactorConfig};
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

const AF_NAMES: [&str; 3] = ["w2", "w3", "b"];

/// The fixture's configurations as transformers' arguments, with the external lr.
fn adafactor_config(name: &str) -> (AdafactorConfig, f64) {
    let fixed = AdafactorConfig {
        relative_step: false,
        scale_parameter: false,
        warmup_init: false,
        ..AdafactorConfig::default()
    };
    match name {
        "t5" => (fixed, 1e-3),
        "default" => (AdafactorConfig::default(), f64::NAN),
        "beta1" => (
            AdafactorConfig {
                beta1: Some(0.9),
                warmup_init: true,
                ..AdafactorConfig::default()
            },
            f64::NAN,
        ),
        "wd" => (
            AdafactorConfig {
                scale_parameter: true,
                weight_decay: 0.1,
                clip_threshold: 0.5,
                ..fixed
            },
            1e-3,
        ),
        _ => unreachable!("no configuration {name}"),
    }
}

fn af_params(
    f: &std::collections::BTreeMap<String, Tensor>,
    dtype: DType,
) -> Vec<(String, Tensor)> {
    AF_NAMES
        .iter()
        .map(|n| {
            let init = get(f, &format!("{n}.init"))
                .deep_clone()
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            (n.to_string(), Tensor::var(&init))
        })
        .collect()
}

/// The gradients `g` holds for `from` (in order), in f32, as gradients of `to`.
fn as_f32_grads(g: &Grads, from: &[(String, Tensor)], to: &[(String, Tensor)]) -> Grads {
    let mut out = Grads::default();
    for ((_, a), (_, b)) in to.iter().zip(from) {
        out.insert(a, g.get(b).unwrap().to_dtype(DType::F32).unwrap());
    }
    out
}

fn af_grads(
    f: &std::collections::BTreeMap<String, Tensor>,
    params: &[(String, Tensor)],
    step: usize,
) -> Grads {
    let mut grads = Grads::default();
    for (n, p) in params {
        let g = get(f, &format!("{n}.step{step}.grad"))
            .to_dtype(p.dtype())
            .unwrap();
        grads.insert(p, g.detach());
    }
    grads
}

#[test]
fn adafactor_matches_transformers() {
    let f = load("adafactor.safetensors", DType::F32);
    for cfg_name in ["t5", "default", "beta1", "wd"] {
        let (cfg, lr) = adafactor_config(cfg_name);
        let params = af_params(&f, DType::F32);
        // One group, every setting on every tensor (as the fixture's optimizer has it).
        let mut opt = Adafactor::new(&params, cfg, |_| true).unwrap();
        let lrs = get(&f, &format!("{cfg_name}.lr")).to_vec_f64().unwrap();
        for step in 1..=5usize {
            let out = opt
                .step(&af_grads(&f, &params, step), lr, 1.0, None)
                .unwrap();
            assert!(!out.skipped);
            let (got, want) = (opt.last_lr().unwrap(), lrs[step - 1]);
            assert!(
                (got - want).abs() <= 1e-6 * want,
                "{cfg_name}: step size at step {step}: {got} vs {want}"
            );
            for (n, p) in &params {
                let at = format!("{cfg_name}.{n}.step{step}");
                assert_close(
                    &format!("{at} param"),
                    p,
                    get(&f, &format!("{at}.param")),
                    1e-6,
                );
                let kinds: &[&str] = match (n.as_str(), cfg.beta1) {
                    ("b", None) => &["exp_avg_sq"],
                    ("b", Some(_)) => &["exp_avg_sq", "exp_avg"],
                    (_, None) => &["exp_avg_sq_row", "exp_avg_sq_col"],
                    (_, Some(_)) => &["exp_avg_sq_row", "exp_avg_sq_col", "exp_avg"],
                };
                for k in kinds {
                    let mine = opt.state(n, k).unwrap_or_else(|| panic!("{at}: no {k}"));
                    assert_close(
                        &format!("{at} {k}"),
                        mine,
                        get(&f, &format!("{at}.{k}")),
                        1e-6,
                    );
                }
            }
        }
        assert_eq!(opt.steps(), 5);
    }
}

/// fp16 parameters train through fp32 masters and fp32 state: the masters follow the
/// f32 run exactly (the CPU's f16 path is an emulation of CUDA's), and the working copy
/// is the master rounded to f16. A state saved after three steps and loaded into a fresh
/// optimizer continues exactly as the uninterrupted one (what a resumed run relies on).
#[test]
fn adafactor_masters_and_state_resume() {
    let f = load("adafactor.safetensors", DType::F32);
    let (cfg, lr) = adafactor_config("wd");
    let cfg = AdafactorConfig {
        beta1: Some(0.9),
        ..cfg
    };
    let p32 = af_params(&f, DType::F32);
    // The f16 run starts from the f16-rounded values, so the f32 run does too.
    for (_, p) in &p32 {
        let r = p
            .to_dtype(DType::F16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        p.storage_mut().copy_from_(&r.storage()).unwrap();
    }
    let p16: Vec<(String, Tensor)> = p32
        .iter()
        .map(|(n, p)| (n.clone(), Tensor::var(&p.to_dtype(DType::F16).unwrap())))
        .collect();
    let mut o32 = Adafactor::new(&p32, cfg, |_| true).unwrap();
    let mut o16 = Adafactor::new(&p16, cfg, |_| true).unwrap();
    let mut saved = None;
    for step in 1..=5 {
        // Both from the same f16-representable gradients.
        let g16 = af_grads(&f, &p16, step);
        let g32 = as_f32_grads(&g16, &p16, &p32);
        o32.step(&g32, lr, 1.0, Some(1.0)).unwrap();
        o16.step(&g16, lr, 1.0, Some(1.0)).unwrap();
        let (s32, s16) = (o32.state_tensors(), o16.state_tensors());
        assert_eq!(
            s32.keys().collect::<Vec<_>>(),
            s16.keys().collect::<Vec<_>>()
        );
        for (k, t) in &s32 {
            assert_eq!(
                s16[k].dtype(),
                DType::F32,
                "{k}: fp32 state for an fp16 parameter"
            );
            assert_eq!(
                t.to_vec_f32().unwrap(),
                s16[k].to_vec_f32().unwrap(),
                "{k} at step {step}"
            );
        }
        for ((n, a), (_, b)) in p32.iter().zip(&p16) {
            let rounded = a.to_dtype(DType::F16).unwrap().to_vec_f32().unwrap();
            assert_eq!(
                b.to_vec_f32().unwrap(),
                rounded,
                "{n}: working copy at step {step}"
            );
        }
        if step == 3 {
            saved = Some(
                s32.into_iter()
                    .map(|(k, t)| (k, t.deep_clone().unwrap()))
                    .collect(),
            );
        }
    }
    // Resume from step 3 into a fresh model and optimizer.
    let saved: std::collections::BTreeMap<String, Tensor> = saved.unwrap();
    let fresh = af_params(&f, DType::F32);
    let mut o = Adafactor::new(&fresh, cfg, |_| true).unwrap();
    o.load_state(&saved).unwrap();
    o.set_steps(3);
    for step in 4..=5 {
        let g = as_f32_grads(&af_grads(&f, &p16, step), &p16, &fresh);
        o.step(&g, lr, 1.0, Some(1.0)).unwrap();
    }
    for (k, t) in o.state_tensors() {
        assert_eq!(
            t.to_vec_f32().unwrap(),
            o32.state_tensors()[&k].to_vec_f32().unwrap(),
            "resumed {k}"
        );
    }
    // A state of another shape is refused, naming the tensor.
    let mut bad = saved.clone();
    bad.insert(
        "exp_avg_sq_row.w2".into(),
        Tensor::from_f32(vec![0.0; 3], [3], fusebox::Device::Cpu).unwrap(),
    );
    let e = o.load_state(&bad).unwrap_err().to_string();
    assert!(
        e.contains("exp_avg_sq_row.w2") && e.contains("shape"),
        "{e}"
    );
}
