//! The roofline of `bench` and its comparison with PyTorch: every op name the engine
//! profiles has a category and a cost (checked on the source and on real training steps
//! of the tiny models, checkpointing on and off), and `bench --compare` prints the
//! per-category table against the committed torch.profiler fixture and refuses a
//! missing or malformed file, naming it and what was expected.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::cli::{p, refused, run, scratch};
use fusebox::bench::{self, seq2seq::Seq2SeqBench, BenchConfig, BenchModel};
use fusebox::models::step::ModelConfig;
use fusebox::optim::{AdafactorConfig, OptimConfig};
use fusebox::profile::cost::{category, Category, CATEGORIES};
use fusebox::{DType, Device};

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

/// The first argument of each call of `call` in `text` (a call: the name not preceded by
/// an identifier character, `.` or `fn `).
fn first_args<'a>(text: &'a str, call: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find(call) {
        let at = from + i;
        from = at + call.len();
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
            || text[..at].ends_with("fn ")
        {
            continue;
        }
        let rest = text[from..].trim_start();
        // Up to the first `,` or `)` outside parentheses.
        let mut depth = 0usize;
        let end = rest
            .char_indices()
            .find(|&(_, c)| match c {
                '(' => {
                    depth += 1;
                    false
                }
                ')' if depth > 0 => {
                    depth -= 1;
                    false
                }
                ',' | ')' => depth == 0,
                _ => false,
            })
            .map_or(rest.len(), |(i, _)| i);
        out.push(rest[..end].trim());
    }
    out
}

/// The `name =>` entries of a `macro! { ... }` invocation in `text`.
fn macro_names<'a>(text: &'a str, invocation: &str) -> Vec<&'a str> {
    let Some(start) = text.find(invocation) else {
        return Vec::new();
    };
    let body = &text[start..];
    let body = &body[..body.find('}').unwrap_or(body.len())];
    body.lines()
        .filter_map(|l| l.trim().split_once(" =>").map(|(n, _)| n.trim()))
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let path = e.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Every name given to a profiler span or a tape node in src/ (a string literal, or a
/// name the arithmetic / activation macros generate) is in the category table, and the
/// table holds no name the engine never records. Checkpoint nodes are not timed (the ops
/// they rerun are), so their names need none.
#[test]
fn every_profiled_op_name_has_a_category() {
    let mut files = Vec::new();
    rust_files(&common::root().join("src"), &mut files);
    let mut names = BTreeSet::new();
    // Sites that pass on a name they were given (checked through their callers).
    let forwarding = ["name", "stringify!($name)", "node.name"];
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        for call in ["Span::new(", "record(", "record_pointwise(", "record_two("] {
            for arg in first_args(&text, call) {
                match arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')) {
                    Some(lit) => {
                        names.insert(lit.to_string());
                    }
                    None => assert!(
                        forwarding.contains(&arg),
                        "{}: {call}{arg}, ...): a name the test cannot read; pass a literal",
                        f.display()
                    ),
                }
            }
        }
        for m in ["arithmetic! {", "activations! {"] {
            names.extend(macro_names(&text, m).into_iter().map(String::from));
        }
    }
    for must in ["linear", "attention", "add", "gelu", "adamw", "cat"] {
        assert!(names.contains(must), "the scan missed {must}: {names:?}");
    }
    let missing: Vec<_> = names.iter().filter(|n| category(n).is_none()).collect();
    assert!(
        missing.is_empty(),
        "op names without a category in profile/cost.rs: {missing:?}"
    );
    let stale: Vec<_> = CATEGORIES
        .iter()
        .filter(|(n, _)| !names.contains(*n))
        .collect();
    assert!(
        stale.is_empty(),
        "categories for names nothing records: {stale:?}"
    );
}

/// A profiled bench run of a fixture model: the JSON record.
fn profiled(
    model: &str,
    checkpointing: bool,
    train: bool,
    optim: OptimConfig,
) -> serde_json::Value {
    let dir = common::fixture(&format!("models/{model}"));
    let spec = bench::model_source(p(&dir)).expect("model");
    let mut m: Box<dyn BenchModel> = match &spec.config {
        ModelConfig::T5(_) | ModelConfig::Bart(_) => {
            Box::new(Seq2SeqBench::new(&spec, (2, 8, 4), Device::Cpu, DType::F32).expect("seq2seq"))
        }
        _ => bench::distilbert_bench(Some(&dir), 2, 8, Device::Cpu, DType::F32).expect("qa"),
    };
    m.set_checkpointing(checkpointing);
    let cfg = BenchConfig {
        steps: 1,
        warmup: 0,
        train,
        fp16: false,
        device: Device::Cpu,
        profile_steps: 1,
        trace: false,
        memory_plan: None,
        optim,
        grad_accum: 1,
        max_time: None,
    };
    bench::run(m.as_ref(), &cfg).expect("bench run")
}

