//! Replays reference values measured with the real Python tools (see
//! tools/fixtures/make_metric_refs.py and tools/fixtures/squad_eval/) against fusebox's metrics.
//! ROUGE to 1e-6, BLEU score to 1e-4 (counts/lengths exactly), SQuAD stdout byte-exact.

mod common;
use common::assets;
use std::collections::HashMap;
use std::path::PathBuf;

use fusebox::metrics::{bleu, porter, rouge, squad};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn f(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

fn s(v: &Value) -> String {
    v.as_str().expect("string").to_string()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().expect("array").iter().map(s).collect()
}

fn check_score(what: &str, got: rouge::Score, want: &Value) {
    let w = want.as_array().expect("[p, r, f]");
    for (name, g, x) in [
        ("precision", got.precision, f(&w[0])),
        ("recall", got.recall, f(&w[1])),
        ("fmeasure", got.fmeasure, f(&w[2])),
    ] {
        assert!(
            (g - x).abs() <= 1e-6,
            "{what} {name}: got {g}, rouge-score {x}"
        );
    }
}

fn check_all(what: &str, got: &rouge::RougeScores, want: &Value) {
    for (name, sc) in got.named() {
        check_score(&format!("{what} {name}"), sc, &want[name]);
    }
}

#[test]
fn rouge_pairs_match_rouge_score() {
    let fx = fixture("metrics_reference.json");
    let cases = fx["rouge_pairs"].as_array().expect("cases");
    assert!(cases.len() >= 20);
    for c in cases {
        let stem = c["stemmer"].as_bool().expect("bool");
        let got = rouge::score(&s(&c["target"]), &s(&c["prediction"]), stem);
        let what = format!("{} (stemmer={stem})", s(&c["name"]));
        check_all(&what, &got, &c["scores"]);
    }
}

#[test]
fn rouge_means_match() {
    let fx = fixture("metrics_reference.json");
    for c in fx["rouge_means"].as_array().expect("means") {
        let stem = c["stemmer"].as_bool().expect("bool");
        let got = rouge::mean_scores(&strings(&c["targets"]), &strings(&c["predictions"]), stem)
            .expect("mean");
        check_all(&format!("mean (stemmer={stem})"), &got, &c["mean"]);
    }
}

#[test]
fn rouge_length_mismatch_is_an_error() {
    let e = rouge::mean_scores(&["a".into()], &[], false).unwrap_err();
    assert!(
        e.to_string().contains("1 references but 0 predictions"),
        "{e}"
    );
}

#[test]
fn porter_matches_nltk_on_thousands_of_words() {
    let fx = fixture("metrics_reference.json");
    let stems = fx["porter_stems"].as_object().expect("map");
    assert!(stems.len() > 1000);
    let bad: Vec<String> = stems
        .iter()
        .filter_map(|(w, want)| {
            let got = porter::stem(w);
            (got != s(want)).then(|| format!("{w}: got {got}, nltk {want}"))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} mismatches: {:?}",
        bad.len(),
        &bad[..bad.len().min(20)]
    );
}

fn check_bleu(what: &str, got: &bleu::BleuScore, want: &Value) {
    assert!(
        (got.score - f(&want["score"])).abs() <= 1e-4,
        "{what}: score {} vs sacrebleu {}",
        got.score,
        want["score"]
    );
    let ints = |v: &Value| -> Vec<usize> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_u64().expect("int") as usize)
            .collect()
    };
    assert_eq!(got.counts.to_vec(), ints(&want["counts"]), "{what} counts");
    assert_eq!(got.totals.to_vec(), ints(&want["totals"]), "{what} totals");
    assert_eq!(
        got.sys_len as u64,
        want["sys_len"].as_u64().expect("int"),
        "{what}"
    );
    assert_eq!(
        got.ref_len as u64,
        want["ref_len"].as_u64().expect("int"),
        "{what}"
    );
    assert!((got.bp - f(&want["bp"])).abs() <= 1e-9, "{what} bp");
    for (g, w) in got
        .precisions
        .iter()
        .zip(want["precisions"].as_array().expect("p"))
    {
        assert!((g - f(w)).abs() <= 1e-9, "{what} precision {g} vs {w}");
    }
}

