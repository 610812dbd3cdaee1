//! fp16 training stability on the GPU: 500 steps of DistilBERT-QA (distilbert-base
//! sizes, 8 x 384) and of T5-small (t5-small sizes, 8 x 512 -> 128), random init, fresh
//! random tokens every step, with the real optimizer path (multi-tensor AdamW, clip 1.0,
//! weight decay 0.01), the dynamic loss scaler and the linear warmup/decay schedule, as
//! src/train.rs drives a step.
//!
//! Why it exists: the kernel tests compare one op at a time; an fp16 run can still drift
//! into inf/NaN over hundreds of steps (T5 was pretrained in bf16 and is known to
//! overflow in fp16). Asserted: every loss finite, weights finite (every 100 steps and at
//! the end), at most 20 skipped steps, no long run of skips, and a loss scale that
//! recovers (the final scale is at least half the scale reached after the first
//! backoffs). The scaler's growth interval is 100 instead of torch's 2000 so that growth
//! after a backoff happens inside 500 steps. On paper an H100 does a DistilBERT step at
//! 8 x 384 in ~6 ms and a T5-small step at 8 x 512 -> 128 in ~15 ms: ~15 s in all.
//! FUSEBOX_STABILITY_STEPS=<n> changes the step count.

use std::time::Instant;

use fusebox::autograd::backward;
use fusebox::models::distilbert::{DistilBertConfig, DistilBertForQa};
use fusebox::models::qa::{QaBatch, QaModel};
use fusebox::models::seq2seq::Seq2SeqLm;
use fusebox::models::t5::{T5Config, T5ForConditionalGeneration};
use fusebox::nn::Mode;
use fusebox::optim::{AdamW, AdamWConfig, LinearSchedule, LossScaler};
use fusebox::{DType, Device, Result, Tensor};

use crate::common::*;
use fusebox::backend::cuda;

/// The test's context, or None (after printing why) under FUSEBOX_TEST_SMALL=1
/// (compute-sanitizer runs: far too slow there) or without a GPU. Allocation poisoning
/// is off: a memset per allocation would time the memsets, not training.
fn start(test: &str) -> Option<Gpu> {
    if std::env::var("FUSEBOX_TEST_SMALL").is_ok_and(|v| v == "1") {
        println!("SKIP {test}: FUSEBOX_TEST_SMALL=1");
        return None;
    }
    let gpu = setup(test)?;
    cuda::set_poison(false);
    Some(gpu)
}

