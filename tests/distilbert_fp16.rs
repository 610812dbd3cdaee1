//! DistilBERT QA in fp16 on the CPU's emulation of CUDA's fp16 path: the tiny HF fixture
//! model loaded with f16 weights gives the f32 logits and loss to 1e-2, and mixed-precision
//! training (f16 working weights, f32 AdamW masters, dynamic loss scaling, dropout on)
//! follows the f32 run's loss to 1e-2 over a few steps. DistilBERT needs no overflow
//! guard (it was pretrained in fp32 and its activations stay small); this checks that the
//! whole fp16 model path — LayerNorm, GELU, fused attention, the QA loss — computes.
//! Dynamic loss scaling skips an overflowing step: a scale so large the f16 gradients
//! overflow leaves the weights, masters and moments untouched and halves the scale, and
//! the next step at the halved scale updates (with AdamW and with Adafactor). The same checks run on CUDA when a device
//! is present (skipped otherwise).

use fusebox::autograd::{backward, no_grad};
use fusebox::models::auto::load_qa_model;
use fusebox::models::qa::{QaBatch, QaModel};
use fusebox::nn::safetensors_io;
use fusebox::nn::Mode;
use fusebox::optim::{
    accumulate_and_step, AdafactorConfig, AdamW, AdamWConfig, LossScaler, OptimConfig, Optimizer,
};
use fusebox::{DType, Device, Tensor};

mod common;
use common::{assert_rel, cuda_device, fixture, fp16_training_follows_f32, rel_l2_f32};

/// The fixture model in `dtype` and its batch, or None (printed) without the fixture.
fn load(dev: Device, dtype: DType) -> Option<(Box<dyn QaModel>, QaBatch)> {
    let dir = fixture("models/distilbert_qa");
    let io = fixture("distilbert_qa_io.safetensors");
    if !dir.join("model.safetensors").exists() || !io.exists() {
        eprintln!("skipping: DistilBERT QA fixture missing (tools/fixtures/make_fixtures.py)");
        return None;
    }
    let model = load_qa_model(&dir, dev, dtype, 0).unwrap();
    let io = safetensors_io::load(&io, DType::F32, dev).unwrap();
    let batch = QaBatch {
        input_ids: io["input_ids"].clone(),
        attention_mask: io["attention_mask"].clone(),
        token_type_ids: None,
        start_positions: Some(io["start_positions"].clone()),
        end_positions: Some(io["end_positions"].clone()),
    };
    Some((model, batch))
}

fn eval_loss(m: &dyn QaModel, b: &QaBatch) -> (f64, Vec<f32>) {
    let _g = no_grad();
    let (s, e) = m.forward(b, Mode::eval()).unwrap();
    let loss = m.loss(&s, &e, b).unwrap();
    assert_eq!(
        loss.dtype(),
        DType::F32,
        "the QA loss is f32 for f16 logits"
    );
    let mut logits = s.to_vec_f32().unwrap();
    logits.extend(e.to_vec_f32().unwrap());
    (loss.to_scalar().unwrap(), logits)
}

fn forward_case(dev: Device) {
    let (Some((m32, b)), Some((m16, _))) = (load(dev, DType::F32), load(dev, DType::F16)) else {
        return;
    };
    let (l32, x32) = eval_loss(m32.as_ref(), &b);
    let (l16, x16) = eval_loss(m16.as_ref(), &b);
    let r = rel_l2_f32(&x16, &x32);
    assert!(r < 1e-2, "{dev:?}: fp16 logits rel L2 {r:e}");
    assert_rel(&format!("{dev:?}: fp16 loss vs f32"), l16, l32, 1e-2);
}

