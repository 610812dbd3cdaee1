//! fp16 on the CPU target: the plan of an fp16 training step (f16 working weights, f32
//! masters and AdamW moments, the loss scaler; every f16 op the CPU's emulation, with
//! its f32 copies) equals the tracker's count of the same step run on the CPU backend,
//! to the byte, with and without checkpointing and accumulation, and for inference.

use fusebox::models::step::{ModelConfig, ModelSource};
use fusebox::plan::{predict, Workload};
use fusebox::shape::{DType, Target};

use super::{bart_cfg, cpu_work, distilbert, distilbert_cfg, exact, t5, t5_cfg};

fn fp16(work: Workload) -> Workload {
    Workload {
        dtype: DType::F16,
        ..work
    }
}

#[test]
fn cpu_fp16_predictions_match_the_tracker() {
    for ckpt in [false, true] {
        let what = |m: &str| format!("{m} fp16 ckpt={ckpt}");
        let work = fp16(cpu_work(4, 128, 0, ckpt));
        exact(
            &what("distilbert"),
            &distilbert(distilbert_cfg(128, 2, 1000)),
            &work,
        );
        for gated in [false, true] {
            let work = fp16(cpu_work(4, 64, 16, ckpt));
            exact(
                &what(&format!("t5 gated={gated}")),
                &t5(t5_cfg(512, 64, 2, gated)),
                &work,
            );
        }
        let marian = ModelSource::config(ModelConfig::Bart(bart_cfg("marian", 512, 64, 2)));
        exact(&what("marian"), &marian, &fp16(cpu_work(4, 64, 16, ckpt)));
    }
    // Accumulation: later micro-batches add their f16 gradients into the held set.
    let work = Workload {
        grad_accum: 3,
        ..fp16(cpu_work(2, 48, 12, false))
    };
    exact(
        "t5 fp16 accumulation 3",
        &t5(t5_cfg(512, 64, 2, true)),
        &work,
    );
    let work = Workload {
        grad_accum: 2,
        ..fp16(cpu_work(2, 64, 0, false))
    };
    exact(
        "distilbert fp16 accumulation 2",
        &distilbert(distilbert_cfg(64, 2, 1000)),
        &work,
    );
    let infer = Workload {
        infer: true,
        ..fp16(cpu_work(4, 64, 16, false))
    };
    exact("t5 fp16 infer", &t5(t5_cfg(512, 64, 2, true)), &infer);
    exact(
        "distilbert fp16 infer",
        &distilbert(distilbert_cfg(128, 2, 1000)),
        &infer,
    );
}

/// The CPU and CUDA targets hold the same fp16 weights, fp32 masters and moments; only
/// the step differs (the CPU's emulation makes f32 copies CUDA never makes, CUDA takes
/// scratch of its own), and the CPU plan carries no CUDA terms.
#[test]
fn cpu_and_cuda_fp16_plans_share_weights_and_optimizer_state() {
    let src = t5(t5_cfg(512, 64, 2, true));
    let cpu = fp16(cpu_work(4, 64, 16, false));
    let cuda = Workload {
        target: Target::Cuda,
        ..cpu
    };
    let p_cpu = predict(&src, &cpu, 4).expect("cpu");
    let p_cuda = predict(&src, &cuda, 4).expect("cuda");
    assert_eq!(p_cpu.components.len(), 4, "{}", p_cpu.table());
    assert_eq!(p_cpu.components[..3], p_cuda.components[..3]);
    assert!(p_cpu.components[1].0.contains("master"));
    assert_eq!(
        p_cpu.peak_bytes, p_cpu.tensor_peak,
        "no CUDA terms on the CPU"
    );
    assert!(p_cpu.components[3].1 != p_cuda.components[3].1);
    // The CPU plan says its step holds the emulation's f32 copies; CUDA's does not.
    assert!(
        p_cpu.components[3].0.contains("f16 emulation"),
        "{}",
        p_cpu.table()
    );
    assert!(!p_cuda.components[3].0.contains("emulation"));
}
