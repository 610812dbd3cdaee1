//! The `infer qa` and `train qa` rows of the bad-input corpus (a module of
//! tests/bad_input.rs): a QA checkpoint without a head or with a damaged one, an
//! encoder-decoder checkpoint given to `train qa`, duplicate question ids.

use std::path::Path;

use fusebox::{Device, Tensor};
use serde_json::{json, Value};

use super::{
    as_row, ask, ask_fails, cli, copy_model, edit_json, edit_weights, fresh, qa_file, quick, s,
};
use super::{write, Models, Row, FAIL, INFER, OK, TRAIN};

pub(super) fn rows(m: &Models) -> Vec<Row> {
    let qa = s(&m.qa);
    let mut rows = Vec::new();
    let no_head = copy_model(&m.qa, "qa-no-head");
    edit_weights(&no_head, |t| {
        t.remove("qa_outputs.weight");
        t.remove("qa_outputs.bias");
    });
    rows.push(ask_fails(
        &no_head,
        &["no tensor \"qa_outputs.weight\"", "no trained QA head"],
    ));
    // Training may start from such a checkpoint: the head is initialised, and it says so.
    let qa_data = m.qa.join("data");
    let flags = format!("qa --max-length 64 --stride 16 --batch 4 {}", quick(1));
    // `train qa` from `model` into `out`, which must end as `ok` says, saying every `want`.
    let train_qa = |model: &Path, out: &str, ok: bool, want: &[&str]| {
        let paths = [
            ("--model", s(model)),
            ("--train", s(&qa_data.join("train.json"))),
            ("--eval", s(&qa_data.join("eval.json"))),
            ("--out", fresh(out)),
        ];
        as_row(TRAIN, cli(&flags, &paths), ok, want)
    };
    rows.push(train_qa(
        &no_head,
        "qa-from-base",
        OK,
        &["has no QA head: qa_outputs (weight [2, 32], bias [2]) initialised fresh"],
    ));
    // An encoder-decoder checkpoint (BART here) is not a QA model: said before any work.
    let bart = copy_model(&m.t5, "qa-from-bart");
    edit_json(&bart.join("config.json"), |v| {
        v["model_type"] = json!("bart")
    });
    rows.push(train_qa(
        &bart,
        "qa-from-bart-out",
        FAIL,
        &["model_type \"bart\": this is an encoder-decoder LM, not a QA encoder"],
    ));
    let bad_head = copy_model(&m.qa, "qa-bad-head");
    edit_weights(&bad_head, |t| {
        let w = t["qa_outputs.weight"].reshape([4, 16]).expect("reshape");
        t.insert("qa_outputs.weight".into(), w);
    });
    rows.push(ask_fails(
        &bad_head,
        &["tensor \"qa_outputs.weight\" has shape [4, 16], expected [2, 32]"],
    ));
    let nan_head = copy_model(&m.qa, "qa-nan-head");
    edit_weights(&nan_head, |t| {
        let mut v = t["qa_outputs.weight"].to_vec_f32().expect("values");
        v[3] = f32::NAN;
        let w = Tensor::from_f32(v, [2, 32], Device::Cpu).expect("tensor");
        t.insert("qa_outputs.weight".into(), w);
    });
    rows.push(ask_fails(
        &nan_head,
        &["tensor \"qa_outputs.weight\" holds a non-finite value"],
    ));
    rows.push(as_row(
        INFER,
        ask(&qa, &["--max-answer-length", "0"]),
        FAIL,
        &["--max-answer-length must be at least 1"],
    ));
    let mut squad: Value =
        serde_json::from_str(&std::fs::read_to_string(qa_data.join("eval.json")).expect("eval"))
            .expect("json");
    let qas = &mut squad["data"][0]["paragraphs"][0]["qas"];
    let first_id = qas[0]["id"].clone();
    qas[1]["id"] = first_id.clone();
    let dup = write("dup-ids.json", squad.to_string().as_bytes());
    rows.push(as_row(
        INFER,
        qa_file(m, &dup),
        FAIL,
        &[
            &format!("question id {first_id} appears more than once"),
            "dup-ids.json",
        ],
    ));
    rows
}
