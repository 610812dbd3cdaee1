//! generate() parity with transformers on the tiny T5 fixture models: every case of
//! tests/fixtures/generate_t5.json (tools/fixtures/make_generate_refs.py, transformers
//! 5.25) replayed token for token, beam `sequences_scores` to 1e-4: greedy and beam
//! search alone, forced bos / eos, single- and multi-token bad words, min_new_tokens,
//! renormalized logits, num_return_sequences, all of them at once, and settings read
//! from a generation_config.json, from config.json alone, and from the model's own
//! configuration with no arguments. Each case loads its model through
//! `load_seq2seq_lm` and starts from `generation_config()`, as `generate()` with the
//! case's keyword arguments does; a case with files gets a directory of its own.

use std::path::{Path, PathBuf};

use fusebox::models::auto::load_seq2seq_lm;
use fusebox::models::seq2seq::Seq2SeqLm;
use fusebox::tasks::generate::{generate, GenerateConfig, Generated};
use fusebox::{DType, Device, Tensor};
use serde_json::Value;

mod common;

fn fixture_model(name: &str) -> PathBuf {
    common::fixture("models").join(name)
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fusebox-genparity-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// The case's model directory: the fixture's, or a copy whose generation settings come
/// from the case's generation_config.json or config.json fields.
fn model_dir(case: &Value) -> PathBuf {
    let name = case["model"].as_str().expect("model");
    let src = fixture_model(name);
    let (gen, extra) = (&case["generation_config"], &case["config_json_extra"]);
    if gen.is_null() && extra.is_null() {
        return src;
    }
    let dir = scratch(case["name"].as_str().expect("name"));
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).expect("copy");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).expect("config"))
            .expect("config.json");
    if let Some(m) = extra.as_object() {
        config.as_object_mut().expect("object").extend(m.clone());
    }
    std::fs::write(dir.join("config.json"), config.to_string()).expect("write");
    if !gen.is_null() {
        std::fs::write(dir.join("generation_config.json"), gen.to_string()).expect("write");
    }
    dir
}

fn inputs(doc: &Value, model: &str) -> (Tensor, Tensor) {
    let t = |k: &str| {
        let rows: Vec<Vec<i32>> =
            serde_json::from_value(doc["inputs"][model][k].clone()).expect("inputs");
        let (b, l) = (rows.len(), rows[0].len());
        Tensor::from_i32(rows.concat(), [b, l], Device::Cpu).expect("tensor")
    };
    (t("input_ids"), t("attention_mask"))
}

fn run(model: &dyn Seq2SeqLm, doc: &Value, case: &Value, cfg: &GenerateConfig) -> Generated {
    let (ids, mask) = inputs(doc, case["model"].as_str().expect("model"));
    generate(model, &ids, Some(&mask), cfg).unwrap_or_else(|e| panic!("{}: {e}", case["name"]))
}

fn check(name: &str, got: &Generated, case: &Value) {
    let want: Vec<Vec<i32>> = serde_json::from_value(case["sequences"].clone()).expect("seqs");
    assert_eq!(got.sequences, want, "{name}: sequences");
    match case["sequences_scores"].as_array() {
        None => assert!(got.scores.is_none(), "{name}: greedy has no scores"),
        Some(s) => {
            let got = got.scores.as_ref().expect("beam scores");
            assert_eq!(got.len(), s.len(), "{name}: one score per sequence");
            for (g, w) in got.iter().zip(s) {
                let w = w.as_f64().expect("score") as f32;
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs().max(1e-3),
                    "{name}: score {g} vs transformers {w}"
                );
            }
        }
    }
}

