//! Runs the `train` and `infer` binaries end to end on tiny settings (seconds on a CPU):
//! `train qa` built-in (a few steps of a tiny model) must print a final JSON line with
//! the official metric keys and leave an HF checkpoint with its tokenizer, which
//! `infer qa` then answers from (an answer whose offsets point at itself in the
//! context), and `infer qa --file` turns into an {id: answer} file; `train translate`
//! for a few steps leaves a T5 checkpoint that `infer generate --json` decodes from.
//! Accuracy is not asserted here (tests/qa_train.rs checks that QA training learns);
//! these check the command-line contract.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

mod common;

use common::cli::{infer, json_lines, last_json_line, p, refused, run, scratch, tiny_t5};

fn tmp(name: &str) -> PathBuf {
    scratch("ti", name)
}

#[test]
fn train_qa_builtin_then_infer_qa() {
    let out = tmp("qa");
    let train = env!("CARGO_BIN_EXE_train");
    let o = run(
        train,
        &[
            "qa",
            "--contexts",
            "40",
            "--dim",
            "32",
            "--layers",
            "1",
            "--epochs",
            "1",
            "--max-steps",
            "3",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            p(&out),
        ],
    );
    let fin = last_json_line(&o);
    for k in ["exact_match", "f1"] {
        let v = fin[k].as_f64().unwrap_or_else(|| panic!("{k} in {fin}"));
        assert!((0.0..=100.0).contains(&v), "{k} = {v}");
    }
    assert_eq!(fin["train_steps"].as_u64(), Some(3), "{fin}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("untrained model: {"), "{stderr}");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "metrics.jsonl",
        "curves.svg",
        "data/train.json",
        "data/eval.json",
    ] {
        assert!(out.join(f).is_file(), "{f} written");
    }
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).expect("config"))
            .expect("config json");
    assert_eq!(cfg["model_type"], "distilbert");
    assert_eq!(cfg["dim"].as_u64(), Some(32));

    // One question, pipeline-style: the answer must be the context's own characters.
    let infer = env!("CARGO_BIN_EXE_infer");
    let context = "Alice Novak was born in Lisbon in 1950. Alice works as a pilot.";
    // `infer qa --json` on that question and context, with `extra` flags.
    let ask = |extra: &[&str]| {
        let mut args = vec![
            "qa",
            "--model",
            p(&out),
            "--question",
            "Where was Alice Novak born?",
        ];
        args.extend(["--context", context]);
        args.extend(extra);
        args.extend(["--json", "--device", "cpu"]);
        last_json_line(&run(infer, &args))
    };
    let ans = ask(&[]);
    let (s, e) = (
        ans["start"].as_u64().expect("start") as usize,
        ans["end"].as_u64().expect("end") as usize,
    );
    let text = ans["answer"].as_str().expect("answer");
    assert!(s < e && e <= context.chars().count(), "{ans}");
    let span: String = context.chars().skip(s).take(e - s).collect();
    assert_eq!(span, text, "offsets point at the answer: {ans}");
    let score = ans["score"].as_f64().expect("score");
    assert!(score > 0.0 && score <= 1.0, "{ans}");

    // --top-k 3 gives three distinct answers, best first.
    let list = ask(&["--top-k", "3"]);
    let list = list.as_array().expect("a list for top_k > 1");
    assert_eq!(list.len(), 3);
    let scores: Vec<f64> = list
        .iter()
        .map(|a| a["score"].as_f64().expect("s"))
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");

    // A SQuAD file: one answer per question id.
    let preds = out.join("preds.json");
    run(
        infer,
        &[
            "qa",
            "--model",
            p(&out),
            "--file",
            p(&out.join("data/eval.json")),
            "--out",
            p(&preds),
            "--device",
            "cpu",
        ],
    );
    let preds: Value =
        serde_json::from_str(&std::fs::read_to_string(&preds).expect("preds")).expect("json");
    let eval: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("data/eval.json")).expect("eval"))
            .expect("json");
    let ids: Vec<&str> = eval["data"][0]["paragraphs"]
        .as_array()
        .expect("paragraphs")
        .iter()
        .flat_map(|pa| pa["qas"].as_array().expect("qas").iter())
        .map(|q| q["id"].as_str().expect("id"))
        .collect();
    let preds = preds.as_object().expect("object");
    assert_eq!(preds.len(), ids.len());
    assert!(ids.iter().all(|id| preds.contains_key(*id)));

    // User errors are reported, not panicked on.
    let o = Command::new(infer)
        .args(["qa", "--model", p(&out.join("missing")), "--question", "q"])
        .args(["--context", "c", "--device", "cpu"])
        .output()
        .expect("spawn");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("config.json") && !err.contains("panicked"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn train_translate_then_infer_generate() {
    let out = tmp("tr");
    tiny_t5(&out);
    let x = ("--input", "the small dog sees a red bird");
    let o = infer(
        "generate",
        &out,
        &[x, ("--prefix", "translate English to Toy: ")],
        "--num-beams 2 --max-new-tokens 6 --json",
    );
    let v = last_json_line(&o);
    assert!(v["text"].is_string(), "{v}");
    let toks = v["tokens"].as_array().expect("tokens");
    assert!(!toks.is_empty() && toks.len() <= 6, "{v}");
    assert!(
        v["score"].as_f64().is_some(),
        "beam search reports a score: {v}"
    );
    // With no generation flags, the checkpoint's own configuration: a model trained from
    // scratch carries the one its evaluation used (24 new tokens at most, greedy).
    let gen_cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("generation_config.json")).expect("generation_config"),
    )
    .expect("JSON");
    assert_eq!(gen_cfg["max_new_tokens"], 24, "{gen_cfg}");
    let dog = ("--input", "the small dog");
    let v = last_json_line(&infer("generate", &out, &[dog], "--json"));
    let n = v["tokens"].as_array().expect("tokens").len();
    assert!((1..=24).contains(&n) && v.get("score").is_none(), "{v}");
    // --num-return-sequences 2: a list of two {"text", "tokens", "score"}, best first.
    let flags = "--num-beams 3 --num-return-sequences 2 --max-new-tokens 5 --json";
    let v = last_json_line(&infer("generate", &out, &[dog], flags));
    let list = v.as_array().expect("a list per input");
    assert_eq!(list.len(), 2, "{v}");
    assert!(list
        .iter()
        .all(|x| x["text"].is_string() && x["tokens"].is_array()));
    let scores: Vec<f64> = list
        .iter()
        .map(|x| x["score"].as_f64().expect("score"))
        .collect();
    assert!(scores[0] >= scores[1], "best first: {scores:?}");
    // --file: one output line per input line, a blank input line giving a blank output,
    // so the outputs still pair up with a reference file.
    let inputs = out.join("inputs.txt");
    std::fs::write(&inputs, "the small dog\n\na red bird\n").expect("write");
    let file = ("--file", p(&inputs));
    let lines = json_lines(&infer(
        "generate",
        &out,
        &[file],
        "--max-new-tokens 4 --json",
    ));
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[1]["text"], "", "{lines:?}");
    assert!(!lines[0]["tokens"].as_array().expect("tokens").is_empty());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bad_input_is_refused_naming_the_flag_or_file() {
    let train = env!("CARGO_BIN_EXE_train");
    fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let cpu = ["--device", "cpu", "--quiet"];
        extra.iter().copied().chain(cpu).collect()
    }
    refused(
        train,
        &with(&["qa", "--batch", "10", "--grad-accum", "4"]),
        &["--batch 10", "--grad-accum 4"],
    );
    refused(train, &with(&["qa", "--batch", "0"]), &["--batch"]);
    refused(train, &with(&["qa", "--lr=-1"]), &["--lr"]);
    refused(
        train,
        &with(&["qa", "--warmup-ratio", "2"]),
        &["--warmup-ratio"],
    );
    refused(
        train,
        &with(&["qa", "--heads", "3"]),
        &["--heads 3", "--dim 128"],
    );
    refused(
        train,
        &with(&["qa", "--model", "distilbert-base-cased"]),
        &["--model distilbert-base-cased", "--train"],
    );
    refused(
        train,
        &with(&["summarize", "--eval-limit", "0"]),
        &["--eval-limit"],
    );
    let dir = tmp("refusals");
    std::fs::create_dir_all(&dir).expect("mkdir");
    // A JSON Lines file with no rows, and a pretty-printed object that is no dataset.
    for (name, body, says) in [
        ("empty.jsonl", "\n", ["no rows", "--source"]),
        ("obj.json", "{\n  \"rows\": []\n}\n", ["JSON Lines", "rows"]),
    ] {
        let f = dir.join(name);
        std::fs::write(&f, body).expect("write");
        let args = [
            "summarize",
            "--model",
            "scratch",
            "--train",
            p(&f),
            "--eval",
            p(&f),
        ];
        refused(train, &with(&args), &[p(&f), says[0], says[1]]);
    }
    refused(
        env!("CARGO_BIN_EXE_bench"),
        &["--model", "distilbert", "--device", "cpu"],
        &[
            "--model distilbert",
            "distilbert-qa, t5-small, flan-t5-small, t5-base, bart-base, bart-large-cnn, \
             t5-large, flan-t5-large, flan-t5-base, opus-mt-en-id or a model directory",
        ],
    );
    // Extra BLEU references must pair up with the hypotheses, and the error names the file.
    let (hyp, r1, r2) = (dir.join("hyp"), dir.join("r1"), dir.join("r2"));
    std::fs::write(&hyp, "a b c\nd e f\n").expect("write");
    std::fs::write(&r1, "a b c\nd e f\n").expect("write");
    std::fs::write(&r2, "a b c\n").expect("write");
    refused(
        env!("CARGO_BIN_EXE_eval"),
        &["bleu", p(&r1), p(&hyp), "--extra-references", p(&r2)],
        &[p(&r2), "has 1 lines", "has 2"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// SQuAD v2.0 data without --version-2-with-negative fails at once, naming the file and
/// the flag (before, the whole eval set was predicted first and the v1 metric then
/// failed on a question with no answer).
#[test]
fn squad_v2_data_needs_its_flag() {
    let Some(assets) = common::assets() else {
        return;
    };
    let data = assets.join("qa/hf-fixture-dev-v2.0.json");
    let model = assets.join("models/all-minilm-l6-v2");
    refused(
        env!("CARGO_BIN_EXE_train"),
        &[
            "qa",
            "--model",
            p(&model),
            "--train",
            p(&data),
            "--eval",
            p(&data),
            "--device",
            "cpu",
        ],
        &[p(&data), "--version-2-with-negative", "no answer"],
    );
}

/// A refused run writes nothing: the output directory is created only after every
/// input check.
#[test]
fn a_refused_run_leaves_no_output_directory() {
    let dir = tmp("no-out");
    for args in [
        vec!["qa", "--model", "x", "--out", p(&dir)],
        vec!["translate", "--model", "x", "--out", p(&dir)],
        vec!["qa", "--heads", "3", "--out", p(&dir)],
    ] {
        refused(env!("CARGO_BIN_EXE_train"), &args, &["--"]);
        assert!(!dir.exists(), "{args:?} created {}", dir.display());
    }
}
