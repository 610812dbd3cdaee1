//! The VRAM planner against the byte tracker, and activation checkpointing against the
//! plain backward. The tracker is process-global, so every test here takes one lock and
//! the measurements never overlap.

use std::sync::Mutex;

use fusebox::autograd::backward;
use fusebox::memory::tracker;
use fusebox::models::distilbert::{DistilBertConfig, DistilBertForQa};
use fusebox::models::encoder::{Mode as QaMode, QaBatch, QaModel};
use fusebox::models::t5::{Mode as T5Mode, T5Config, T5ForConditionalGeneration};
use fusebox::memory::budget::{predict, ModelSpec, Target, Workload};
use fusebox::optim::{AdamW, AdamWConfig};
use fusebox::shape::{DType, Device};
use fusebox::tensor::Tensor;

static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn distilbert_cfg(dim: usize, layers: usize, vocab: usize) -> DistilBertConfig {
    serde_json::from_value(serde_json::json!({
        "model_type": "distilbert", "vocab_size": vocab, "dim": dim, "n_layers": layers,
        "n_heads": 2, "hidden_dim": 4 * dim, "max_position_embeddings": 128,
        "dropout": 0.1, "attention_dropout": 0.1, "qa_dropout": 0.1
    }))
    .expect("config")
}

fn qa_batch(b: usize, l: usize, vocab: usize) -> QaBatch {
    let ids: Vec<i32> = (0..b * l).map(|i| 1 + (i * 7 % (vocab - 1)) as i32).collect();
    let mut mask = vec![1; b * l];
    mask[b * l - l / 4..].iter_mut().for_each(|m| *m = 0);
    let starts: Vec<i32> = (0..b).map(|i| (i * 3 % l) as i32).collect();
    let ends: Vec<i32> = starts.iter().map(|s| s + 2).collect();
    QaBatch {
        input_ids: Tensor::from_i32(ids, [b, l], Device::Cpu).expect("ids"),
        attention_mask: Tensor::from_i32(mask, [b, l], Device::Cpu).expect("mask"),
        token_type_ids: None,
        start_positions: Some(Tensor::from_i32(starts, [b], Device::Cpu).expect("s")),
        end_positions: Some(Tensor::from_i32(ends, [b], Device::Cpu).expect("e")),
    }
}

fn t5_cfg(vocab: usize, d_model: usize, layers: usize, gated: bool) -> T5Config {
    let ff = if gated { "gated-gelu" } else { "relu" };
    T5Config::from_json_str(
        &format!(
            r#"{{"vocab_size": {vocab}, "d_model": {d_model}, "d_kv": {}, "d_ff": {},
                "num_layers": {layers}, "num_decoder_layers": {layers}, "num_heads": 4,
                "dropout_rate": 0.1, "feed_forward_proj": "{ff}"}}"#,
            d_model / 4,
            2 * d_model
        ),
        "test config",
    )
    .expect("t5 config")
}

struct T5Batch {
    ids: Tensor,
    mask: Tensor,
    labels: Tensor,
}

fn t5_batch(b: usize, ls: usize, lt: usize, vocab: usize) -> T5Batch {
    let ids: Vec<i32> = (0..b * ls).map(|i| 2 + (i * 7 % (vocab - 2)) as i32).collect();
    let mut mask = vec![1i32; b * ls];
    mask[b * ls - ls / 5..].iter_mut().for_each(|m| *m = 0);
    let mut labels: Vec<i32> = (0..b * lt).map(|i| 2 + (i * 5 % (vocab - 2)) as i32).collect();
    labels[b * lt - 3..].iter_mut().for_each(|l| *l = -100);
    T5Batch {
        ids: Tensor::from_i32(ids, [b, ls], Device::Cpu).expect("ids"),
        mask: Tensor::from_i32(mask, [b, ls], Device::Cpu).expect("mask"),
        labels: Tensor::from_i32(labels, [b, lt], Device::Cpu).expect("labels"),
    }
}

/// Largest |a - b| over every named gradient, asserting both runs reached the same set.
fn max_grad_diff(
    params: &[(String, Tensor)],
    a: &fusebox::autograd::Grads,
    b: &fusebox::autograd::Grads,
) -> f32 {
    let mut worst = 0f32;
    for (name, p) in params {
        match (a.get(p), b.get(p)) {
            (Some(x), Some(y)) => {
                let (x, y) = (x.to_vec_f32().expect("x"), y.to_vec_f32().expect("y"));
                for (u, v) in x.iter().zip(&y) {
                    worst = worst.max((u - v).abs());
                }
            }
            (None, None) => {}
            _ => panic!("{name}: a gradient in one run only"),
        }
    }
    worst
}

#[test]
fn checkpointing_keeps_distilbert_gradients_and_lowers_the_peak() {
    let _l = lock();
    let mut model =
        DistilBertForQa::new(distilbert_cfg(32, 3, 60), Device::Cpu, DType::F32, 5).expect("m");
    let batch = qa_batch(2, 24, 60);
    let params = model.params().trainable();
    let mut run = |ckpt: bool| {
        model.set_checkpointing(ckpt);
        tracker::reset_peak(Device::Cpu);
        let base = tracker::live_bytes(Device::Cpu);
        let (s, e) = model.forward(&batch, QaMode::train(11)).expect("fwd");
        let loss = model.loss(&s, &e, &batch).expect("loss");
        let g = backward(&loss).expect("bwd");
        (g, tracker::peak_bytes(Device::Cpu) - base)
    };
    let (plain, peak_plain) = run(false);
    let (ckpt, peak_ckpt) = run(true);
    assert_eq!(fusebox::autograd::tape_len(), 0);
    assert_eq!(plain.len(), ckpt.len());
    let d = max_grad_diff(&params, &plain, &ckpt);
    assert!(d <= 1e-6, "gradients differ by {d}");
    assert!(
        peak_ckpt < peak_plain,
        "checkpointing peak {peak_ckpt} >= plain {peak_plain}"
    );
}