fn steps() -> usize {
    std::env::var("FUSEBOX_STABILITY_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500)
}

/// What a run saw, for the assertions and the summary line.
struct Run {
    losses: Vec<f64>,
    skipped: Vec<bool>,
    scales: Vec<f64>,
}

fn weights_finite(params: &[(String, Tensor)]) -> Option<String> {
    params
        .iter()
        .find(|(_, t)| ok(t.storage().has_non_finite()))
        .map(|(n, _)| n.clone())
}

/// The training loop of src/train.rs for one micro-batch per step: loss, scale,
/// backward, AdamW with the scheduled lr, scaler update.
fn train(
    params: &[(String, Tensor)],
    lr: f64,
    n: usize,
    mut loss_of: impl FnMut(usize) -> Result<Tensor>,
) -> Run {
    let mut opt = ok(AdamW::new(
        params,
        AdamWConfig {
            lr,
            weight_decay: 0.01,
            ..AdamWConfig::default()
        },
        true,
    ));
    let sched = LinearSchedule::from_ratio(lr, 0.1, n as u64);
    // torch's GradScaler constants except the growth interval (see the module comment).
    let mut scaler = LossScaler::new(65536.0, 2.0, 0.5, 100);
    let mut run = Run {
        losses: Vec::with_capacity(n),
        skipped: Vec::with_capacity(n),
        scales: Vec::with_capacity(n),
    };
    for step in 0..n {
        let loss = ok(loss_of(step));
        let grads = ok(backward(&ok(loss.scale(scaler.scale))));
        let out = ok(opt.step(
            &grads,
            sched.lr_at(step as u64),
            scaler.inv_scale(),
            Some(1.0),
        ));
        scaler.update(out.skipped);
        let l = ok(loss.to_scalar());
        assert!(l.is_finite(), "step {step}: loss {l}");
        run.losses.push(l);
        run.skipped.push(out.skipped);
        run.scales.push(scaler.scale);
        if step % 100 == 99 {
            if let Some(bad) = weights_finite(params) {
                panic!("step {step}: non-finite weights in {bad}");
            }
        }
    }
    if let Some(bad) = weights_finite(params) {
        panic!("non-finite weights in {bad} after {n} steps");
    }
    run
}

fn judge(model: &str, run: &Run, secs: f64) {
    let n = run.losses.len();
    let skips = run.skipped.iter().filter(|&&s| s).count();
    let longest = run
        .skipped
        .split(|s| !s)
        .map(|r| r.len())
        .max()
        .unwrap_or(0);
    // Scale after the first run of backoffs (the calibration down from 2^16).
    let first_clean_after_skip = run
        .skipped
        .iter()
        .position(|&s| s)
        .and_then(|i| run.skipped[i..].iter().position(|&s| !s).map(|j| i + j));
    let calibrated = first_clean_after_skip
        .map(|i| run.scales[i])
        .unwrap_or(LossScaler::default().scale);
    let last_scale = run.scales.last().copied().unwrap_or(0.0);
    let (first, last) = (
        run.losses.first().copied().unwrap_or(f64::NAN),
        run.losses.last().copied().unwrap_or(f64::NAN),
    );
    println!(
        "STABILITY model={model} steps={n} skips={skips} longest_skip_run={longest} \
         first_loss={first:.4} last_loss={last:.4} loss_scale_final={last_scale} \
         loss_scale_calibrated={calibrated} seconds={secs:.1}"
    );
    let pass = skips <= 20 && longest <= 8 && last_scale >= calibrated / 2.0;
    gpucheck(
        &format!("stability_{model}"),
        &[n],
        DType::F16,
        skips as f64,
        pass,
        Instant::now(),
    );
    assert!(skips <= 20, "{model}: {skips} skipped steps out of {n}");
    assert!(longest <= 8, "{model}: {longest} skipped steps in a row");
    assert!(
        last_scale >= calibrated / 2.0,
        "{model}: the loss scale did not recover: {last_scale} at the end, {calibrated} after calibration"
    );
}

#[test]
fn fp16_training_stability_distilbert_qa() {
    let Some(mut rng) = start("fp16_training_stability_distilbert_qa") else {
        return;
    };
    let dev = Device::Cuda(0);
    // "{}" is distilbert-base-uncased: every field has HF's default.
    let cfg: DistilBertConfig =
        ok(serde_json::from_str("{}").map_err(|e| fusebox::Error::msg(e.to_string())));
    let model = ok(DistilBertForQa::new(cfg, dev, DType::F16, 7));
    let (b, s) = (8usize, 384usize);
    let vocab = model.vocab_size() as u64;
    let params = model.params().trainable();
    let t = Instant::now();
    let run = train(&params, 5e-5, steps(), |step| {
        let ids: Vec<Vec<u32>> = (0..b)
            .map(|_| (0..s).map(|_| (rng.next_u64() % vocab) as u32).collect())
            .collect();
        // Some padding at the end of each row, as real windows have.
        let mask: Vec<Vec<u32>> = (0..b)
            .map(|_| {
                let len = s - (rng.next_u64() % 64) as usize;
                (0..s).map(|i| (i < len) as u32).collect()
            })
            .collect();
        let starts: Vec<usize> = (0..b).map(|_| (rng.next_u64() % 300) as usize).collect();
        let ends: Vec<usize> = starts
            .iter()
            .map(|&x| x + (rng.next_u64() % 30) as usize)
            .collect();
        let batch = QaBatch::from_rows(&ids, &mask, None, Some((&starts, &ends)), dev)?;
        let (st, en) = model.forward(&batch, Mode::train(step as u64))?;
        model.loss(&st, &en, &batch)
    });
    judge("distilbert_qa", &run, t.elapsed().as_secs_f64());
}

#[test]
fn fp16_training_stability_t5_small() {
    let Some(mut rng) = start("fp16_training_stability_t5_small") else {
        return;
    };
    let dev = Device::Cuda(0);
    let model = ok(T5ForConditionalGeneration::new_random(
        T5Config::default(),
        dev,
        DType::F16,
        7,
    ));
    let (b, s, tgt) = (8usize, 512usize, 128usize);
    let vocab = model.config.vocab_size as u64;
    let params = model.trainable();
    let t = Instant::now();
    let run = train(&params, 3e-4, steps(), |step| {
        let ids: Vec<i32> = (0..b * s)
            .map(|_| (2 + rng.next_u64() % (vocab - 2)) as i32)
            .collect();
        let mut labels: Vec<i32> = (0..b * tgt)
            .map(|_| (2 + rng.next_u64() % (vocab - 2)) as i32)
            .collect();
        // Padded targets are -100 (ignored), as the seq2seq collator writes them.
        for row in labels.chunks_mut(tgt) {
            let len = tgt - (rng.next_u64() % 32) as usize;
            row[len..].iter_mut().for_each(|l| *l = -100);
        }
        let ids = Tensor::from_i32(ids, [b, s], dev)?;
        let mask = Tensor::full([b, s], DType::I32, dev, 1.0)?;
        let labels = Tensor::from_i32(labels, [b, tgt], dev)?;
        Ok(model
            .loss(
                &ids,
                Some(&mask),
                &labels,
                Mode::Train { seed: step as u64 },
            )?
            .0)
    });
    judge("t5_small", &run, t.elapsed().as_secs_f64());
}
