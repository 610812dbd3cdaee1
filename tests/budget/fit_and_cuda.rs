//! `fit` (micro-batch and checkpointing under a budget), the CUDA-target plans, the
//! size parser and `train --plan`, and on a GPU the CUDA plan against the CUDA tracker
//! (a module of tests/budget.rs).

use super::*;

#[test]
fn fit_picks_the_largest_micro_batch_that_fits() {
    let _l = lock(); // plans touch no CPU buffer, but stay out of measurements anyway
    let spec = default_distilbert();
    let at = |m: usize, ckpt: bool| {
        let w = Workload {
            micro_batch: m,
            grad_accum: 32usize.div_ceil(m),
            ..t4_work(ckpt)
        };
        predict(&spec, &w, 32).expect("plan").peak_bytes
    };
    // The peak grows with the micro-batch; a budget between 5 and 6 rows picks 5.
    assert!(at(5, false) < at(6, false));
    let budget = (at(5, false) + at(6, false)) / 2;
    let p = fit(&spec, budget, 32, &t4_work(false), false).expect("fits");
    assert_eq!(p.work.micro_batch, 5);
    assert_eq!(p.work.grad_accum, 7, "ceil(32 / 5)");
    assert!(p.work.micro_batch * p.work.grad_accum >= 32);
    assert!(!p.work.checkpointing);
    assert!(p.peak_bytes <= budget);
    assert_eq!(p.budget, Some(budget));
    // Room for 27 of 64 rows: 3 steps, evened out to 22 rows each (not 27 x 3 = 81).
    let at64 = |m: usize| {
        let w = Workload {
            micro_batch: m,
            grad_accum: 64usize.div_ceil(m),
            ..t4_work(false)
        };
        predict(&spec, &w, 64).expect("plan").peak_bytes
    };
    let p = fit(&spec, (at64(27) + at64(28)) / 2, 64, &t4_work(false), false).expect("fits");
    assert_eq!((p.work.micro_batch, p.work.grad_accum), (22, 3));
    // A budget for everything: the requested batch in one step.
    let p = fit(&spec, 1 << 40, 32, &t4_work(false), false).expect("fits");
    assert_eq!((p.work.micro_batch, p.work.grad_accum), (32, 1));
    // A T4's 16 GB card takes batch 32 x 384 of DistilBERT in fp16 in one step.
    let t4 = fusebox::plan::gpu_memory("t4").expect("t4");
    let p = fit(&spec, t4, 32, &t4_work(false), false).expect("fits a T4");
    assert_eq!(p.work.micro_batch, 32, "{}", p.table());
}

#[test]
fn fit_turns_on_checkpointing_only_when_it_must_and_refuses_with_the_breakdown() {
    let _l = lock(); // plans touch no CPU buffer, but stay out of measurements anyway
                     // A small vocabulary: at micro-batch 1 the default model's peak is the embedding
                     // table's backward, which checkpointing does not touch; here activations dominate.
    let cfg: DistilBertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 1000, "dim": 128, "n_layers": 6, "n_heads": 2, "hidden_dim": 512,
        "max_position_embeddings": 2048
    }))
    .expect("config");
    let spec = distilbert(cfg);
    let long = |ckpt: bool| Workload {
        seq_len: 2048,
        ..t4_work(ckpt)
    };
    let one = |ckpt: bool| {
        let w = Workload {
            grad_accum: 8,
            ..long(ckpt)
        };
        predict(&spec, &w, 8).expect("plan").peak_bytes
    };
    let (plain, ckpt) = (one(false), one(true));
    assert!(ckpt < plain, "checkpointing {ckpt} vs plain {plain}");
    let p = fit(&spec, (plain + ckpt) / 2, 8, &long(false), false).expect("fits");
    assert!(p.work.checkpointing);
    let m = p.work.micro_batch;
    assert_eq!(p.work.grad_accum, 8usize.div_ceil(m));
    // With checkpointing on, still the largest micro-batch that fits.
    let next = Workload {
        micro_batch: m + 1,
        grad_accum: 8usize.div_ceil(m + 1),
        ..long(true)
    };
    assert!(predict(&spec, &next, 8).expect("plan").peak_bytes > (plain + ckpt) / 2);
    // Forced on by the user even where it is not needed.
    let p = fit(&spec, 1 << 40, 8, &long(false), true).expect("fits");
    assert!(p.work.checkpointing);
    let err = fit(&spec, ckpt - 1, 8, &long(false), false)
        .expect_err("too small")
        .to_string();
    assert!(err.contains("too small"), "{err}");
    assert!(
        err.contains("AdamW m and v") && err.contains("predicted peak"),
        "{err}"
    );
}

