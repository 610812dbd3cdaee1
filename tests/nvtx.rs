//! NVTX ranges (src/profile/nvtx.rs) without a profiler: the names one training step
//! pushes (step parts, layers of both stacks, ops with their pass), and a `bench` run
//! whose results do not change when the ranges are on.

use std::process::Command;

use fusebox::models::bart::BartConfig;
use fusebox::models::distilbert::DistilBertConfig;
use fusebox::models::step::{BatchShape, ModelConfig, ModelSource};
use fusebox::optim::{accumulate_and_step, OptimConfig, Optimizer};
use fusebox::profile::nvtx;
use fusebox::{DType, Device};

/// The ranges one optimizer step of `cfg` (2 layers a stack) pushes, in push order.
fn step_ranges(cfg: ModelConfig) -> Vec<String> {
    let model = ModelSource::config(cfg)
        .build(Device::Cpu, DType::F32, 7)
        .expect("build");
    let mut opt = Optimizer::new(&model.trainable(), OptimConfig::default()).expect("adamw");
    let shape = BatchShape {
        rows: 2,
        seq: 8,
        tgt: 6,
    };
    let (report, names) = nvtx::capture(|| {
        accumulate_and_step(&mut opt, None, 1e-3, Some(1.0), &[1.0], |_| {
            model.train_loss(shape, Device::Cpu, 3)
        })
    });
    assert!(report.expect("step").loss.is_finite());
    names
}

/// Where `name` was first pushed.
fn first(names: &[String], name: &str) -> usize {
    names
        .iter()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no range {name:?} in {names:?}"))
}

#[test]
fn an_encoder_step_pushes_its_parts_layers_and_ops() {
    let cfg: DistilBertConfig = serde_json::from_value(serde_json::json!({
        "model_type": "distilbert", "vocab_size": 50, "dim": 16, "n_layers": 2,
        "n_heads": 2, "hidden_dim": 32, "max_position_embeddings": 16
    }))
    .expect("config");
    let names = step_ranges(ModelConfig::DistilBert(cfg));
    let (fwd, bwd, opt) = (
        first(&names, "forward"),
        first(&names, "backward"),
        first(&names, "optimizer"),
    );
    assert!(fwd < bwd && bwd < opt, "{names:?}");
    // The layers inside the forward, in order, each running ops; their backward ops
    // inside the backward range.
    let (l0, l1) = (first(&names, "encoder.0"), first(&names, "encoder.1"));
    assert!(fwd < l0 && l0 < l1 && l1 < bwd, "{names:?}");
    assert!(names[l0 + 1..l1].iter().any(|n| n == "linear"), "{names:?}");
    assert!(
        names[bwd..opt].iter().any(|n| n == "linear.bwd"),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("decoder.")),
        "{names:?}"
    );
}

#[test]
fn an_encoder_decoder_step_names_both_stacks() {
    let cfg = BartConfig::from_json_str(
        r#"{"model_type": "bart", "vocab_size": 60, "d_model": 16,
            "encoder_layers": 2, "decoder_layers": 2,
            "encoder_attention_heads": 2, "decoder_attention_heads": 2,
            "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "max_position_embeddings": 32,
            "pad_token_id": 1, "decoder_start_token_id": 1, "eos_token_id": 2}"#,
        "test config",
    )
    .expect("bart config");
    let names = step_ranges(ModelConfig::Bart(cfg));
    let order: Vec<usize> = ["encoder.0", "encoder.1", "decoder.0", "decoder.1"]
        .iter()
        .map(|n| first(&names, n))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{names:?}");
    assert!(order[3] < first(&names, "backward"), "{names:?}");
}

/// `bench --json` on the CPU with `FUSEBOX_NVTX` set to `value`: its losses.
fn bench_losses(value: &str) -> (f64, f64) {
    let o = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args([
            "--model",
            "distilbert-qa",
            "--device",
            "cpu",
            "--batch",
            "1",
            "--seq",
            "32",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--profile-steps",
            "0",
            "--json",
        ])
        .env("FUSEBOX_NVTX", value)
        .output()
        .expect("spawn bench");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "bench (FUSEBOX_NVTX={value}): {stderr}");
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .rfind(|l| l.starts_with('{'))
        .expect("json line");
    let v: serde_json::Value = serde_json::from_str(line).expect("json");
    let loss = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {line}"));
    (loss("first_loss"), loss("final_loss"))
}

#[test]
fn bench_results_are_the_same_with_ranges_on() {
    let off = bench_losses("0");
    let on = bench_losses("1");
    assert!(off.0.is_finite() && off.1.is_finite(), "{off:?}");
    // Bit for bit: the ranges only name what runs.
    assert_eq!(on, off);
}