#[test]
fn corpus_bleu_matches_sacrebleu() {
    let fx = fixture("metrics_reference.json");
    for c in fx["bleu_corpus"].as_array().expect("cases") {
        let refs: Vec<Vec<String>> = c["refs"]
            .as_array()
            .expect("streams")
            .iter()
            .map(strings)
            .collect();
        let got = bleu::corpus_bleu(&strings(&c["hyps"]), &refs, &bleu::BleuOptions::default())
            .expect("bleu");
        check_bleu(&s(&c["name"]), &got, &c["result"]);
    }
}

#[test]
fn sentence_bleu_matches_sacrebleu() {
    let fx = fixture("metrics_reference.json");
    let cases = fx["bleu_sentence"].as_array().expect("cases");
    assert!(cases.len() >= 10);
    for c in cases {
        let got = bleu::sentence_bleu(&s(&c["hyp"]), &strings(&c["refs"])).expect("bleu");
        check_bleu(&format!("sentence {:?}", c["hyp"]), &got, &c["result"]);
    }
}

#[test]
fn tokenizer_13a_matches_sacrebleu() {
    let fx = fixture("metrics_reference.json");
    for (input, want) in fx["tokenize_13a"].as_object().expect("map") {
        assert_eq!(
            bleu::tokenize_13a(input.trim_end()),
            s(want),
            "input {input:?}"
        );
    }
}

#[test]
fn bleu_rejects_misaligned_streams() {
    let e = bleu::corpus_bleu(
        &["a".into(), "b".into()],
        &[vec!["a".into()]],
        &Default::default(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("1 lines but there are 2 hypotheses"),
        "{e}"
    );
}

#[test]
fn squad_matches_official_scripts() {
    let Some(assets) = assets() else { return };
    let fx = fixture("squad_official_outputs.json");
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 8);
    for c in cases {
        let name = s(&c["name"]);
        let gold = squad::SquadGold::from_file(assets.join(s(&c["data"]))).expect("gold");
        let preds: HashMap<String, String> =
            squad::parse_predictions(&c["predictions"].to_string(), &name).expect("preds");
        let stdout = match s(&c["script"]).as_str() {
            "v1.1" => {
                assert_eq!(gold.version, squad::SquadVersion::V1, "{name}");
                let r = squad::evaluate_v1(&gold.questions, &preds).expect("v1");
                assert_eq!(r.official_stderr(), s(&c["stderr"]), "case {name} stderr");
                r.official_stdout()
            }
            _ => {
                assert_eq!(gold.version, squad::SquadVersion::V2, "{name}");
                let na_probs = c["na_probs_json"]
                    .as_str()
                    .map(|t| squad::parse_na_probs(t, &name).expect("na probs"));
                let opts = squad::V2Options {
                    na_probs,
                    na_prob_thresh: c["na_prob_thresh"].as_f64().unwrap_or(1.0),
                };
                squad::evaluate_v2(&gold.questions, &preds, &opts)
                    .expect("v2")
                    .official_stdout()
            }
        };
        assert_eq!(stdout, s(&c["stdout"]), "case {name}");
    }
}

#[test]
fn squad_normalize_matches_official() {
    let fx = fixture("squad_official_outputs.json");
    for script in ["evaluate-v1.1.py", "evaluate-v2.0.py"] {
        let cases = fx["normalize_answer"][script].as_object().expect("map");
        assert!(cases.len() > 20);
        for (input, want) in cases {
            assert_eq!(
                squad::normalize_answer(input),
                s(want),
                "{script} on {input:?}"
            );
        }
    }
}

#[test]
fn squad_normalization_details() {
    // Articles only as whole words; punctuation is removed first, so "a-team" -> "ateam".
    assert_eq!(
        squad::normalize_answer("The  A-Team's   an apple!"),
        "ateams apple"
    );
    assert_eq!(squad::normalize_answer("Theater a_b"), "theater ab");
    assert_eq!(squad::f1_v1("", ""), 0.0);
    assert_eq!(squad::f1_v2("", ""), 1.0);
    assert_eq!(squad::f1_v2("the", "x"), 0.0);
}

