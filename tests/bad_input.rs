//! The bad-input corpus (issue 17): each row runs one binary on one malformed input (a
//! flag out of range, a damaged model directory, a data file of the wrong shape, a run
//! that does not fit in memory) and says how it must end: failure with a message naming
//! the file, field or flag and what was expected, or success doing the right thing (a
//! generation capped and said so, a byte-order mark skipped). Never a panic, an abort or
//! a hang: every run has a deadline.
//!
//! The damaged models are copies of two tiny ones trained here once per test process
//! (`train qa` and `train translate` for two steps, seconds on a CPU), edited in place:
//! tensors dropped, reshaped or set to NaN, config.json fields removed, a safetensors
//! header's offsets broken, a tokenizer.json replaced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fusebox::nn::safetensors_io;
use fusebox::{DType, Device, Tensor};
use serde_json::{json, Value};

#[path = "bad_input/qa.rs"]
mod qa;
#[path = "bad_input/seq2seq.rs"]
mod seq2seq;

const TRAIN: &str = env!("CARGO_BIN_EXE_train");
const INFER: &str = env!("CARGO_BIN_EXE_infer");
const BENCH: &str = env!("CARGO_BIN_EXE_bench");
const EVAL: &str = env!("CARGO_BIN_EXE_eval");

/// A run that takes longer than this hangs, as far as this test is concerned.
const DEADLINE: Duration = Duration::from_secs(120);

fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("fusebox-bad-input-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    })
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf8 path").to_string()
}

/// How one run ended.
struct Ran {
    success: bool,
    code: Option<i32>,
    output: String,
}

/// `bin args` with stdout and stderr in files (no pipe to fill), killed at the deadline.
fn run(bin: &str, args: &[String], tag: usize) -> Ran {
    let out_path = root().join(format!("run-{tag}.out"));
    let err_path = root().join(format!("run-{tag}.err"));
    let mut child = Command::new(bin)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let output = format!("{}{}", read(&out_path), read(&err_path));
    match status {
        Some(st) => Ran {
            success: st.success(),
            code: st.code(),
            output,
        },
        None => Ran {
            success: false,
            code: None,
            output: format!("HUNG: killed after {DEADLINE:?}\n{output}"),
        },
    }
}

/// `bin args`, which must succeed (building the fixtures).
fn must_run(bin: &str, args: &[String]) {
    let r = run(bin, args, 9999);
    assert!(r.success, "{bin} {args:?} failed:\n{}", r.output);
}

/// A command line: the words of `flags` (no paths there: a path may hold a space), then
/// each of `paths` as a flag and its path.
fn cli<P: AsRef<str>>(flags: &str, paths: &[(&str, P)]) -> Vec<String> {
    let pairs = paths
        .iter()
        .flat_map(|(f, p)| [f.to_string(), p.as_ref().to_string()]);
    flags
        .split_whitespace()
        .map(str::to_string)
        .chain(pairs)
        .collect()
}

/// The flags of a short quiet CPU training run: one epoch of at most `steps` steps.
fn quick(steps: u32) -> String {
    format!("--epochs 1 --max-steps {steps} --device cpu --quiet")
}

/// The two tiny trained models every damaged copy starts from.
struct Models {
    qa: PathBuf,
    t5: PathBuf,
}

fn models() -> &'static Models {
    static MODELS: OnceLock<Models> = OnceLock::new();
    MODELS.get_or_init(|| {
        let qa = root().join("qa");
        let flags = format!("qa --contexts 20 --dim 32 --layers 1 {}", quick(2));
        must_run(TRAIN, &cli(&flags, &[("--out", &s(&qa))]));
        let t5 = root().join("t5");
        let flags = format!("translate --eval-limit 2 {}", quick(2));
        must_run(TRAIN, &cli(&flags, &[("--out", &s(&t5))]));
        Models { qa, t5 }
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).expect("copy");
        }
    }
}

/// A copy of the model `from` named `name`, to damage.
fn copy_model(from: &Path, name: &str) -> PathBuf {
    let to = root().join(name);
    let _ = std::fs::remove_dir_all(&to);
    copy_dir(from, &to);
    to
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read json")).expect("json");
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).expect("json")).expect("write json");
}

