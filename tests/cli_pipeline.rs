//! `infer summarize` and `infer translate` end to end on a tiny T5 trained for a few
//! steps, whose config.json is given T5's kind of `task_specific_params`: each must run
//! exactly what `infer generate` runs on the input with the entry's prefix and the
//! pipeline's settings (4 beams and 256 new tokens over the model's own greedy 24, the
//! entry's settings, each flag overriding one), and print the pipeline's records,
//! `[{"summary_text": ...}]` / `[{"translation_text": ...}]`, one line per input.
//! tasks::pipeline's unit tests hold the settings to transformers' pipelines; these
//! check that the commands apply them.

use std::path::Path;

use serde_json::{json, Value};

mod common;

use common::cli::{infer, json_lines, p, scratch, stdout_lines, tiny_t5};

const X: &str = "the small dog sees a red bird";

/// The tiny T5 with summarization and two translation entries, as t5-small has them.
fn model(dir: &Path) {
    tiny_t5(dir);
    let path = dir.join("config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("config")).expect("json");
    config["task_specific_params"] = json!({
        "summarization": {"prefix": "summarize: ", "no_repeat_ngram_size": 2},
        "translation_en_to_de": {"prefix": "translate English to German: ",
            "no_repeat_ngram_size": 1},
        "translation_en_to_fr": {"prefix": "translate English to Toy: ",
            "no_repeat_ngram_size": 1}
    });
    std::fs::write(&path, config.to_string()).expect("write config");
}

/// `infer generate` on `input` with `flags`: its output texts.
fn generated(dir: &Path, input: &str, flags: &str) -> Vec<String> {
    stdout_lines(&infer("generate", dir, &[("--input", input)], flags))
}

/// `infer generate` on `prefix` + X with `flags`, checked to differ from X alone: this
/// tiny model tells the two apart under `flags`, so a test comparing with it sees the
/// prefix.
fn generated_with(dir: &Path, prefix: &str, flags: &str) -> Vec<String> {
    let want = generated(dir, &format!("{prefix}{X}"), flags);
    assert_ne!(generated(dir, X, flags), want, "{prefix:?} changes nothing");
    want
}

/// The texts of one pipeline output line, checking it is a list of `{key: text}`.
fn texts(line: &Value, key: &str) -> Vec<String> {
    let list = line.as_array().unwrap_or_else(|| panic!("a list: {line}"));
    list.iter()
        .map(|r| {
            let o = r.as_object().expect("a record");
            assert_eq!(o.len(), 1, "one key per record: {r}");
            o[key]
                .as_str()
                .unwrap_or_else(|| panic!("{key}: {r}"))
                .to_string()
        })
        .collect()
}

#[test]
fn summarize_applies_the_prefix_and_the_pipeline_settings() {
    let dir = scratch("pipe", "sum");
    model(&dir);
    // Four returned beams make the prefix visible in the output of this tiny model.
    let short = "--num-return-sequences 4 --max-new-tokens 4";
    let flags = format!("{short} --json");
    let line = &json_lines(&infer("summarize", &dir, &[("--input", X)], &flags))[0];
    let same = format!("{short} --num-beams 4 --no-repeat-ngram-size 2");
    let want = generated_with(&dir, "summarize: ", &same);
    assert_eq!(texts(line, "summary_text"), want);
    // No flags: the pipeline's 4 beams and 256 new tokens (not the model's greedy 24),
    // one record per input.
    let line = &json_lines(&infer("summarize", &dir, &[("--input", X)], "--json"))[0];
    let full = "--num-beams 4 --max-new-tokens 256 --no-repeat-ngram-size 2";
    assert_eq!(
        texts(line, "summary_text"),
        generated(&dir, &format!("summarize: {X}"), full)
    );
    // Text output, and --file: one line per input line, a blank one kept blank.
    let text = stdout_lines(&infer("summarize", &dir, &[("--input", X)], ""));
    assert_eq!(text, texts(line, "summary_text"));
    let file = dir.join("inputs.txt");
    std::fs::write(&file, format!("{X}\n\n{X}\n")).expect("write");
    let lines = json_lines(&infer("summarize", &dir, &[("--file", p(&file))], "--json"));
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[1], json!([{"summary_text": ""}]));
    assert_eq!(lines[0], lines[2]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn translate_takes_the_task_entry_named() {
    let dir = scratch("pipe", "tr");
    model(&dir);
    let short = "--num-return-sequences 4 --max-new-tokens 4";
    let run = |task: &str| {
        let flags = format!("{task} {short} --json");
        let o = infer("translate", &dir, &[("--input", X)], &flags);
        texts(&json_lines(&o)[0], "translation_text")
    };
    // The pipeline's 4 beams and the entry's no_repeat_ngram_size.
    let same = format!("{short} --num-beams 4 --no-repeat-ngram-size 1");
    // --task translation_en_to_fr: that entry's prefix and settings.
    let fr = generated_with(&dir, "translate English to Toy: ", &same);
    assert_eq!(run("--task translation_en_to_fr"), fr);
    // No --task: "translation", the first translation entry (en_to_de).
    let de = generated_with(&dir, "translate English to German: ", &same);
    assert_ne!(de, fr, "the two prefixes give different outputs");
    assert_eq!(run(""), de);
    assert_eq!(run("--task translation_en_to_de"), de);
    // A flag overrides the entry's setting.
    let o = infer(
        "translate",
        &dir,
        &[("--input", X)],
        "--task translation_en_to_fr --num-beams 1 --max-new-tokens 4",
    );
    let fr_x = format!("translate English to Toy: {X}");
    let greedy = "--num-beams 1 --max-new-tokens 4 --no-repeat-ngram-size 1";
    let want = generated(&dir, &fr_x, greedy);
    assert_eq!(stdout_lines(&o), want);
    let _ = std::fs::remove_dir_all(&dir);
}