#[test]
fn fuzzed_texts_match_rouge_score_and_sacrebleu() {
    // 150 seeded random pairs mixing unicode, punctuation, numbers, articles and newlines.
    let fx = fixture("metrics_reference.json");
    let fz = &fx["fuzz"];
    let rouge_cases = fz["rouge"].as_array().expect("rouge");
    assert_eq!(rouge_cases.len(), 300);
    for (i, c) in rouge_cases.iter().enumerate() {
        let stem = c["stemmer"].as_bool().expect("bool");
        let got = rouge::score(&s(&c["target"]), &s(&c["prediction"]), stem);
        check_all(&format!("fuzz {i} (stemmer={stem})"), &got, &c["scores"]);
    }
    let sent = fz["bleu_sentence"].as_array().expect("sentence");
    assert_eq!(sent.len(), 150);
    for (i, c) in sent.iter().enumerate() {
        let got = bleu::sentence_bleu(&s(&c["hyp"]), &strings(&c["refs"])).expect("bleu");
        check_bleu(&format!("fuzz sentence {i}"), &got, &c["result"]);
    }
    let c = &fz["bleu_corpus"];
    let refs: Vec<Vec<String>> = c["refs"]
        .as_array()
        .expect("r")
        .iter()
        .map(strings)
        .collect();
    let got = bleu::corpus_bleu(&strings(&c["hyps"]), &refs, &Default::default()).expect("bleu");
    check_bleu("fuzz corpus", &got, &c["result"]);
}

#[test]
fn squad_scores_match_official_functions_on_random_pairs() {
    // 300 seeded random (prediction, gold) pairs scored by the official functions.
    let fx = fixture("squad_official_outputs.json");
    let pairs = fx["score_pairs"].as_array().expect("pairs");
    assert_eq!(pairs.len(), 300);
    for c in pairs {
        let (pred, gold) = (s(&c["pred"]), s(&c["gold"]));
        let what = format!("pred {pred:?} gold {gold:?}");
        assert_eq!(
            squad::exact_match(&pred, &gold),
            c["v1_exact"].as_bool().expect("b"),
            "{what}"
        );
        assert_eq!(squad::f1_v1(&pred, &gold), f(&c["v1_f1"]), "v1 f1 {what}");
        assert_eq!(squad::f1_v2(&gold, &pred), f(&c["v2_f1"]), "v2 f1 {what}");
    }
}

#[test]
fn rouge_asset_pairs_match_sources_md() {
    // The values shared/assets/SOURCES.md lists for metrics/rouge (rouge-score 0.1.2, no
    // stemmer), rounded there to 5 digits.
    let Some(a) = assets() else { return };
    let read = |n: &str| -> Vec<String> {
        std::fs::read_to_string(a.join("metrics/rouge").join(n))
            .expect("rouge asset")
            .lines()
            .map(str::to_string)
            .collect()
    };
    let (t, p) = (read("target.txt"), read("prediction.txt"));
    let want = [
        [
            [0.6875, 0.40741, 0.51163],
            [0.53333, 0.30769, 0.39024],
            [0.6875, 0.40741, 0.51163],
        ],
        [
            [0.65385, 0.40476, 0.5],
            [0.48, 0.29268, 0.36364],
            [0.65385, 0.40476, 0.5],
        ],
    ];
    for (i, w) in want.iter().enumerate() {
        let got = rouge::score(&t[i], &p[i], false);
        for (sc, wv) in [got.rouge1, got.rouge2, got.rouge_l].iter().zip(w) {
            for (g, x) in [sc.precision, sc.recall, sc.fmeasure].iter().zip(wv) {
                assert!((g - x).abs() < 5e-6, "pair {}: {g} vs {x}", i + 1);
            }
        }
    }
}

#[test]
fn squad_na_probs_refuse_nan_naming_file_and_question() {
    // The official script has no defined order for NaN keys; Infinity still parses.
    let e = squad::parse_na_probs(r#"{"q1": 0.5, "q2": NaN}"#, "null_odds.json")
        .expect_err("NaN")
        .to_string();
    assert!(e.contains("null_odds.json") && e.contains("q2"), "{e}");
    let ok = squad::parse_na_probs(r#"{"q1": Infinity, "q2": -0.0}"#, "x").expect("parse");
    assert_eq!(ok.len(), 2);
}
