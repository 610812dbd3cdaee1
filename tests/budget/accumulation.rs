//! In-place gradient accumulation in the plan: each micro-batch's gradients are added
//! into the one set the step holds as backward finalizes them (`autograd::backward_into`),
//! so a step with accumulation peaks about one gradient set below the step that added a
//! fresh full set after each backward (what the loop ran before). The plan is held to
//! the CPU's count (`exact`); the fresh-set step is run on the CPU here as the reference.

use fusebox::autograd::{backward, Grads};
use fusebox::backend::tracker;
use fusebox::models::step::{BatchShape, ModelSource};
use fusebox::optim::{AdamW, AdamWConfig};
use fusebox::plan::Workload;
use fusebox::shape::Device;

use super::{cpu_work, distilbert, distilbert_cfg, exact, lock, t5, t5_cfg};

/// `work`'s step with fresh sets (each micro-batch's backward into new buffers, summed
/// into the held set after it), as `plan::measure` runs it otherwise: its peak above the
/// weights and optimizer state, the bytes of one gradient set and of the largest
/// parameter's gradient.
fn fresh_sets_step(source: &ModelSource, work: &Workload) -> (usize, usize, usize) {
    let _l = lock();
    let dev = Device::Cpu;
    let model = source.build(dev, work.dtype, 0).expect("model");
    let params = model.trainable();
    let bytes: Vec<usize> = params
        .iter()
        .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
        .collect();
    let mut opt = AdamW::new(&params, AdamWConfig::default(), true).expect("adamw");
    drop(params);
    let held = tracker::live_bytes(dev);
    tracker::reset_peak(dev);
    let shape = BatchShape {
        rows: work.micro_batch,
        seq: work.seq_len,
        tgt: work.tgt_len.max(1),
    };
    let mut grads = Grads::default();
    let mut losses = Vec::new();
    for i in 0..work.grad_accum {
        let loss = model.train_loss(shape, dev, i as u64).expect("loss");
        losses.push(loss.detach());
        let scaled = loss.scale(1.0 / work.grad_accum as f64).expect("scale");
        grads
            .accumulate(backward(&scaled).expect("backward"))
            .expect("sum");
    }
    opt.step(&grads, 1e-3, 1.0, Some(1.0)).expect("step");
    let peak = tracker::peak_bytes(dev) - held;
    let largest = bytes.iter().copied().max().unwrap_or(0);
    (peak, bytes.iter().sum(), largest)
}

/// Short micro-batches of one row, where the gradients outweigh the activations (a big
/// model on a small card): the peak is at the end of a later micro-batch's backward.
#[test]
fn accumulation_in_place_saves_about_one_gradient_set() {
    let cases = [
        (
            "distilbert",
            distilbert(distilbert_cfg(64, 2, 1000)),
            Workload {
                grad_accum: 2,
                ..cpu_work(1, 16, 0, false)
            },
        ),
        (
            "t5 (tied embedding)",
            t5(t5_cfg(512, 64, 2, true)),
            Workload {
                grad_accum: 3,
                ..cpu_work(1, 8, 4, false)
            },
        ),
    ];
    for (what, src, work) in cases {
        // The plan, equal to the CPU's count of the step as the loop runs it now.
        let m = exact(what, &src, &work);
        let now = m.step;
        let (fresh, set, largest) = fresh_sets_step(&src, &work);
        let saved = fresh.saturating_sub(now);
        eprintln!(
            "{what}: peak {fresh} B with fresh sets, {now} B in place: {saved} B saved of a \
             {set} B gradient set (largest gradient {largest} B)"
        );
        // At most the one set no longer held twice; at least that set but what may be
        // in flight at the new peak: one parameter's fresh gradient before it is added
        // in, and what a micro-batch holds beside it (at most its saved activations).
        assert!(
            saved <= set && saved + largest + m.saved >= set && saved * 2 > set,
            "{what}: saved {saved} B, gradient set {set} B, largest gradient {largest} B, \
             micro-batch activations {} B",
            m.saved
        );
    }
}
