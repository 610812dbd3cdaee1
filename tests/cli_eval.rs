//! Runs the `eval` binary end to end: SQuAD stdout must equal the official scripts' stdout
//! byte for byte (tests/fixtures/squad_official_outputs.json), ROUGE/BLEU must equal the
//! rouge-score / sacrebleu values in tests/fixtures/metrics_reference.json.

mod common;
use common::{assets, json_fixture as fixture};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn tmp(name: &str, body: &str) -> PathBuf {
    common::tmp_file("cli", name, body)
}

fn eval(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eval"))
        .args(args)
        .output()
        .expect("run eval")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "eval failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).expect("utf8")
}

fn p(x: &Path) -> &str {
    x.to_str().expect("utf8 path")
}

#[test]
fn squad_cli_prints_what_the_official_scripts_print() {
    let Some(assets) = assets() else { return };
    let fx = fixture("squad_official_outputs.json");
    let wanted = [
        "allennlp-squad-v1-mixed",
        "tydiqa-goldp-dev-id-missing",
        "hf-fixture-dev-v2.0-mixed",
        "hf-fixture-dev-v2.0-mixed-naprob-t0.5",
        "allennlp-squad-v2-correct-naprob-t0.3",
        "hf-fixture-sample-flat-mixed-naprob",
    ];
    for name in wanted {
        let c = fx["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("fixture case {name}"));
        let data = assets.join(c["data"].as_str().expect("data"));
        let preds = tmp(&format!("{name}-pred.json"), &c["predictions"].to_string());
        let mut args = vec!["squad".to_string(), p(&data).into(), p(&preds).into()];
        if let Some(na) = c["na_probs_json"].as_str() {
            let f = tmp(&format!("{name}-na.json"), na);
            args.extend(["--na-prob-file".into(), p(&f).to_string()]);
        }
        if let Some(t) = c["na_prob_thresh"].as_f64() {
            args.extend(["--na-prob-thresh".into(), t.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = eval(&args);
        assert_eq!(stdout(&o), c["stdout"].as_str().expect("stdout"), "{name}");
        assert_eq!(
            String::from_utf8_lossy(&o.stderr),
            c["stderr"].as_str().expect("stderr"),
            "{name}"
        );
    }
}

#[test]
fn squad_cli_errors_are_clear() {
    let Some(assets) = assets() else { return };
    let data = assets.join("qa/hf-fixture-dev-v2.0.json");
    let preds = tmp("partial.json", r#"{"56ddde6b9a695914005b9628": "France"}"#);
    let o = eval(&["squad", p(&data), p(&preds)]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("missing prediction for 56ddde6b9a695914005b9629"),
        "{err}"
    );

    let bad = tmp("bad.json", "[1, 2]");
    let o = eval(&["squad", p(&data), p(&bad)]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.json"));
}

fn rouge_pair_mean(fx: &Value, stem: bool, kind: &str) -> [f64; 3] {
    let mut acc = [0.0; 3];
    let mut n = 0.0;
    for c in fx["rouge_pairs"].as_array().expect("pairs") {
        let name = c["name"].as_str().expect("name");
        if name.starts_with("asset_pair_") && c["stemmer"].as_bool() == Some(stem) {
            for (a, v) in acc
                .iter_mut()
                .zip(c["scores"][kind].as_array().expect("prf"))
            {
                *a += v.as_f64().expect("f");
            }
            n += 1.0;
        }
    }
    assert_eq!(n, 2.0);
    acc.map(|a| a / n)
}

#[test]
fn rouge_cli_means_match_rouge_score() {
    let Some(assets) = assets() else { return };
    let fx = fixture("metrics_reference.json");
    let t = assets.join("metrics/rouge/target.txt");
    let pr = assets.join("metrics/rouge/prediction.txt");
    for stem in [false, true] {
        let mut args = vec!["rouge", p(&t), p(&pr)];
        if stem {
            args.push("--stemmer");
        }
        let out: Value = serde_json::from_str(&stdout(&eval(&args))).expect("json out");
        for kind in ["rouge1", "rouge2", "rougeL", "rougeLsum"] {
            let want = rouge_pair_mean(&fx, stem, kind);
            for (i, field) in ["precision", "recall", "fmeasure"].iter().enumerate() {
                let got = out[kind][field].as_f64().expect("number");
                assert!(
                    (got - want[i]).abs() <= 1e-6,
                    "{kind} {field}: {got} vs {}",
                    want[i]
                );
            }
        }
    }
    let one = tmp("one.txt", "just one line\n");
    let o = eval(&["rouge", p(&t), p(&one)]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("has 2 lines but"));
}

#[test]
fn bleu_cli_matches_sacrebleu() {
    let fx = fixture("metrics_reference.json");
    for c in fx["bleu_corpus"].as_array().expect("cases") {
        let name = c["name"].as_str().expect("name");
        let lines = |v: &Value| {
            let s: Vec<&str> = v
                .as_array()
                .expect("a")
                .iter()
                .map(|x| x.as_str().expect("s"))
                .collect();
            s.join("\n") + "\n"
        };
        let hyp = tmp(&format!("{name}.hyp"), &lines(&c["hyps"]));
        let streams = c["refs"].as_array().expect("refs");
        let refs: Vec<PathBuf> = streams
            .iter()
            .enumerate()
            .map(|(i, s)| tmp(&format!("{name}.ref{i}"), &lines(s)))
            .collect();
        let mut args = vec!["bleu", p(&refs[0]), p(&hyp)];
        for r in &refs[1..] {
            args.extend(["--extra-references", p(r)]);
        }
        let out: Value = serde_json::from_str(&stdout(&eval(&args))).expect("json out");
        let want = &c["result"];
        let got = out["score"].as_f64().expect("score");
        assert!(
            (got - want["score"].as_f64().expect("f")).abs() <= 1e-4,
            "{name}: {got}"
        );
        for k in ["counts", "totals", "sys_len", "ref_len"] {
            assert_eq!(out[k], want[k], "{name} {k}");
        }
    }
}