#[test]
fn cuda_fp16_plans_carry_the_cuda_terms() {
    let _l = lock(); // plans touch no CPU buffer, but stay out of measurements anyway
    let (spec, w16) = t4_distilbert_b8();
    let w32 = Workload {
        dtype: DType::F32,
        ..w16
    };
    let (p16, p32) = (
        predict(&spec, &w16, 8).expect("fp16"),
        predict(&spec, &w32, 8).expect("fp32"),
    );
    let has = |p: &Plan, what: &str| p.components.iter().any(|(n, _)| n.contains(what));
    let cuda = |p: &Plan, what: &str| p.cuda_only.iter().any(|(n, _)| n.contains(what));
    assert!(cuda(&p16, "cuBLAS") && cuda(&p16, "CUDA context") && has(&p16, "master"));
    assert!(!has(&p16, "cuBLAS"), "CUDA-only terms are listed apart");
    let cuda_sum: usize = p16.cuda_only.iter().map(|c| c.1).sum();
    assert_eq!(p16.peak_bytes, p16.tensor_peak + cuda_sum);
    assert!(p16.table().contains("CUDA only"), "{}", p16.table());
    assert!(!has(&p32, "master"));
    let saved = |p: &Plan| p.saved;
    // fp16 halves the activations; the norm statistics and lse stay f32.
    assert!(saved(&p16) * 2 > saved(&p32) && saved(&p16) * 2 < saved(&p32) * 11 / 10 * 2);
    assert!(saved(&p16) < saved(&p32) * 6 / 10);
    let cpu = predict(
        &spec,
        &Workload {
            target: Target::Cpu,
            ..w32
        },
        8,
    )
    .expect("cpu");
    assert_eq!(cpu.peak_bytes, cpu.tensor_peak, "no CUDA terms on the CPU");
    // T5 in fp16 keeps its residual stream in f32: more than half of the f32 model's
    // activations, less than all; checkpointing lowers the step either way.
    let t5 = t5(T5Config::default());
    let plan = |dtype: DType, ckpt: bool| {
        let w = Workload {
            micro_batch: 8,
            seq_len: 512,
            tgt_len: 128,
            dtype,
            ..t4_work(ckpt)
        };
        predict(&t5, &w, 8).expect("t5")
    };
    let (a16, a32) = (
        saved(&plan(DType::F16, false)),
        saved(&plan(DType::F32, false)),
    );
    assert!(a16 * 2 > a32 && a16 < a32, "fp16 {a16} vs fp32 {a32}");
    for dtype in [DType::F16, DType::F32] {
        assert!(plan(dtype, true).tensor_peak < plan(dtype, false).tensor_peak);
    }
}

#[test]
fn sizes_parse_with_units_and_refuse_garbage() {
    use fusebox::plan::{gpu_memory, parse_size};
    assert_eq!(parse_size("15GiB").unwrap(), 15 << 30);
    assert_eq!(parse_size("16GB").unwrap(), 16_000_000_000);
    assert_eq!(parse_size("12000MiB").unwrap(), 12000 << 20);
    assert_eq!(parse_size("1.5 gib").unwrap(), 3 << 29);
    assert_eq!(parse_size("123456").unwrap(), 123456);
    assert_eq!(parse_size("64KiB").unwrap(), 65536);
    for bad in ["", "GiB", "15 gigs", "-5GB", "1e3", "0", "15G"] {
        let e = parse_size(bad).expect_err(bad).to_string();
        assert!(e.contains("not a memory size"), "{bad}: {e}");
    }
    assert_eq!(gpu_memory("T4").unwrap(), 15360 << 20);
    assert!(gpu_memory("h100").unwrap() > gpu_memory("a100").unwrap());
    assert_eq!(gpu_memory("H200").unwrap(), 143771 << 20);
    assert!(gpu_memory("v100").is_err());
}

