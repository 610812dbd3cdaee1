//! Training that survives a disconnect, on the CPU: a `train` child killed with SIGKILL
//! at a moment drawn from a seed (printed; FUSEBOX_KILL_SEED replays it) and resumed
//! with `--resume auto` ends with the same weights, byte for byte, and the same
//! metrics.jsonl lines (timings aside) as the run that was never interrupted — for QA,
//! summarization and translation (fp16 with gradient accumulation too). SIGINT
//! checkpoints and exits 130; a checkpoint of other settings is refused naming what
//! differs; a corrupt newest checkpoint is skipped for the one before it; an output
//! directory holding a run is refused without --overwrite.
//!
//! On a card (tools/gpu_session.sh): FUSEBOX_RESUME_DEVICE=cuda runs the same runs on
//! CUDA and FUSEBOX_TRAIN_BIN names the `train` binary. CUDA's atomics (the embedding
//! gradient's scatter-add) sum in no fixed order, so two CUDA runs differ in the last
//! bits even uninterrupted: there the weights are held to 1e-3 (relative L2) and the
//! metrics to the same steps, instead of bytes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `train` binary: FUSEBOX_TRAIN_BIN (a GPU machine's copy), else this build's.
fn train_bin() -> String {
    std::env::var("FUSEBOX_TRAIN_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_train").into())
}

/// `cpu`, or FUSEBOX_RESUME_DEVICE (e.g. `cuda`).
fn device() -> String {
    std::env::var("FUSEBOX_RESUME_DEVICE").unwrap_or_else(|_| "cpu".into())
}

/// `args` for this test's device.
fn on_device(args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    v.extend(["--device".to_string(), device()]);
    v
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fusebox-resume-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn train(args: &[&str], out: &Path, extra: &[&str]) -> Output {
    Command::new(train_bin())
        .args(on_device(args))
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("spawn train")
}

fn ok(o: Output, what: &str) -> Output {
    assert!(
        o.status.success(),
        "{what} failed ({:?}):\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// metrics.jsonl's lines without their timings.
fn metric_lines(out: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("a JSON line");
            if let Some(o) = v.as_object_mut() {
                o.remove("tokens_per_s");
                o.remove("elapsed_s");
            }
            v
        })
        .collect()
}

fn weights(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("model.safetensors")).expect("model.safetensors")
}

fn same_run(a: &Path, b: &Path, what: &str) {
    if device() == "cpu" {
        assert!(weights(a) == weights(b), "{what}: final weights differ");
        assert_eq!(
            metric_lines(a),
            metric_lines(b),
            "{what}: metrics.jsonl differs"
        );
        return;
    }
    let load = |d: &Path| {
        fusebox::nn::safetensors_io::load(
            &d.join("model.safetensors"),
            fusebox::DType::F32,
            fusebox::Device::Cpu,
        )
        .expect("weights")
    };
    let (wa, wb) = (load(a), load(b));
    assert_eq!(wa.keys().collect::<Vec<_>>(), wb.keys().collect::<Vec<_>>());
    for (name, ta) in &wa {
        let (x, y) = (
            ta.to_vec_f32().expect("a"),
            wb[name].to_vec_f32().expect("b"),
        );
        let num: f64 = x
            .iter()
            .zip(&y)
            .map(|(p, q)| (*p as f64 - *q as f64).powi(2))
            .sum();
        let den: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum();
        let rel = (num / den.max(1e-30)).sqrt();
        assert!(
            rel <= 1e-3,
            "{what}: {name} differs by {rel:.2e} (relative L2)"
        );
    }
    let steps =
        |d: &Path| -> Vec<Value> { metric_lines(d).iter().map(|v| v["step"].clone()).collect() };
    assert_eq!(steps(a), steps(b), "{what}: logged steps differ");
}

fn checkpoints(out: &Path) -> usize {
    std::fs::read_dir(out)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
                .filter(|e| !e.file_name().to_string_lossy().contains(".tmp-"))
                .count()
        })
        .unwrap_or(0)
}

/// The seed of the kill moments: FUSEBOX_KILL_SEED, else the clock (printed).
fn kill_seed() -> u64 {
    let seed = std::env::var("FUSEBOX_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() as u64)
                .unwrap_or(7)
        });
    eprintln!("kill seed {seed} (FUSEBOX_KILL_SEED={seed} replays it)");
    seed
}