/// Rewrite `dir/model.safetensors` through the library (valid files with other tensors).
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut BTreeMap<String, Tensor>)) {
    let file = dir.join("model.safetensors");
    let mut t = safetensors_io::load(&file, DType::F32, Device::Cpu).expect("load weights");
    edit(&mut t);
    safetensors_io::save(&file, &t, None).expect("save weights");
}

/// Edit the JSON header of `dir/model.safetensors` byte for byte (files the library
/// would never write), keeping the data as it is.
fn edit_header(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).expect("read weights");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header json");
    edit(&mut header);
    let mut h = serde_json::to_vec(&header).expect("json");
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&file, out).expect("write weights");
}

fn write(name: &str, body: &[u8]) -> PathBuf {
    let p = root().join(name);
    std::fs::write(&p, body).expect("write");
    p
}

/// A directory name for a training run's --out that no other run uses.
fn fresh(name: &str) -> String {
    s(&root().join(format!("out-{name}")))
}

/// One row: `bin args` must end as `ok` says, with every fragment in its output.
struct Row {
    bin: &'static str,
    args: Vec<String>,
    ok: bool,
    want: Vec<String>,
}

/// `infer generate --model MODEL` on a short input, on the CPU, with `extra`.
fn gen(model: &str, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "generate", "--model", model, "--input", "one two", "--device", "cpu",
    ];
    a.extend(extra);
    a.into_iter().map(str::to_string).collect()
}

fn as_row(bin: &'static str, args: Vec<String>, ok: bool, want: &[&str]) -> Row {
    Row {
        bin,
        args,
        ok,
        want: want.iter().map(|w| w.to_string()).collect(),
    }
}

fn row(bin: &'static str, args: &[&str], ok: bool, want: &[&str]) -> Row {
    Row {
        bin,
        args: args.iter().map(|a| a.to_string()).collect(),
        ok,
        want: want.iter().map(|w| w.to_string()).collect(),
    }
}

const FAIL: bool = false;
const OK: bool = true;

/// `infer qa` on the model in `dir` (no extra flags): it must fail, saying every `want`.
fn ask_fails(dir: &Path, want: &[&str]) -> Row {
    as_row(INFER, ask(&s(dir), &[]), FAIL, want)
}

/// `infer generate` on the model in `dir` (no extra flags): it must fail, saying every
/// `want`.
fn gen_fails(dir: &Path, want: &[&str]) -> Row {
    as_row(INFER, gen(&s(dir), &[]), FAIL, want)
}

/// `infer qa --model MODEL` on a short question and context, on the CPU, with `extra`.
fn ask(model: &str, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "qa",
        "--model",
        model,
        "--question",
        "Where was Alice born?",
    ];
    a.extend(["--context", "Alice was born in Lisbon.", "--device", "cpu"]);
    a.extend(extra);
    a.into_iter().map(str::to_string).collect()
}

/// `infer qa --file FILE` with the trained QA model, the predictions to a scratch file.
fn qa_file(m: &Models, file: &Path) -> Vec<String> {
    let paths = [
        ("--model", s(&m.qa)),
        ("--file", s(file)),
        ("--out", s(&root().join("preds.json"))),
    ];
    cli("qa --device cpu", &paths)
}

/// Can this machine's available memory be read (the CPU memory check's input)?
fn mem_available_known() -> bool {
    std::fs::read_to_string("/proc/meminfo").is_ok_and(|t| t.contains("MemAvailable:"))
}