fn train_case(dev: Device) {
    fp16_training_follows_f32("DistilBERT", |dtype| {
        let (m, b) = load(dev, dtype)?;
        let params: Vec<(String, Tensor)> = m.params().trainable();
        let mut opt = AdamW::new(&params, AdamWConfig::default(), true).unwrap();
        let mut scaler = LossScaler::default();
        let (before, _) = eval_loss(m.as_ref(), &b);
        for step in 0..4 {
            let (s, e) = m.forward(&b, Mode::train(step)).unwrap();
            let loss = m.loss(&s, &e, &b).unwrap();
            assert!(
                loss.to_scalar().unwrap().is_finite(),
                "{dtype:?} step {step}"
            );
            let grads = backward(&loss.scale(scaler.scale).unwrap()).unwrap();
            for (name, p) in &params {
                if let Some(g) = grads.get(p) {
                    assert_eq!(g.dtype(), dtype, "{name}: gradient dtype");
                }
            }
            let out = opt
                .step(&grads, 1e-3, scaler.inv_scale(), Some(1.0))
                .unwrap();
            assert!(
                !out.skipped,
                "{dtype:?} step {step}: skipped (non-finite gradient)"
            );
            scaler.update(out.skipped);
        }
        let (after, _) = eval_loss(m.as_ref(), &b);
        println!("DistilBERT {dtype:?} on {dev:?}: loss {before} -> {after}");
        assert!(
            after.is_finite() && after < before,
            "{dtype:?}: {before} -> {after}"
        );
        Some(after)
    });
}

/// Every weight, master and moment, as f32 values, by name.
fn snapshot(params: &[(String, Tensor)], opt: &Optimizer) -> Vec<(String, Vec<f32>)> {
    let mut all: Vec<(String, Vec<f32>)> = params
        .iter()
        .map(|(n, p)| (n.clone(), p.to_vec_f32().unwrap()))
        .collect();
    for (n, t) in opt.state_tensors() {
        all.push((n, t.to_vec_f32().unwrap()));
    }
    all
}

/// The overflow check with `config`'s optimizer (both share the skip, `optim/slots.rs`).
fn overflow_case(dev: Device, config: OptimConfig) {
    let Some((m, b)) = load(dev, DType::F16) else {
        return;
    };
    let params: Vec<(String, Tensor)> = m.params().trainable();
    let mut opt = Optimizer::new(&params, config).unwrap();
    let what = format!("{dev:?} {}", config.name());
    // 2^40: the scaled loss fits in f32, its f16 gradients do not.
    let mut scaler = LossScaler::new(2f64.powi(40), 2.0, 0.5, 2000);
    let step = |opt: &mut Optimizer, scaler: &mut LossScaler, seed: u64| {
        let shares = [0.5, 0.5];
        let report = accumulate_and_step(opt, Some(&*scaler), 1e-3, Some(1.0), &shares, |i| {
            let (s, e) = m.forward(&b, Mode::train(seed + i as u64))?;
            m.loss(&s, &e, &b)
        })
        .unwrap();
        scaler.update(report.outcome.skipped);
        report
    };
    let before = snapshot(&params, &opt);
    let report = step(&mut opt, &mut scaler, 1);
    assert!(report.loss.is_finite(), "{what}: the loss itself is finite");
    assert!(
        report.outcome.skipped,
        "{what}: f16 gradients at 2^40 overflow"
    );
    assert_eq!(scaler.scale, 2f64.powi(39), "{what}: the scale halves");
    assert_eq!(scaler.skipped, 1);
    assert_eq!(opt.steps(), 0, "{what}: no update counted");
    for ((name, a), (_, b)) in before.iter().zip(&snapshot(&params, &opt)) {
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{what}: {name} changed in a skipped step"
        );
    }
    // At the default scale the same batch updates.
    scaler.scale = 65536.0;
    let report = step(&mut opt, &mut scaler, 2);
    assert!(!report.outcome.skipped, "{what}: a clean step at 2^16");
    assert_eq!(opt.steps(), 1);
    let after = snapshot(&params, &opt);
    assert_ne!(before[0].1, after[0].1, "{what}: {} unchanged", before[0].0);
}

#[test]
fn fp16_forward_matches_f32() {
    forward_case(Device::Cpu);
}

#[test]
fn fp16_training_steps_follow_f32() {
    train_case(Device::Cpu);
}

#[test]
fn fp16_overflow_skips_the_step_and_halves_the_scale() {
    for config in optimizers() {
        overflow_case(Device::Cpu, config);
    }
}

fn optimizers() -> [OptimConfig; 2] {
    let adafactor = AdafactorConfig {
        beta1: Some(0.9),
        ..AdafactorConfig::default()
    };
    [OptimConfig::default(), OptimConfig::Adafactor(adafactor)]
}

#[test]
fn fp16_forward_and_training_on_gpu() {
    let Some(dev) = cuda_device("the GPU DistilBERT fp16 test") else {
        return;
    };
    forward_case(dev);
    train_case(dev);
    for config in optimizers() {
        overflow_case(dev, config);
    }
}