/// The highest step among `out`'s complete checkpoint folders (0 without one).
fn newest_step(out: &Path) -> usize {
    std::fs::read_dir(out)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_prefix("checkpoint-")?.parse::<usize>().ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Start `args` into `out`, wait until a checkpoint at step `at` or later exists, then
/// SIGKILL it `delay_ms` later; the kill must land before the run's end (no run.json).
fn kill_mid_run(args: &[&str], out: &Path, at: usize, delay_ms: u64) {
    let mut child = Command::new(train_bin())
        .args(on_device(args))
        .arg("--out")
        .arg(out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn train");
    let t0 = Instant::now();
    while newest_step(out) < at && t0.elapsed() < Duration::from_secs(120) {
        if child.try_wait().expect("wait").is_some() {
            panic!("{args:?} ended before its checkpoint at step {at}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(delay_ms));
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !out.join("run.json").exists(),
        "the kill landed after the run ended: nothing was interrupted"
    );
}

/// Kill `args` at a checkpoint step drawn from `seed` (one of the first three saves,
/// `every` steps apart) plus up to 30 ms, resume, and compare with an uninterrupted run.
fn kill_and_resume(what: &str, args: &[&str], every: usize, seed: u64) {
    let a = tmp(&format!("{what}-a"));
    let b = tmp(&format!("{what}-b"));
    ok(train(args, &a, &[]), &format!("{what} uninterrupted"));
    let (at, delay) = (every * (1 + seed as usize % 3), seed / 3 % 30);
    kill_mid_run(args, &b, at, delay);
    eprintln!("{what}: killed {delay} ms after the checkpoint at step {at}; resuming");
    ok(
        train(args, &b, &["--resume", "auto"]),
        &format!("{what} resumed"),
    );
    same_run(&a, &b, what);
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

const QA: &[&str] = &[
    "qa",
    "--contexts",
    "150",
    "--dim",
    "32",
    "--layers",
    "1",
    "--epochs",
    "3",
    "--batch",
    "8",
    "--quiet",
    "--seed",
    "3",
    "--save-strategy",
    "steps",
    "--save-steps",
    "7",
];

fn seq2seq(task: &'static str) -> Vec<&'static str> {
    vec![
        task,
        "--epochs",
        "1",
        "--max-steps",
        "24",
        "--eval-limit",
        "3",
        "--quiet",
        "--save-strategy",
        "steps",
        "--save-steps",
        "5",
    ]
}

#[test]
fn killed_runs_resume_to_the_same_weights_and_metrics() {
    let seed = kill_seed();
    kill_and_resume("qa", QA, 7, seed);
    kill_and_resume("translate", &seq2seq("translate"), 5, seed / 7);
    kill_and_resume("summarize", &seq2seq("summarize"), 5, seed / 13);
    // Adafactor's state (factored second moments, the first moment) and its step count
    // come back with the checkpoint too.
    let mut af = seq2seq("translate");
    af.extend(["--optim", "adafactor", "--optim-args", "beta1=0.9"]);
    kill_and_resume("translate-adafactor", &af, 5, seed / 17);
    // fp16 (the loss scaler and the fp32 masters resume too) with accumulation.
    let mut fp16 = seq2seq("translate");
    fp16.extend(["--precision", "fp16", "--grad-accum", "2"]);
    kill_and_resume("translate-fp16", &fp16, 5, seed / 19);
}

#[test]
fn sigint_checkpoints_exits_130_and_resumes() {
    let a = tmp("int-a");
    let b = tmp("int-b");
    ok(train(QA, &a, &[]), "uninterrupted");
    let mut child = Command::new(train_bin())
        .args(on_device(QA))
        .arg("--out")
        .arg(&b)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    while checkpoints(&b) == 0 {
        assert!(child.try_wait().expect("wait").is_none(), "ended early");
        std::thread::sleep(Duration::from_millis(2));
    }
    let pid = child.id().to_string();
    let sent = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let o = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted at step") && err.contains("--resume auto"),
        "{err}"
    );
    ok(train(QA, &b, &["--resume"]), "resumed after SIGINT");
    same_run(&a, &b, "sigint");
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn resume_refuses_other_settings_and_skips_a_corrupt_checkpoint() {
    let a = tmp("guard-a");
    let args: Vec<&str> = QA
        .iter()
        .copied()
        .chain(["--save-total-limit", "0"])
        .collect();
    ok(train(&args, &a, &[]), "uninterrupted");
    // A second run into the same folder is refused; --overwrite replaces it.
    let o = train(&args, &a, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--overwrite"), "{err}");
    // Another learning rate: refused, naming it.
    let o = train(&args, &a, &["--resume", "auto", "--lr", "0.5"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("lr: "), "{err}");
    // Another optimizer: refused, naming it.
    let o = train(&args, &a, &["--resume", "auto", "--optim", "adafactor"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("optimizer"), "{err}");
    // The newest checkpoint corrupted: skipped with a message, the one before used, and
    // the run still ends where the uninterrupted one did.
    let b = tmp("guard-b");
    ok(train(&args, &b, &[]), "second copy");
    let mut steps: Vec<usize> = std::fs::read_dir(&b)
        .expect("dir")
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("checkpoint-").and_then(|s| s.parse().ok())
        })
        .collect();
    steps.sort();
    let newest = b.join(format!("checkpoint-{}", steps[steps.len() - 1]));
    std::fs::write(newest.join("model.safetensors"), b"truncated").expect("corrupt");
    let o = ok(
        train(&args, &b, &["--resume", "auto"]),
        "resume past corruption",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("skipping") && err.contains("checksum"),
        "{err}"
    );
    same_run(&a, &b, "after a corrupt checkpoint");
    // --out equal to --model is refused before anything is written.
    let o = Command::new(train_bin())
        .args(["qa", "--model"])
        .arg(&a)
        .args(["--train", "x.json", "--eval", "x.json", "--out"])
        .arg(&a)
        .output()
        .expect("spawn");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("model directory"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

/// `args` with `flag`'s value replaced.
fn with<'a>(args: &[&'a str], flag: &str, value: &'a str) -> Vec<&'a str> {
    let mut v = args.to_vec();
    let i = v.iter().position(|a| *a == flag).expect("flag present") + 1;
    v[i] = value;
    v
}

#[test]
fn max_time_checkpoints_and_exits_75() {
    let d = tmp("time");
    let long = with(QA, "--epochs", "40");
    let o = train(&long, &d, &["--max-time", "1s"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(75), "{err}");
    assert!(
        err.contains("--max-time reached") && err.contains("--resume auto"),
        "{err}"
    );
    assert!(checkpoints(&d) >= 1, "a checkpoint at the stop");
    assert!(
        !d.join("run.json").exists(),
        "no final model from a stopped run"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_best_checkpoint_is_kept_and_loaded_at_the_end() {
    let d = tmp("best");
    // 16 does not divide the run's steps: its final evaluation has no checkpoint, and
    // may be the best (then the final weights are already the best model).
    let args = with(QA, "--save-steps", "16");
    let extra = [
        "--eval-strategy",
        "steps",
        "--eval-steps",
        "16",
        "--save-total-limit",
        "1",
        "--load-best-model-at-end",
    ];
    let o = ok(train(&args, &d, &extra), "best model run");
    let fin: Value = serde_json::from_str(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .expect("final line"),
    )
    .expect("final JSON");
    let evals: Vec<(u64, f64)> = metric_lines(&d)
        .iter()
        .filter_map(|v| Some((v["step"].as_u64()?, v["eval"]["f1"].as_f64()?)))
        .collect();
    let best = evals
        .iter()
        .copied()
        .fold((0, f64::MIN), |a, b| if b.1 > a.1 { b } else { a });
    assert_eq!(fin["f1"].as_f64(), Some(best.1), "{evals:?}");
    let last = evals.last().expect("evaluations").0;
    if best.0 != last {
        let best_dir = d.join(format!("checkpoint-{}", best.0));
        assert!(best_dir.is_dir(), "the best checkpoint survives rotation");
        assert!(
            weights(&d) == weights(&best_dir),
            "the final model is the best checkpoint's"
        );
    }
    let marker: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("run.json")).expect("run.json"))
            .expect("marker");
    assert_eq!(marker["complete"], Value::Bool(true));
    let _ = std::fs::remove_dir_all(&d);
}
