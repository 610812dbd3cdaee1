//! Adafactor in the plan: its state (factored second moments, the optional first
//! moment) and its step are planned to the byte as AdamW's are, with no planner code of
//! their own, in f32 and in fp16 on the CPU target (f16 gradients read through the
//! emulation's f32 copy, `emulate::adafactor_`); on the card its multi-tensor step's
//! scratch is planned and its state is the fraction of AdamW's the factoring promises.

use fusebox::autograd::Grads;
use fusebox::backend::tracker;
use fusebox::optim::{AdafactorConfig, OptimConfig, Optimizer};
use fusebox::plan::{measure, predict, Plan, Workload};
use fusebox::shape::{DType, Device, Target};
use fusebox::tensor::Tensor;

use super::{cpu_work, distilbert, distilbert_cfg, exact, lock, t4_distilbert_b8, t5, t5_cfg};

fn adafactor(beta1: Option<f64>) -> OptimConfig {
    OptimConfig::Adafactor(AdafactorConfig {
        beta1,
        ..AdafactorConfig::trainer(0.01)
    })
}

#[test]
fn adafactor_prediction_matches_the_tracker() {
    let distil = distilbert(distilbert_cfg(64, 2, 500));
    let t5s = t5(t5_cfg(512, 64, 2, true));
    for (what, src, work) in [
        ("distilbert", &distil, cpu_work(2, 64, 0, false)),
        ("t5", &t5s, cpu_work(2, 48, 16, false)),
        ("t5 ckpt", &t5s, cpu_work(2, 48, 16, true)),
    ] {
        for beta1 in [None, Some(0.9)] {
            let w = Workload {
                optim: adafactor(beta1),
                ..work
            };
            exact(&format!("{what} adafactor beta1={beta1:?}"), src, &w);
        }
        // Factored second moments: far less state than AdamW's m and v.
        let _l = lock();
        let af = measure(
            src,
            &Workload {
                optim: adafactor(None),
                ..work
            },
            Device::Meta(Target::Cpu),
        );
        let aw = measure(src, &work, Device::Meta(Target::Cpu));
        let (af, aw) = (af.expect("adafactor"), aw.expect("adamw"));
        assert!(
            af.optimizer * 10 < aw.optimizer,
            "{what}: adafactor state {} vs adamw {}",
            af.optimizer,
            aw.optimizer
        );
    }
}

/// fp16 on the CPU target with Adafactor: f16 working weights, f32 masters and state,
/// the f16 gradients widened by the emulation before each update, the plan equal to the
/// CPU's step to the byte (with the first moment and with accumulation too).
#[test]
fn cpu_fp16_adafactor_predictions_match_the_tracker() {
    let fp16 = |work: Workload, beta1: Option<f64>| Workload {
        dtype: DType::F16,
        optim: adafactor(beta1),
        ..work
    };
    exact(
        "distilbert fp16 adafactor",
        &distilbert(distilbert_cfg(64, 2, 1000)),
        &fp16(cpu_work(2, 64, 0, false), None),
    );
    let t5s = t5(t5_cfg(512, 64, 2, true));
    exact(
        "t5 fp16 adafactor beta1=0.9",
        &t5s,
        &fp16(cpu_work(2, 48, 16, false), Some(0.9)),
    );
    let accum = Workload {
        grad_accum: 2,
        ..fp16(cpu_work(2, 48, 16, false), None)
    };
    exact("t5 fp16 adafactor accumulation 2", &t5s, &accum);
}

/// The CPU's step reads an f16 gradient through an f32 copy (`emulate::adafactor_`), and
/// the meta device's CPU target makes the same copy: one step over an f16 parameter
/// allocates the same buffers and peaks the same on both. (In a training step the
/// backward's own f32 copies are as large, so the step tests above cannot tell.)
#[test]
fn an_f16_gradient_is_widened_on_the_cpu_and_in_the_plan() {
    let dims = [64usize, 48];
    let run = |dev: Device| {
        let p = Tensor::var(&Tensor::full(&dims[..], DType::F16, dev, 0.5).expect("param"));
        let config = OptimConfig::Adafactor(AdafactorConfig::trainer(0.0));
        let mut opt = Optimizer::new(&[("w".to_string(), p.clone())], config).expect("opt");
        let mut grads = Grads::default();
        grads.insert(
            &p,
            Tensor::full(&dims[..], DType::F16, dev, 0.25).expect("grad"),
        );
        let (held, allocs) = (tracker::live_bytes(dev), tracker::alloc_count(dev));
        tracker::reset_peak(dev);
        let out = opt.step(&grads, 1e-3, 1.0, None).expect("step");
        assert!(!out.skipped);
        (
            tracker::peak_bytes(dev) - held,
            tracker::alloc_count(dev) - allocs,
        )
    };
    let _l = lock();
    let (cpu, meta) = (run(Device::Cpu), run(Device::Meta(Target::Cpu)));
    assert_eq!(
        meta, cpu,
        "(peak above the held buffers, allocations): meta vs CPU"
    );
    assert!(cpu.0 >= 64 * 48 * 4, "no f32 copy of the gradient: {cpu:?}");
}

/// Adafactor on the card: its multi-tensor step's scratch is planned (the decision
/// words, the norm partials, the factored partials), its state is a small fraction of
/// AdamW's, and the table says which optimizer it planned.
#[test]
fn cuda_adafactor_plan_names_its_state() {
    let _l = lock(); // plans touch no CPU buffer, but stay out of measurements anyway
    let (spec, w16) = t4_distilbert_b8();
    let p16 = predict(&spec, &w16, 8).expect("adamw");
    let af = predict(
        &spec,
        &Workload {
            optim: OptimConfig::Adafactor(AdafactorConfig::trainer(0.01)),
            ..w16
        },
        8,
    )
    .expect("adafactor");
    let has = |p: &Plan, what: &str| p.components.iter().any(|(n, _)| n.contains(what));
    let state = |p: &Plan, what: &str| {
        p.components
            .iter()
            .find(|(n, _)| n.contains(what))
            .map(|c| c.1)
            .unwrap_or_else(|| panic!("no {what} in {}", p.table()))
    };
    assert!(has(&af, "master weights (adafactor)"), "{}", af.table());
    let (s_af, s_aw) = (state(&af, "Adafactor"), state(&p16, "AdamW m and v"));
    assert!(s_af * 20 < s_aw, "adafactor state {s_af} vs adamw {s_aw}");
    assert!(af.tensor_peak < p16.tensor_peak);
}