#[test]
fn train_plan_prints_the_plan_and_exits() {
    let out = std::env::temp_dir().join(format!("fusebox-budget-cli-{}", std::process::id()));
    let run = |extra: &[&str]| {
        let mut args = vec![
            "qa",
            "--plan",
            "--device",
            "cpu",
            "--contexts",
            "20",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_train"))
            .args(&args)
            .arg("--out")
            .arg(&out)
            .output()
            .expect("run train")
    };
    let ok = run(&["--gpu", "t4", "--precision", "fp16", "--batch", "64"]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("memory plan: DistilBERT-QA"), "{stdout}");
    assert!(stdout.contains("micro-batch 64 x 1"), "{stdout}");
    assert!(stdout.contains("CUDA context"), "{stdout}");
    assert!(!out.join("metrics.jsonl").exists(), "--plan must not train");
    let small = run(&["--vram-budget", "100KB"]);
    assert!(!small.status.success());
    let err = String::from_utf8_lossy(&small.stderr);
    assert!(
        err.contains("too small") && err.contains("predicted peak"),
        "{err}"
    );
    let bad = run(&["--vram-budget", "15 gigs"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--vram-budget"));
    let _ = std::fs::remove_dir_all(&out);
}

/// On a GPU: the same step on the CUDA backend against the plan for CUDA (fp32 takes
/// the unfused attention, fp16 with head dim 64 the fused kernels): weights and
/// optimizer state to the byte, the step's peak within 5 % (the tracker counts tensor
/// bytes; cuBLASLt may decline a shape on a given card, which no plan can know). Skips
/// without a CUDA device.
#[test]
fn cuda_prediction_matches_the_tracker() {
    if !fusebox::backend::cuda::is_available() {
        eprintln!("skipping: no CUDA device");
        return;
    }
    let _l = lock();
    let dev = Device::Cuda(0);
    for dtype in [DType::F32, DType::F16] {
        for ckpt in [false, true] {
            let work = Workload {
                dtype,
                target: Target::Cuda,
                ..cpu_work(4, 128, 32, ckpt)
            };
            for (what, src, optim) in [
                (
                    "distilbert",
                    distilbert(distilbert_cfg(128, 2, 1000)),
                    OptimConfig::default(),
                ),
                (
                    "distilbert adafactor",
                    distilbert(distilbert_cfg(128, 2, 1000)),
                    OptimConfig::Adafactor(AdafactorConfig::trainer(0.01)),
                ),
                ("t5", t5(t5_cfg(1000, 256, 2, true)), OptimConfig::default()),
                (
                    "t5 adafactor",
                    t5(t5_cfg(1000, 256, 2, true)),
                    OptimConfig::Adafactor(AdafactorConfig {
                        beta1: Some(0.9),
                        ..AdafactorConfig::default()
                    }),
                ),
                (
                    "marian",
                    ModelSource::config(ModelConfig::Bart(bart_cfg("marian", 1000, 256, 2))),
                    OptimConfig::default(),
                ),
            ] {
                let work = Workload { optim, ..work };
                let got = measure(&src, &work, dev).expect("cuda step");
                let meta = measure(&src, &work, Device::Meta(Target::Cuda)).expect("meta");
                let what = format!("cuda {what} {dtype} ckpt={ckpt}");
                eprintln!("{what}: measured {got:?}, planned {meta:?}");
                assert_eq!(
                    (meta.weights, meta.optimizer),
                    (got.weights, got.optimizer),
                    "{what}"
                );
                let rel = (meta.step as f64 - got.step as f64).abs() / got.step as f64;
                assert!(
                    rel <= 0.05,
                    "{what}: step {} planned, {} measured",
                    meta.step,
                    got.step
                );
            }
        }
    }
}
