//! `--optim adafactor` end to end on the built-in data (seconds on a CPU): `train
//! translate` (T5) and `train qa` (DistilBERT) run with transformers' Adafactor as HF
//! Trainer builds it and their loss falls; with relative_step the logged lr is
//! Adafactor's own step size and --lr is refused; a bad --optim or --optim-args value is
//! refused naming the flag, on `train` and on `bench`.

use std::path::Path;

use serde_json::Value;

mod common;

use common::cli::{p, refused, run, scratch};

fn losses(out: &Path) -> Vec<(f64, f64)> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["loss"].as_f64()?, v["lr"].as_f64()?)))
        .collect()
}

fn train(task_flags: &str, extra: &[&str], name: &str) -> Vec<(f64, f64)> {
    let out = scratch("optim", name);
    let mut args: Vec<&str> = task_flags.split_whitespace().collect();
    args.extend(extra);
    args.extend(["--device", "cpu", "--quiet", "--out", p(&out)]);
    run(env!("CARGO_BIN_EXE_train"), &args);
    let l = losses(&out);
    let _ = std::fs::remove_dir_all(&out);
    l
}

const TRANSLATE: &str = "translate --max-steps 40 --epochs 1 --eval-limit 2 --save-strategy no";
const QA: &str =
    "qa --contexts 60 --dim 32 --layers 1 --max-steps 30 --epochs 1 --save-strategy no";

#[test]
fn adafactor_trains_on_the_builtin_tasks() {
    for (what, flags) in [("translate", TRANSLATE), ("qa", QA)] {
        let l = train(flags, &["--optim", "adafactor"], what);
        assert!(l.len() >= 3, "{what}: {l:?}");
        let (first, last) = (l[0].0, l[l.len() - 1].0);
        assert!(
            last < 0.9 * first,
            "{what}: the loss did not fall with Adafactor: {l:?}"
        );
        // Trainer's adafactor follows the --lr schedule: linear decay, never above it.
        assert!(l.windows(2).all(|w| w[1].1 <= w[0].1), "{what}: {l:?}");
    }
    // relative_step: Adafactor's own step size, min(1e-2, 1/sqrt(t)) · RMS(parameter)
    // with scale_parameter, logged as HF's AdafactorSchedule reports it.
    let args = [
        "--optim",
        "adafactor",
        "--optim-args",
        "relative_step=true,scale_parameter=true",
    ];
    let l = train(TRANSLATE, &args, "relative");
    let (first, last) = (l[0].0, l[l.len() - 1].0);
    assert!(last < first, "relative step: the loss did not fall: {l:?}");
    assert!(
        l.iter().all(|x| x.1 > 0.0 && x.1 <= 1e-2 && x.1 != 2e-3),
        "relative step: logged lr is not Adafactor's: {l:?}"
    );
}

#[test]
fn bad_optimizer_flags_are_refused_naming_the_flag() {
    let train = env!("CARGO_BIN_EXE_train");
    let base = [
        "translate",
        "--max-steps",
        "1",
        "--device",
        "cpu",
        "--quiet",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    let cases: [(&[&'static str], &[&str]); 6] = [
        (&["--optim", "sgd"], &["--optim", "\"sgd\"", "adafactor"]),
        (
            &["--optim", "adafactor", "--optim-args", "beta2=0.9"],
            &["--optim-args", "beta2", "relative_step"],
        ),
        (
            &[
                "--optim",
                "adafactor",
                "--optim-args",
                "relative_step=maybe",
            ],
            &["--optim-args", "relative_step=maybe", "true or false"],
        ),
        (
            &["--optim", "adafactor", "--optim-args", "warmup_init=true"],
            &["warmup_init", "relative_step"],
        ),
        (
            &["--optim-args", "beta1=0.9"],
            &["--optim-args", "adafactor"],
        ),
        (
            &[
                "--optim",
                "adafactor",
                "--optim-args",
                "relative_step=true",
                "--lr",
                "1e-3",
            ],
            &["--lr", "relative_step"],
        ),
    ];
    for (extra, needles) in cases {
        refused(train, &with(extra), needles);
    }
    let bench = env!("CARGO_BIN_EXE_bench");
    refused(
        bench,
        &[
            "--model",
            "distilbert-qa",
            "--device",
            "cpu",
            "--optim",
            "lion",
        ],
        &["--optim", "\"lion\""],
    );
}

/// `--plan` names the optimizer it planned, and Adafactor's state is far below AdamW's.
#[test]
fn the_plan_names_the_optimizer() {
    let train = env!("CARGO_BIN_EXE_train");
    let plan = |optim: &str| -> String {
        let o = run(
            train,
            &["translate", "--device", "cpu", "--plan", "--optim", optim],
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let (af, aw) = (plan("adafactor"), plan("adamw_torch"));
    assert!(af.contains("Adafactor factored second moments"), "{af}");
    assert!(aw.contains("AdamW m and v"), "{aw}");
}