#[test]
fn checkpointing_keeps_t5_gradients_and_lowers_the_peak() {
    let _l = lock();
    for gated in [false, true] {
        let mut model =
            T5ForConditionalGeneration::new_random(t5_cfg(40, 16, 2, gated), Device::Cpu, DType::F32, 7)
                .expect("t5");
        let batch = t5_batch(2, 30, 12, 40);
        let params = model.trainable();
        let mut run = |ckpt: bool| {
            model.set_checkpointing(ckpt);
            tracker::reset_peak(Device::Cpu);
            let base = tracker::live_bytes(Device::Cpu);
            let (loss, _) = model
                .loss(&batch.ids, Some(&batch.mask), &batch.labels, T5Mode::Train { seed: 3 })
                .expect("loss");
            let g = backward(&loss).expect("bwd");
            (g, tracker::peak_bytes(Device::Cpu) - base)
        };
        let (plain, peak_plain) = run(false);
        let (ckpt, peak_ckpt) = run(true);
        assert_eq!(plain.len(), ckpt.len());
        let d = max_grad_diff(&params, &plain, &ckpt);
        assert!(d <= 1e-6, "gated {gated}: gradients differ by {d}");
        assert!(
            peak_ckpt < peak_plain,
            "gated {gated}: checkpointing peak {peak_ckpt} >= plain {peak_plain}"
        );
    }
}

fn cpu_work(b: usize, l: usize, lt: usize, ckpt: bool) -> Workload {
    Workload {
        micro_batch: b,
        grad_accum: 1,
        seq_len: l,
        tgt_len: lt,
        dtype: DType::F32,
        checkpointing: ckpt,
        target: Target::Cpu,
    }
}

/// Peak bytes of: build the optimizer's state, then one step (batch, forward, loss,
/// backward, AdamW), above what was live before the model existed.
fn measure_step(
    params: Vec<(String, Tensor)>,
    base: usize,
    step: impl FnOnce() -> fusebox::autograd::Grads,
) -> usize {
    let mut opt = AdamW::new(&params, AdamWConfig::default(), true).expect("adamw");
    tracker::reset_peak(Device::Cpu);
    let grads = step();
    opt.step(&grads, 1e-3, 1.0, Some(1.0)).expect("step");
    drop(grads);
    tracker::peak_bytes(Device::Cpu) - base
}

fn check(what: &str, predicted: usize, measured: usize) {
    let err = (predicted as f64 - measured as f64).abs() / measured as f64;
    eprintln!("{what}: predicted {predicted} measured {measured} ({:+.2} %)", 100.0 * (predicted as f64 / measured as f64 - 1.0));
    assert!(err <= 0.05, "{what}: predicted {predicted}, measured {measured}");
}

#[test]
fn distilbert_prediction_matches_the_tracker() {
    let _l = lock();
    let (b, l, vocab) = (4, 128, 1000);
    for ckpt in [false, true] {
        let cfg = distilbert_cfg(128, 2, vocab);
        let spec = ModelSpec::distilbert(&cfg);
        let base = tracker::live_bytes(Device::Cpu);
        let mut model = DistilBertForQa::new(cfg, Device::Cpu, DType::F32, 1).expect("model");
        model.set_checkpointing(ckpt);
        let params = model.params().trainable();
        let measured = measure_step(params, base, || {
            let batch = qa_batch(b, l, vocab);
            let (s, e) = model.forward(&batch, QaMode::train(9)).expect("fwd");
            let loss = model.loss(&s, &e, &batch).expect("loss");
            drop((s, e));
            backward(&loss.scale(1.0).expect("scale")).expect("bwd")
        });
        drop(model);
        let plan = predict(&spec, &cpu_work(b, l, 0, ckpt), b).expect("plan");
        check(&format!("distilbert ckpt={ckpt}"), plan.tensor_peak, measured);
    }
}

#[test]
fn t5_prediction_matches_the_tracker() {
    let _l = lock();
    let (b, ls, lt, vocab) = (4, 64, 16, 512);
    for gated in [false, true] {
        for ckpt in [false, true] {
            let cfg = t5_cfg(vocab, 64, 2, gated);
            let spec = ModelSpec::t5(&cfg, true);
            let base = tracker::live_bytes(Device::Cpu);
            let mut model =
                T5ForConditionalGeneration::new_random(cfg, Device::Cpu, DType::F32, 2).expect("t5");
            model.set_checkpointing(ckpt);
            let params = model.trainable();
            let measured = measure_step(params, base, || {
                let batch = t5_batch(b, ls, lt, vocab);
                let (loss, _) = model
                    .loss(&batch.ids, Some(&batch.mask), &batch.labels, T5Mode::Train { seed: 4 })
                    .expect("loss");
                backward(&loss.scale(1.0).expect("scale")).expect("bwd")
            });
            drop(model);
            let plan = predict(&spec, &cpu_work(b, ls, lt, ckpt), b).expect("plan");
            check(&format!("t5 gated={gated} ckpt={ckpt}"), plan.tensor_peak, measured);
        }
    }
}