#[test]
fn every_generate_case_matches_transformers() {
    let doc = common::json_fixture("generate_t5.json");
    let cases = doc["cases"].as_array().expect("cases");
    assert!(
        cases.len() >= 30,
        "{} cases: a truncated fixture?",
        cases.len()
    );
    let mut scratch_dirs = Vec::new();
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let dir = model_dir(case);
        let model = load_seq2seq_lm(&dir, Device::Cpu, DType::F32)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let cfg = model
            .generation_config()
            .clone()
            .overlay_json(&case["kwargs"], &format!("case {name}"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        check(name, &run(model.as_ref(), &doc, case, &cfg), case);
        if dir != fixture_model(case["model"].as_str().expect("model")) {
            scratch_dirs.push(dir);
        }
    }
    for d in scratch_dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// What a loaded model saves as generation_config.json is what it loaded: transformers'
/// settings survive a save and a reload, and generate the same tokens.
#[test]
fn generation_config_survives_save_and_reload() {
    let doc = common::json_fixture("generate_t5.json");
    let case = doc["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"] == "gated_generation_config_file")
        .expect("case");
    let dir = model_dir(case);
    let model = load_seq2seq_lm(&dir, Device::Cpu, DType::F32).expect("load");
    let out = scratch("saved");
    model.save(&out).expect("save");
    let back = load_seq2seq_lm(&out, Device::Cpu, DType::F32).expect("reload");
    let strip = |c: &GenerateConfig| GenerateConfig {
        origin: String::new(),
        ..c.clone()
    };
    assert_eq!(
        strip(back.generation_config()),
        strip(model.generation_config())
    );
    assert!(back.generation_config().renormalize_logits);
    check(
        "reloaded",
        &run(back.as_ref(), &doc, case, back.generation_config()),
        case,
    );
    for d in [dir, out] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// transformers refuses these before generating; so does fusebox, naming the field.
#[test]
fn settings_generate_refuses_are_named() {
    let model =
        load_seq2seq_lm(&fixture_model("t5_gated_untied"), Device::Cpu, DType::F32).expect("load");
    let doc = common::json_fixture("generate_t5.json");
    let (ids, mask) = inputs(&doc, "t5_gated_untied");
    for (kwargs, want) in [
        (
            r#"{"num_return_sequences": 2}"#,
            "num_return_sequences 2 needs beam search",
        ),
        (
            r#"{"num_beams": 3, "num_return_sequences": 4}"#,
            "num_return_sequences (4) has to be smaller or equal to num_beams (3)",
        ),
        (r#"{"bad_words_ids": [[5, 99]]}"#, "bad_words_ids holds 99"),
        (r#"{"forced_eos_token_id": 200}"#, "forced_eos_token_id 200"),
        (r#"{"max_length": 1}"#, "max_length 1 leaves no room"),
        (r#"{"suppress_tokens": [4]}"#, "`suppress_tokens`"),
    ] {
        let v: Value = serde_json::from_str(kwargs).expect("json");
        let cfg = model
            .generation_config()
            .clone()
            .overlay_json(&v, "the test's kwargs")
            .expect("overlay");
        let e = generate(model.as_ref(), &ids, Some(&mask), &cfg)
            .expect_err(kwargs)
            .to_string();
        assert!(
            e.contains(want) && e.contains("the test's kwargs"),
            "{kwargs}: {e}"
        );
    }
}

/// The loader picks the family by model_type; families not built in yet are named.
#[test]
fn loader_names_the_family_it_cannot_load() {
    for (model_type, want) in [
        (
            "\"bart\"",
            "the bart family is not supported by this build yet",
        ),
        (
            "\"marian\"",
            "the marian family is not supported by this build yet",
        ),
        (
            "\"distilbert\"",
            "this is a distilbert model, not an encoder-decoder LM",
        ),
        ("7", "expected a string"),
    ] {
        let dir = scratch(&format!("type-{}", model_type.replace('"', "")));
        std::fs::write(
            dir.join("config.json"),
            format!("{{\"model_type\": {model_type}}}"),
        )
        .expect("write");
        let e = match load_seq2seq_lm(&dir, Device::Cpu, DType::F32) {
            Ok(_) => panic!("{model_type} loaded"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(want) && e.contains("config.json"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
    let t5: &Path = &fixture_model("t5_relu_tied");
    let m = load_seq2seq_lm(t5, Device::Cpu, DType::F32).expect("t5");
    assert_eq!((m.model_type(), m.vocab_size()), ("t5", 99));
}
