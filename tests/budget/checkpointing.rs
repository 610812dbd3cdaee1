//! Activation checkpointing against the plain backward: the same gradients, a lower
//! peak (DistilBERT, T5 relu and gated, BART and Marian on the CPU backend).

use fusebox::autograd::{backward, Grads};
use fusebox::backend::tracker;
use fusebox::models::bart::BartForConditionalGeneration;
use fusebox::models::distilbert::DistilBertForQa;
use fusebox::models::encoder::{Mode as QaMode, QaBatch, QaModel};
use fusebox::models::seq2seq::Seq2SeqLm;
use fusebox::models::t5::{Mode as T5Mode, T5ForConditionalGeneration};
use fusebox::shape::{DType, Device};
use fusebox::tensor::Tensor;

use super::{bart_cfg, distilbert_cfg, lock, t5_cfg};

fn qa_batch(b: usize, l: usize, vocab: usize) -> QaBatch {
    let ids: Vec<i32> = (0..b * l)
        .map(|i| 1 + (i * 7 % (vocab - 1)) as i32)
        .collect();
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

struct T5Batch {
    ids: Tensor,
    mask: Tensor,
    labels: Tensor,
}

fn t5_batch(b: usize, ls: usize, lt: usize, vocab: usize) -> T5Batch {
    let ids: Vec<i32> = (0..b * ls)
        .map(|i| 2 + (i * 7 % (vocab - 2)) as i32)
        .collect();
    let mut mask = vec![1i32; b * ls];
    mask[b * ls - ls / 5..].iter_mut().for_each(|m| *m = 0);
    let mut labels: Vec<i32> = (0..b * lt)
        .map(|i| 2 + (i * 5 % (vocab - 2)) as i32)
        .collect();
    labels[b * lt - 3..].iter_mut().for_each(|l| *l = -100);
    T5Batch {
        ids: Tensor::from_i32(ids, [b, ls], Device::Cpu).expect("ids"),
        mask: Tensor::from_i32(mask, [b, ls], Device::Cpu).expect("mask"),
        labels: Tensor::from_i32(labels, [b, lt], Device::Cpu).expect("labels"),
    }
}

/// The training loss of `batch` (dropout seeded by `seed`).
fn t5_train_loss(model: &T5ForConditionalGeneration, batch: &T5Batch, seed: u64) -> Tensor {
    let (loss, _) = model
        .loss(
            &batch.ids,
            Some(&batch.mask),
            &batch.labels,
            T5Mode::Train { seed },
        )
        .expect("loss");
    loss
}

/// Largest |a - b| over every named gradient, asserting both runs reached the same set.
fn max_grad_diff(params: &[(String, Tensor)], a: &Grads, b: &Grads) -> f32 {
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

/// One training step run without and then with checkpointing (`loss(ckpt)` sets the
/// switch and runs forward and loss, backward follows): the gradients must agree and
/// checkpointing must lower the step's peak above the bytes live before it.
fn assert_checkpointing_pays(
    what: &str,
    params: &[(String, Tensor)],
    mut loss: impl FnMut(bool) -> Tensor,
) {
    let mut run = |ckpt: bool| {
        tracker::reset_peak(Device::Cpu);
        let base = tracker::live_bytes(Device::Cpu);
        let g = backward(&loss(ckpt)).expect("bwd");
        (g, tracker::peak_bytes(Device::Cpu) - base)
    };
    let (plain, peak_plain) = run(false);
    let (ckpt, peak_ckpt) = run(true);
    assert_eq!(fusebox::autograd::tape_len(), 0);
    assert_eq!(plain.len(), ckpt.len());
    let d = max_grad_diff(params, &plain, &ckpt);
    assert!(d <= 1e-6, "{what}: gradients differ by {d}");
    assert!(
        peak_ckpt < peak_plain,
        "{what}: checkpointing peak {peak_ckpt} >= plain {peak_plain}"
    );
}

#[test]
fn checkpointing_keeps_distilbert_gradients_and_lowers_the_peak() {
    let _l = lock();
    let mut model =
        DistilBertForQa::new(distilbert_cfg(32, 3, 60), Device::Cpu, DType::F32, 5).expect("m");
    let batch = qa_batch(2, 24, 60);
    let params = model.params().trainable();
    assert_checkpointing_pays("distilbert", &params, |ckpt| {
        model.set_checkpointing(ckpt);
        let (s, e) = model.forward(&batch, QaMode::train(11)).expect("fwd");
        model.loss(&s, &e, &batch).expect("loss")
    });
}

#[test]
fn checkpointing_keeps_t5_gradients_and_lowers_the_peak() {
    let _l = lock();
    for gated in [false, true] {
        let mut model = T5ForConditionalGeneration::new_random(
            t5_cfg(40, 16, 2, gated),
            Device::Cpu,
            DType::F32,
            7,
        )
        .expect("t5");
        let batch = t5_batch(2, 30, 12, 40);
        let params = model.trainable();
        assert_checkpointing_pays(&format!("t5 gated {gated}"), &params, |ckpt| {
            model.set_checkpointing(ckpt);
            t5_train_loss(&model, &batch, 3)
        });
    }
}

#[test]
fn checkpointing_keeps_bart_gradients_and_lowers_the_peak() {
    let _l = lock();
    for kind in ["bart", "marian"] {
        let mut model = BartForConditionalGeneration::new_random(
            bart_cfg(kind, 40, 16, 2),
            Device::Cpu,
            DType::F32,
            7,
        )
        .expect("bart");
        let batch = t5_batch(2, 30, 12, 40);
        let params = model.trainable();
        let mut run = |ckpt: bool| {
            model.set_checkpointing(ckpt);
            tracker::reset_peak(Device::Cpu);
            let base = tracker::live_bytes(Device::Cpu);
            let (loss, _) = model
                .loss(
                    &batch.ids,
                    Some(&batch.mask),
                    &batch.labels,
                    T5Mode::Train { seed: 3 },
                )
                .expect("loss");
            let g = backward(&loss).expect("bwd");
            (g, tracker::peak_bytes(Device::Cpu) - base)
        };
        let (plain, peak_plain) = run(false);
        let (ckpt, peak_ckpt) = run(true);
        assert_eq!(plain.len(), ckpt.len());
        assert_eq!(
            plain.len(),
            params.len(),
            "{kind}: every parameter has a gradient"
        );
        let d = max_grad_diff(&params, &plain, &ckpt);
        assert!(d <= 1e-6, "{kind}: gradients differ by {d}");
        assert!(
            peak_ckpt < peak_plain,
            "{kind}: checkpointing peak {peak_ckpt} >= plain {peak_plain}"
        );
    }
}