fn rows() -> Vec<Row> {
    let m = models();
    let (qa, t5) = (s(&m.qa), s(&m.t5));
    let mut rows = seq2seq::rows(m);

    rows.extend(qa::rows(m));

    // --- train summarize ----------------------------------------------------------------
    let empty_targets = write(
        "empty-targets.jsonl",
        b"{\"source\": \"a b c\", \"target\": \"\"}\n{\"source\": \"d e\", \"target\": \" \"}\n",
    );
    let pairs = write(
        "pairs.jsonl",
        b"{\"source\": \"a b c\", \"target\": \"x y\"}\n{\"source\": \"d e\", \"target\": \"z\"}\n",
    );
    let summarize = |model: &str, train: &Path, out: &str| {
        let paths = [
            ("--model", model.to_string()),
            ("--train", s(train)),
            ("--eval", s(&pairs)),
            ("--out", fresh(out)),
        ];
        cli(&format!("summarize {}", quick(1)), &paths)
    };
    rows.push(as_row(
        TRAIN,
        summarize("scratch", &empty_targets, "empty-targets"),
        FAIL,
        &[
            "empty-targets.jsonl",
            "the target field \"target\" (--target) is empty in all 2 rows",
        ],
    ));
    rows.push(as_row(
        TRAIN,
        summarize(&qa, &pairs, "distilbert-summarize"),
        FAIL,
        &[
            "model_type \"distilbert\": this is a distilbert model",
            "needs a T5, BART or Marian checkpoint",
        ],
    ));

    // --- bench --------------------------------------------------------------------------
    let bench = |extra: &[&str]| {
        let mut a = vec!["--model", t5.as_str(), "--device", "cpu", "--json"];
        a.extend(extra);
        a.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    for (flag, want) in [
        ("--batch", "--batch must be at least 1"),
        ("--steps", "--steps must be at least 1"),
        ("--tgt-seq", "--tgt-seq must be at least 1"),
        ("--seq", "--seq must be at least 1"),
    ] {
        rows.push(as_row(BENCH, bench(&[flag, "0"]), FAIL, &[want]));
    }
    rows.push(as_row(
        BENCH,
        cli::<&str>(
            "--model distilbert-qa --seq 1000000 --plan --device cpu",
            &[],
        ),
        FAIL,
        &["--seq 1000000 exceeds the model's max_position_embeddings 512"],
    ));
    rows.push(as_row(
        BENCH,
        bench(&["--seq", "1000000", "--plan"]),
        OK,
        &["length 1000000 -> 16", "predicted peak"],
    ));
    rows.push(as_row(
        BENCH,
        bench(&["--max-time", "0"]),
        FAIL,
        &["--max-time must be a positive number of seconds"],
    ));

    // --- errors that must say what is wrong ---------------------------------------------
    for (name, field, edit) in [
        ("no-dim", "`dim` is absent", "dim"),
        ("no-vocab", "`vocab_size` is absent", "vocab_size"),
    ] {
        let d = copy_model(&m.qa, &format!("qa-{name}"));
        edit_json(&d.join("config.json"), |v| {
            v.as_object_mut().expect("object").remove(edit);
        });
        rows.push(ask_fails(&d, &["config.json", field]));
    }
    let dim0 = copy_model(&m.qa, "qa-dim-0");
    edit_json(&dim0.join("config.json"), |v| v["dim"] = json!(0));
    rows.push(ask_fails(
        &dim0,
        &["config.json: field `dim` is 0; expected a positive integer"],
    ));
    let no_dmodel = copy_model(&m.t5, "t5-no-d-model");
    edit_json(&no_dmodel.join("config.json"), |v| {
        v.as_object_mut().expect("object").remove("d_model");
    });
    rows.push(gen_fails(
        &no_dmodel,
        &[
            "config.json: `d_model` is absent",
            "which needs `d_model` 128",
        ],
    ));
    let bad_offsets = copy_model(&m.qa, "qa-bad-offsets");
    edit_header(&bad_offsets, |h| {
        h["qa_outputs.weight"]["shape"] = json!([2, 33])
    });
    rows.push(ask_fails(
        &bad_offsets,
        &["tensor \"qa_outputs.weight\" (F32 [2, 33]) needs 264 bytes"],
    ));
    let truncated = copy_model(&m.qa, "qa-truncated");
    let w = truncated.join("model.safetensors");
    let len = std::fs::metadata(&w).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&w)
        .and_then(|f| f.set_len(len - 100))
        .expect("truncate");
    rows.push(ask_fails(
        &truncated,
        &["data runs to byte", "(a truncated file?)"],
    ));
    let bad_tok = copy_model(&m.t5, "t5-bad-tokenizer");
    std::fs::write(bad_tok.join("tokenizer.json"), r#"{"model": {}}"#).expect("write");
    rows.push(gen_fails(
        &bad_tok,
        &["tokenizer.json: not a tokenizers JSON file"],
    ));
    // A byte-order mark before JSON is not an error.
    let mut bom = b"\xef\xbb\xbf".to_vec();
    bom.extend(std::fs::read(m.qa.join("data/eval.json")).expect("eval"));
    let bom_squad = write("bom-squad.json", &bom);
    rows.push(as_row(
        INFER,
        qa_file(m, &bom_squad),
        OK,
        &["400 predictions"],
    ));
    let bom_cfg = copy_model(&m.qa, "qa-bom-config");
    let mut cfg = b"\xef\xbb\xbf".to_vec();
    cfg.extend(std::fs::read(bom_cfg.join("config.json")).expect("config"));
    std::fs::write(bom_cfg.join("config.json"), cfg).expect("write");
    rows.push(as_row(INFER, ask(&s(&bom_cfg), &[]), OK, &["answer: "]));
    let mml0 = copy_model(&m.qa, "qa-model-max-length-0");
    edit_json(&mml0.join("tokenizer_config.json"), |v| {
        v["model_max_length"] = json!(0)
    });
    rows.push(ask_fails(
        &mml0,
        &["tokenizer_config.json: model_max_length is 0"],
    ));
    let top_array = write("top-array.json", b"[]");
    rows.push(as_row(
        INFER,
        qa_file(m, &top_array),
        FAIL,
        &[
            "top-array.json",
            "{\"data\": [...]}",
            "found a top-level array",
        ],
    ));
    // `eval squad` reads the same files: a top-level array named as such, a
    // byte-order mark before the gold file or the predictions accepted.
    let bom_preds = write("bom-preds.json", b"\xef\xbb\xbf{}");
    rows.push(row(
        EVAL,
        &["squad", &s(&top_array), &s(&bom_preds)],
        FAIL,
        &["top-array.json", "found a top-level array of 0 items"],
    ));
    rows.push(row(
        EVAL,
        &["squad", &s(&bom_squad), &s(&bom_preds)],
        OK,
        &["exact_match"],
    ));
    let paths = [
        ("--train", s(&top_array)),
        ("--eval", s(&pairs)),
        ("--out", fresh("top-array")),
    ];
    rows.push(as_row(
        TRAIN,
        cli("translate --model scratch --device cpu --quiet", &paths),
        FAIL,
        &["top-array.json: no rows (expected records with the fields --source"],
    ));

    // --- CPU memory: refused with the plan, not aborted ---------------------------------
    if mem_available_known() {
        let flags = format!("qa --contexts 20 --dim 65536 --layers 1 {}", quick(2));
        rows.push(as_row(
            TRAIN,
            cli(&flags, &[("--out", fresh("huge-dim"))]),
            FAIL,
            &[
                "MemAvailable",
                "memory plan: DistilBERT-QA",
                "predicted peak",
            ],
        ));
        let flags = "--model distilbert-qa --batch 4096 --seq 512 --device cpu";
        rows.push(as_row(
            BENCH,
            cli::<&str>(flags, &[]),
            FAIL,
            &["MemAvailable", "micro-batch 4096", "predicted peak"],
        ));
    } else {
        eprintln!("bad_input: /proc/meminfo has no MemAvailable here; CPU memory rows skipped");
    }
    rows
}

#[test]
fn every_bad_input_is_refused_clearly_or_handled() {
    let rows = rows();
    let mut failures = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let ran = run(r.bin, &r.args, i);
        let name = Path::new(r.bin)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut why = Vec::new();
        if ran.success != r.ok {
            why.push(format!(
                "expected {}, got {}",
                if r.ok { "success" } else { "failure" },
                match ran.code {
                    Some(c) => format!("exit status {c}"),
                    None => "no exit status (killed)".into(),
                }
            ));
        }
        // A refusal is an exit with status 1 (anyhow) or 2 (clap), never a signal.
        if !r.ok && !matches!(ran.code, Some(1 | 2)) {
            why.push(format!(
                "a refusal must exit with 1 or 2, got {:?}",
                ran.code
            ));
        }
        if ran.output.contains("panicked") {
            why.push("panicked".into());
        }
        for w in &r.want {
            if !ran.output.contains(w.as_str()) {
                why.push(format!("no {w:?} in the output"));
            }
        }
        if !why.is_empty() {
            failures.push(format!(
                "row {i}: {name} {:?}\n  {}\n  output:\n{}",
                r.args,
                why.join("; "),
                ran.output
            ));
        }
    }
    let _ = std::fs::remove_dir_all(root());
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n\n")
    );
}
