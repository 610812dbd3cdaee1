//! BART and Marian in fp16 on the CPU's emulation of CUDA's fp16 path (f32 math, f16
//! stores, overflow where CUDA overflows), and on CUDA when a device is present.
//!
//! BART and Marian are post-LN (every residual sum is normalised right away) and were
//! trained in fp32 / fp16, so unlike T5 they need no f32 residual stream: the weights,
//! activations and gradients are f16, the norms and the loss accumulate in f32. The tiny
//! fixture models, with their weights rounded to f16 so that both precisions hold the
//! same numbers, give:
//! - the f32 logits and loss to 1e-2, and the K/V-cached decoder the full one's logits;
//! - finite f16 gradients under a loss scale, within 5e-2 (relative L2) of the f32 ones;
//! - mixed-precision training (f16 working weights, f32 AdamW masters, dynamic loss
//!   scaling) whose loss follows the f32 run's to 1e-2 over a few steps.

use std::collections::BTreeMap;
use std::path::PathBuf;

use fusebox::autograd::no_grad;
use fusebox::models::bart::BartForConditionalGeneration;
use fusebox::models::seq2seq::Seq2SeqLm;
use fusebox::nn::safetensors_io;
use fusebox::nn::Mode;
use fusebox::optim::{AdamW, AdamWConfig, LossScaler};
use fusebox::{DType, Device, Tensor};

mod common;
use common::parity::unscaled_grads;
use common::parity::{assert_rel_l2_1e2, check_cached_decoding, check_fp16_gradients, f32s};
use common::{assert_rel, cuda_device, fixture, fp16_training_follows_f32, rel_l2, scaled_step};

const MODELS: [&str; 2] = ["bart_tiny", "marian_tiny"];
/// As GradScaler would scale the loss: keeps small f16 gradients from flushing to zero.
const LOSS_SCALE: f64 = 1024.0;

/// A copy of fixture `name` with every weight rounded to f16 (written once per process),
/// or None (printed) without the fixture.
fn rounded_dir(name: &str) -> Option<PathBuf> {
    let src = fixture(&format!("models/{name}"));
    if !src.join("model.safetensors").exists() {
        eprintln!("skipping {name}: fixture missing (tools/fixtures/make_fixtures.py bart)");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("fusebox_bart_fp16_{}_{name}", std::process::id()));
    if !dir.join("model.safetensors").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "generation_config.json"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        let w =
            safetensors_io::load(&src.join("model.safetensors"), DType::F32, Device::Cpu).unwrap();
        let rounded: BTreeMap<String, Tensor> = w
            .into_iter()
            .map(|(k, t)| {
                (
                    k,
                    t.to_dtype(DType::F16)
                        .unwrap()
                        .to_dtype(DType::F32)
                        .unwrap(),
                )
            })
            .collect();
        let tmp = dir.join("model.safetensors.tmp");
        safetensors_io::save(&tmp, &rounded, None).unwrap();
        std::fs::rename(&tmp, dir.join("model.safetensors")).unwrap();
    }
    Some(dir)
}

struct Batch {
    ids: Tensor,
    mask: Tensor,
    labels: Tensor,
}

fn batch(name: &str, dev: Device) -> Batch {
    let io =
        safetensors_io::load(&fixture(&format!("{name}_io.safetensors")), DType::F32, dev).unwrap();
    Batch {
        ids: io["input_ids"].clone(),
        mask: io["attention_mask"].clone(),
        labels: io["labels"].clone(),
    }
}

fn load(name: &str, dev: Device, dtype: DType) -> Option<(BartForConditionalGeneration, Batch)> {
    let dir = rounded_dir(name)?;
    let m = BartForConditionalGeneration::load(&dir, dev, dtype).unwrap();
    Some((m, batch(name, dev)))
}

/// (loss, logits, every parameter gradient unscaled, in name order).
fn loss_logits_grads(m: &BartForConditionalGeneration, b: &Batch) -> (f64, Vec<f64>, Vec<f64>) {
    let (loss, logits) = m
        .loss(&b.ids, Some(&b.mask), &b.labels, Mode::Eval)
        .unwrap();
    assert_eq!(loss.dtype(), DType::F32, "the loss is f32 for f16 logits");
    let l = loss.to_scalar().unwrap();
    let x = logits.to_vec_f64().unwrap();
    let g = unscaled_grads(m, &loss, LOSS_SCALE);
    (l, x, g)
}

fn forward_case(dev: Device) {
    for name in MODELS {
        let (Some((m32, b)), Some((m16, _))) =
            (load(name, dev, DType::F32), load(name, dev, DType::F16))
        else {
            return;
        };
        let what = format!("{name} on {dev:?}");
        let (l32, x32, g32) = loss_logits_grads(&m32, &b);
        let (l16, x16, g16) = loss_logits_grads(&m16, &b);
        assert_rel(&format!("{what}: fp16 loss vs f32"), l16, l32, 1e-2);
        let r = rel_l2(&x16, &x32);
        assert!(r < 1e-2, "{what}: fp16 logits rel L2 {r:e}");
        let rg = check_fp16_gradients(&what, &g16, &g32);
        println!("{what}: loss f32 {l32} fp16 {l16}; logits rel L2 {r:e}, gradients {rg:e}");

        // Generation's cached decoder in f16.
        let _g = no_grad();
        let dec_in = m16.shift_right(&b.labels).unwrap();
        let full = f32s(
            &m16.forward(&b.ids, Some(&b.mask), &dec_in, Mode::Eval)
                .unwrap(),
        );
        let inputs = [&b.ids, &b.mask, &dec_in];
        check_cached_decoding(&what, &m16, inputs, &full, assert_rel_l2_1e2);
    }
}

fn eval_loss(m: &BartForConditionalGeneration, b: &Batch) -> f64 {
    let _g = no_grad();
    m.loss(&b.ids, Some(&b.mask), &b.labels, Mode::Eval)
        .unwrap()
        .0
        .to_scalar()
        .unwrap()
}

fn train_case(dev: Device) {
    for name in MODELS {
        fp16_training_follows_f32(name, |dtype| {
            let (m, b) = load(name, dev, dtype)?;
            let params = m.trainable();
            let mut opt = AdamW::new(&params, AdamWConfig::default(), true).unwrap();
            let mut scaler = LossScaler::default();
            let before = eval_loss(&m, &b);
            for step in 0..4 {
                let (loss, _) = m
                    .loss(&b.ids, Some(&b.mask), &b.labels, Mode::train(step))
                    .unwrap();
                assert!(
                    loss.to_scalar().unwrap().is_finite(),
                    "{name} {dtype:?} step {step}"
                );
                let out = scaled_step(&mut opt, &mut scaler, &loss, 1e-3);
                assert!(
                    !out.skipped,
                    "{name} {dtype:?} step {step}: skipped (non-finite gradient)"
                );
            }
            let after = eval_loss(&m, &b);
            println!("{name} {dtype:?} on {dev:?}: loss {before} -> {after}");
            assert!(
                after.is_finite() && after < before,
                "{name} {dtype:?}: {before} -> {after}"
            );
            Some(after)
        });
    }
}

#[test]
fn fp16_forward_gradients_and_cache_follow_f32() {
    forward_case(Device::Cpu);
}

#[test]
fn fp16_training_steps_follow_f32() {
    train_case(Device::Cpu);
}

#[test]
fn fp16_on_gpu() {
    let Some(dev) = cuda_device("the GPU BART / Marian fp16 test") else {
        return;
    };
    forward_case(dev);
    train_case(dev);
}