/// Every op a training step (AdamW or Adafactor) or an inference forward of each model
/// family times gets a category and a cost, recomputed ones included; the categories sum
/// the ops' time.
#[test]
fn every_op_of_a_real_step_has_a_category_and_a_cost() {
    let mut seen = BTreeSet::new();
    for model in [
        "distilbert_qa",
        "bert_qa",
        "t5_relu_tied",
        "t5_gated_untied",
        "bart_tiny",
        "marian_tiny",
    ] {
        let adafactor = OptimConfig::Adafactor(AdafactorConfig::default());
        for (ckpt, train, optim) in [
            (false, true, OptimConfig::default()),
            (true, true, OptimConfig::default()),
            (false, false, OptimConfig::default()),
            (false, true, adafactor),
        ] {
            let rec = profiled(model, ckpt, train, optim);
            let ops = rec["ops"].as_array().expect("ops");
            assert!(!ops.is_empty(), "{model}: no ops profiled");
            for o in ops {
                let name = o["op"].as_str().expect("op name");
                seen.insert(name.to_string());
                assert_ne!(o["category"], "other", "{model}: {name} has no category");
                assert!(
                    o["flops"].is_f64() && o["bytes"].is_f64(),
                    "{model}: {name} has no cost: {o}"
                );
            }
            let ops_ms: f64 = ops.iter().map(|o| o["ms"].as_f64().unwrap()).sum();
            let cats = rec["categories"].as_object().expect("categories");
            let cat_ms: f64 = cats.values().map(|c| c["ms"].as_f64().unwrap()).sum();
            assert!(
                (ops_ms - cat_ms).abs() <= 1e-9 * ops_ms.max(1.0),
                "{model}: {ops_ms} vs {cat_ms}"
            );
            assert!(rec["peaks"]["mem_gb_per_s"].as_f64().unwrap() > 0.0);
            assert!(rec["peaks"]["measured_gemm_tflops"].as_f64().unwrap() > 0.0);
        }
    }
    // Checkpointing's rerun forward is timed (and costed) as recompute rows; both
    // optimizers' steps are rows.
    for row in [
        "linear.recompute",
        "attention.recompute",
        "linear.bwd",
        "adamw",
        "adafactor",
        "cross_entropy",
    ] {
        assert!(seen.contains(row), "no {row} row in {seen:?}");
    }
}

#[test]
fn compare_prints_the_categories_side_by_side() {
    let fixture = common::fixture("torch_profile_distilbert_qa_cpu.json");
    let model = common::fixture("models/distilbert_qa");
    let args = [
        "--model",
        p(&model),
        "--device",
        "cpu",
        "--batch",
        "2",
        "--seq",
        "16",
        "--steps",
        "1",
        "--compare",
        p(&fixture),
    ];
    let out = run(BENCH, &args);
    let all = String::from_utf8_lossy(&out.stdout);
    let at = all
        .find("per category against PyTorch")
        .unwrap_or_else(|| panic!("{all}"));
    let text = &all[at..];
    assert!(text.contains("torch-cpu-fp32"), "{text}");
    // The tiny model is not the fixture's DistilBERT 2 x 128: said, not hidden.
    assert!(text.contains("note: not the same workload"), "{text}");
    for cat in Category::ALL.iter().map(|c| c.name()).chain(["total"]) {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(cat) && l.contains('.'))
            .unwrap_or_else(|| panic!("no {cat} row in\n{text}"));
        assert_eq!(line.split_whitespace().count(), 4, "{line}");
    }
    // --json carries the same comparison, with the fixture's torch times.
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let rec = common::cli::last_json_line(&run(BENCH, &json_args));
    let torch = common::json_fixture("torch_profile_distilbert_qa_cpu.json");
    let cmp = &rec["compare"]["categories"]["gemm"];
    assert_eq!(
        cmp["torch_ms_per_step"],
        torch["categories"]["gemm"]["ms_per_step"]
    );
    let ratio =
        cmp["fusebox_ms_per_step"].as_f64().unwrap() / cmp["torch_ms_per_step"].as_f64().unwrap();
    assert!((cmp["ratio"].as_f64().unwrap() - ratio).abs() < 1e-12);
    assert!(rec["categories"]["gemm"]["bound"].is_string());
}

/// Both committed torch.profiler fixtures pass the checks `--compare` makes.
#[test]
fn the_torch_profile_fixtures_load() {
    for name in [
        "torch_profile_distilbert_qa_cpu.json",
        "torch_profile_t5_small_cpu.json",
    ] {
        let t = bench::compare::load(&common::fixture(name)).expect(name);
        assert_eq!(t.ms_per_step.len(), 7, "{name}: {:?}", t.ms_per_step);
        assert!(t.ms_per_step["gemm"] > 0.0, "{name}");
        assert_eq!(t.rec["impl"], "torch-cpu-fp32", "{name}");
    }
}

#[test]
fn a_bad_compare_file_is_refused_naming_it() {
    let dir = scratch("roofline", "compare");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let model = common::fixture("models/distilbert_qa");
    let expected = "categories.<name>.ms_per_step";
    let bench = |file: &Path, needles: &[&str]| {
        let args = [
            "--model",
            p(&model),
            "--device",
            "cpu",
            "--steps",
            "1",
            "--compare",
            p(file),
        ];
        let mut all = vec![p(file), expected];
        all.extend(needles);
        refused(BENCH, &args, &all);
    };
    bench(&dir.join("absent.json"), &["cannot read it"]);
    let cases = [
        ("not-json.json", "{ gemm: 1", "not JSON"),
        (
            "no-categories.json",
            r#"{"impl": "torch-cpu-fp32"}"#,
            "no `categories` object",
        ),
        (
            "no-gemm.json",
            r#"{"categories": {"attention": {"ms_per_step": 1.0}}}"#,
            "`categories.gemm` is absent",
        ),
        (
            "negative.json",
            r#"{"categories": {"gemm": {"ms_per_step": -1}}}"#,
            "`categories.gemm.ms_per_step` is -1, not a number >= 0",
        ),
        (
            "failed.json",
            r#"{"error": "OutOfMemoryError: boom"}"#,
            "OutOfMemoryError: boom",
        ),
    ];
    for (name, body, says) in cases {
        let f = dir.join(name);
        std::fs::write(&f, body).expect("write");
        bench(&f, &[says]);
    }
    refused(
        BENCH,
        &[
            "--model",
            p(&model),
            "--device",
            "cpu",
            "--profile-steps",
            "0",
            "--compare",
            p(&dir.join("x")),
        ],
        &["--compare needs the per-op profile", "--profile-steps"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}
