//! `--precision fp16` on the CPU through the binaries (the CPU's emulation of the CUDA
//! fp16 path: f16 weights and activations, f32 masters, dynamic loss scaling): `train
//! qa`, `summarize` (with AdamW and with Adafactor) and `translate` run a few steps, log
//! the loss scale consistently with the skipped steps, and peak within the memory plan
//! (which holds the f32 copies the emulation makes); `bench` times an fp16 step of the
//! trained T5.

use std::path::{Path, PathBuf};

use serde_json::Value;

mod common;

use common::cli::{last_json_line, p, run, scratch};

fn tmp(name: &str) -> PathBuf {
    scratch("fp16", name)
}

/// `train TASK` in fp16 on the CPU for three steps into `out`: its final JSON line.
fn train_fp16(task: &[&str], out: &Path) -> Value {
    let mut args = task.to_vec();
    args.extend([
        "--max-steps",
        "3",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--precision",
        "fp16",
        "--quiet",
        "--out",
        p(out),
    ]);
    last_json_line(&run(env!("CARGO_BIN_EXE_train"), &args))
}

#[test]
fn train_fp16_on_the_cpu_for_every_task_and_bench_it() {
    let tasks: [(&str, &[&str]); 4] = [
        (
            "qa",
            &["qa", "--contexts", "40", "--dim", "32", "--layers", "1"],
        ),
        ("summarize", &["summarize", "--eval-limit", "4"]),
        // Adafactor's f32 state and masters beside the f16 weights, planned too.
        (
            "summarize-adafactor",
            &["summarize", "--eval-limit", "4", "--optim", "adafactor"],
        ),
        ("translate", &["translate", "--eval-limit", "4"]),
    ];
    let translate = tmp("translate");
    for (what, task) in tasks {
        let out = if what == "translate" {
            translate.clone()
        } else {
            tmp(what)
        };
        let fin = train_fp16(task, &out);
        assert_eq!(fin["train_steps"].as_u64(), Some(3), "{what}: {fin}");
        let skipped = fin["skipped_steps"]
            .as_u64()
            .unwrap_or_else(|| panic!("{what}: skipped_steps in {fin}"));
        // The plan is the CPU's fp16 step (to the byte in tests/budget/fp16.rs) at the
        // longest batch the data makes; shorter batches hold less, never more.
        let peak = fin["peak_memory_bytes"].as_f64().unwrap_or(0.0);
        let planned = fin["peak_memory_predicted_bytes"].as_f64().unwrap_or(0.0);
        assert!(
            peak > 0.0 && peak <= planned && planned <= 1.1 * peak,
            "{what}: measured {peak}, planned {planned}"
        );
        // GradScaler: 2^16, halved once per skipped step (no growth in 3 steps).
        let log = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
        let last = log
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["loss_scale"].is_number())
            .unwrap_or_else(|| panic!("{what}: no loss_scale in {log}"));
        let scale = last["loss_scale"].as_f64().expect("scale");
        assert_eq!(scale, 65536.0 / 2f64.powi(skipped as i32), "{what}: {last}");
        assert!(last["loss"].as_f64().is_some_and(f64::is_finite), "{last}");
        if what != "translate" {
            let _ = std::fs::remove_dir_all(&out);
        }
    }
    let o = run(
        env!("CARGO_BIN_EXE_bench"),
        &[
            "--model",
            p(&translate),
            "--device",
            "cpu",
            "--precision",
            "fp16",
            "--batch",
            "2",
            "--seq",
            "16",
            "--tgt-seq",
            "8",
            "--steps",
            "2",
            "--json",
        ],
    );
    let rec = last_json_line(&o);
    assert_eq!(rec["precision"], "fp16", "{rec}");
    assert!(
        rec["tokens_per_s"].as_f64().is_some_and(|t| t > 0.0),
        "{rec}"
    );
    // bench holds its batch beside the step, which the plan leaves out: within 1 %.
    let (got, want) = (
        rec["peak_mem_bytes"].as_f64().expect("peak"),
        rec["predicted_peak_bytes"].as_f64().expect("predicted"),
    );
    assert!((got - want).abs() <= 0.01 * got, "{rec}");
    let _ = std::fs::remove_dir_all(&translate);
}
