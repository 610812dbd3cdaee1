//! Dataset readers on the real files in shared/assets (path: env FUSEBOX_ASSETS, else
//! CARGO_MANIFEST_DIR/../shared/assets; tests print why and skip when absent, and fail
//! when FUSEBOX_REQUIRE_ASSETS=1, as CI sets it). Expected
//! counts and character totals were measured with Python's json/csv modules (code-point
//! lengths, as `len()` reports them).

mod common;
use common::assets;
use std::path::PathBuf;

use fusebox::data::seq2seq::{self, Seq2SeqOptions};
use fusebox::data::squad::{self, SquadLayout, SquadOptions};

fn chars(s: &str) -> usize {
    s.chars().count()
}

#[test]
fn every_qa_file_loads_with_checked_offsets() {
    let Some(a) = assets() else { return };
    // (file, questions, answers, impossible, layout) from Python.
    let expect = [
        ("allennlp-squad-v1.json", 5, 7, 0, SquadLayout::Nested),
        ("allennlp-squad-v2.json", 6, 7, 1, SquadLayout::Nested),
        ("hf-fixture-dev-v2.0.json", 14, 8, 6, SquadLayout::Nested),
        ("hf-fixture-sample-flat.json", 14, 27, 6, SquadLayout::Flat),
        ("tydiqa-goldp-dev-en.json", 440, 686, 0, SquadLayout::Nested),
        ("tydiqa-goldp-dev-id.json", 565, 958, 0, SquadLayout::Nested),
    ];
    let mut seen = 0;
    for entry in std::fs::read_dir(a.join("qa")).expect("qa dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        let Some(&(_, nq, na, ni, layout)) = expect.iter().find(|e| e.0 == name) else {
            panic!("new QA asset {name}: add its expected counts here");
        };
        let load = squad::load_squad(&path, SquadOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(load.layout, layout, "{name}");
        assert_eq!(load.examples.len(), nq, "{name} questions");
        let answers: usize = load.examples.iter().map(|e| e.answers.len()).sum();
        assert_eq!(answers, na, "{name} answers");
        let impossible = load.examples.iter().filter(|e| e.is_impossible).count();
        assert_eq!(impossible, ni, "{name} impossible");
        assert!(load.skipped.is_empty());
        for ex in &load.examples {
            for ans in &ex.answers {
                assert_eq!(&ex.context[ans.byte_range()], ans.text, "{name} {}", ex.id);
                let by_chars: String = ex
                    .context
                    .chars()
                    .skip(ans.answer_start)
                    .take(chars(&ans.text))
                    .collect();
                assert_eq!(by_chars, ans.text);
            }
        }
        seen += 1;
    }
    assert_eq!(seen, expect.len());
}

#[test]
fn tydi_indonesian_offsets_are_characters_not_bytes() {
    let Some(a) = assets() else { return };
    let load = squad::load_squad(
        a.join("qa/tydiqa-goldp-dev-id.json"),
        SquadOptions::default(),
    )
    .expect("load");
    // 161 answers sit after non-ASCII text, where char and byte starts differ (Python count).
    let shifted = load
        .examples
        .iter()
        .flat_map(|e| &e.answers)
        .filter(|a| a.byte_start != a.answer_start)
        .count();
    assert_eq!(shifted, 161);
    let first = &load.examples[0];
    assert_eq!(first.title, "Kristoforus Kolumbus");
    assert_eq!(first.answers[0].text, "orang-orang Viking dari Eropa Utara");
    assert_eq!(first.answers[0].answer_start, 193);
}

#[test]
fn flat_and_nested_v2_fixtures_agree() {
    let Some(a) = assets() else { return };
    let nested = squad::load_squad(
        a.join("qa/hf-fixture-dev-v2.0.json"),
        SquadOptions::default(),
    )
    .expect("nested");
    let flat = squad::load_squad(
        a.join("qa/hf-fixture-sample-flat.json"),
        SquadOptions::default(),
    )
    .expect("flat");
    let ids = |l: &squad::SquadLoad| l.examples.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&nested), ids(&flat));
    for (n, f) in nested.examples.iter().zip(&flat.examples) {
        assert_eq!(n.context, f.context);
        assert_eq!(n.is_impossible, f.is_impossible, "{}", n.id);
    }
}

fn tmp(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fusebox-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write");
    p
}

#[test]
fn answer_mismatch_is_an_error_or_a_counted_skip() {
    // "é" is 1 char, 2 bytes: a byte-based check would look at the wrong place.
    let body = r#"{"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": "Café au lait, s'il vous plaît.",
        "qas": [{"id": "good", "question": "q?", "answers": [{"text": "au lait", "answer_start": 5}]},
                {"id": "bad", "question": "q?", "answers": [{"text": "au lait", "answer_start": 6}]},
                {"id": "past-end", "question": "q?", "answers": [{"text": "plaît.x", "answer_start": 24}]},
                {"id": "huge", "question": "q?", "answers": [{"text": "x", "answer_start": 18446744073709551615}]}]}]}]}"#;
    let p = tmp("mismatch.json", body);
    let e = squad::load_squad(&p, SquadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mismatch.json") && e.contains("question bad"),
        "{e}"
    );
    assert!(
        e.contains("\"au lait\"") && e.contains("\"u lait,\""),
        "{e}"
    );
    let load = squad::load_squad(
        &p,
        SquadOptions {
            skip_bad: true,
            ..Default::default()
        },
    )
    .expect("skip_bad");
    assert_eq!(load.examples.len(), 1);
    assert_eq!(load.examples[0].answers[0].byte_start, 6);
    let skipped: Vec<&str> = load.skipped.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(skipped, ["bad", "past-end", "huge"]);
    assert!(load.skipped[1].reason.contains("past the end"));
    // For prediction: every question kept, only the answers that do not match dropped.
    let keep = squad::load_squad(
        &p,
        SquadOptions {
            keep_questions: true,
            ..Default::default()
        },
    )
    .expect("keep_questions");
    let ids: Vec<&str> = keep.examples.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["good", "bad", "past-end", "huge"]);
    let answers: Vec<usize> = keep.examples.iter().map(|e| e.answers.len()).collect();
    assert_eq!(answers, [1, 0, 0, 0]);
    assert!(
        keep.examples.iter().all(|e| !e.is_impossible),
        "answerable questions stay answerable when their answer is dropped"
    );
    assert_eq!(keep.skipped.len(), 3);
}

#[test]
fn malformed_squad_names_file_field_and_expectation() {
    let cases = [
        ("not json {", "not valid JSON"),
        (r#"{"data": 3}"#, "data: expected a top-level array"),
        (
            r#"{"data": [{"paragraphs": [{"context": "x", "qas": [{"id": 7, "question": "q", "answers": []}]}]}]}"#,
            "data[0].paragraphs[0].qas[0].id: expected a string",
        ),
        (
            r#"{"data": [{"paragraphs": [{"context": "x", "qas": [{"id": "a", "question": "q", "answers": [{"text": "x", "answer_start": -1}]}]}]}]}"#,
            "answers[0].answer_start: expected a non-negative integer",
        ),
        (
            r#"{"data": [{"id": "a", "question": "q", "context": "x", "answers": {"text": ["x"], "answer_start": []}}]}"#,
            "data[0].answers: expected as many answer_start values as texts",
        ),
    ];
    for (i, (body, want)) in cases.iter().enumerate() {
        let p = tmp(&format!("bad{i}.json"), body);
        let e = squad::load_squad(&p, SquadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("bad{i}.json")) && e.contains(want),
            "case {i}: {e}"
        );
    }
}

#[test]
fn cnn_stories_follow_hf_cnn_dailymail() {
    let Some(a) = assets() else { return };
    let opts = Seq2SeqOptions::new("article", "highlights").with_prefix("summarize: ");
    let ex = seq2seq::load_seq2seq(a.join("seq2seq/cnn-stories"), &opts).expect("stories");
    assert_eq!(ex.len(), 20);
    for e in &ex {
        assert!(e.source.starts_with("summarize: ") && !e.source.contains("@highlight"));
        assert!(!e.target.is_empty() && !e.target.contains("@highlight"));
    }
    // First file (sorted): 017d27d0... three highlights, none ending in a period, so HF
    // appends " ." to each and joins them with newlines.
    assert!(ex[0]
        .source
        .starts_with("summarize: WASHINGTON (CNN) -- As he awaits"));
    let lines: Vec<&str> = ex[0].target.split('\n').collect();
    assert_eq!(
        lines,
        [
            "President Bush to address the Veterans of Foreign Wars on Wednesday .",
            "Bush to say that withdrawing from Vietnam emboldened today's terrorists .",
            "Speech will be latest White House attempt to try to reframe the debate over Iraq .",
        ]
    );
    // The caption line without final punctuation gets " ." before the next line.
    assert!(ex[0]
        .source
        .contains("North American Leaders summit in Canada. On Wednesday"));
}

#[test]
fn story_parsing_rules() {
    let s = seq2seq::parse_story(
        "  Line one\r\n\nSays \u{201c}hi\u{201d}\n(Aside)\n@highlight\n\nFirst point\n@highlight\nSecond!\n",
    );
    assert_eq!(s.article, "Line one . Says \u{201c}hi\u{201d} (Aside)");
    assert_eq!(s.highlights, ["First point .", "Second!"]);
}

#[test]
fn jsonl_with_dotted_paths() {
    let Some(a) = assets() else { return };
    let x = seq2seq::load_seq2seq(
        a.join("seq2seq/xsum-sample.jsonl"),
        &Seq2SeqOptions::new("document", "summary").with_prefix("summarize: "),
    )
    .expect("xsum");
    assert_eq!(x.len(), 10);
    let total = |f: &dyn Fn(&seq2seq::Seq2SeqExample) -> usize| x.iter().map(f).sum::<usize>();
    assert_eq!(total(&|e| chars(&e.source) - chars("summarize: ")), 13962);
    assert_eq!(total(&|e| chars(&e.target)), 1216);
    assert_eq!(
        x[0].target,
        "The Met Office has issued a yellow weather warning for ice across most of Wales."
    );

    let w = seq2seq::load_seq2seq(
        a.join("seq2seq/wmt-en-ro/test.jsonl"),
        &Seq2SeqOptions::new("translation.en", "translation.ro"),
    )
    .expect("wmt");
    assert_eq!(w.len(), 20);
    assert_eq!(w.iter().map(|e| chars(&e.source)).sum::<usize>(), 12032);
    assert_eq!(w.iter().map(|e| chars(&e.target)).sum::<usize>(), 13660);
    for (f, n) in [("train", 11), ("val", 16)] {
        let p = a.join(format!("seq2seq/wmt-en-ro/{f}.jsonl"));
        let opts = Seq2SeqOptions::new("translation.en", "translation.ro");
        assert_eq!(seq2seq::load_seq2seq(p, &opts).expect("wmt").len(), n);
    }

    let e = seq2seq::load_seq2seq(
        a.join("seq2seq/wmt-en-ro/test.jsonl"),
        &Seq2SeqOptions::new("translation.de", "translation.ro"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("test.jsonl:1") && e.contains("`translation.de` not found"),
        "{e}"
    );
}

#[test]
fn nusax_csv_with_quoted_commas() {
    let Some(a) = assets() else { return };
    let opts = Seq2SeqOptions::new("english", "indonesian")
        .with_prefix("translate English to Indonesian: ");
    // (file, rows, chars in english, chars in indonesian) from Python's csv.DictReader.
    for (f, n, en, id) in [
        ("train", 500, 80830, 76650),
        ("valid", 100, 15602, 15105),
        ("test", 400, 63803, 61680),
    ] {
        let ex = seq2seq::load_seq2seq(a.join(format!("seq2seq/nusax-mt-en-id/{f}.csv")), &opts)
            .expect("nusax");
        assert_eq!(ex.len(), n, "{f}");
        let p = chars(&opts.prefix);
        assert_eq!(
            ex.iter().map(|e| chars(&e.source) - p).sum::<usize>(),
            en,
            "{f}"
        );
        assert_eq!(
            ex.iter().map(|e| chars(&e.target)).sum::<usize>(),
            id,
            "{f}"
        );
    }
    let e = seq2seq::load_seq2seq(
        a.join("seq2seq/nusax-mt-en-id/valid.csv"),
        &Seq2SeqOptions::new("french", "indonesian"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("column `french` not in header") && e.contains("english"),
        "{e}"
    );
}

#[test]
fn delimited_reader_edge_cases() {
    let rows = seq2seq::split_delimited(
        "a,b\r\n\"x, \"\"y\"\"\",\"multi\nline\"\n\nlast,row",
        ',',
        "t",
    )
    .expect("csv");
    assert_eq!(
        rows,
        vec![
            vec!["a".to_string(), "b".into()],
            vec!["x, \"y\"".into(), "multi\nline".into()],
            vec!["last".into(), "row".into()],
        ]
    );
    let p = tmp(
        "pairs.tsv",
        "src\ttgt\nhello\tbonjour\n\"tab\tinside\"\tx\n",
    );
    let ex = seq2seq::load_seq2seq(&p, &Seq2SeqOptions::new("src", "tgt")).expect("tsv");
    assert_eq!(ex[1].source, "tab\tinside");
    let e = seq2seq::split_delimited("a,\"open", ',', "f.csv")
        .unwrap_err()
        .to_string();
    assert!(e.contains("f.csv:1: quoted field never closed"), "{e}");
}

/// Absent assets skip a test, except with FUSEBOX_REQUIRE_ASSETS=1 (CI, which has them),
/// where they fail it: this binary's `assets_probe` is run in a child process with the
/// assets pointed at a folder that does not exist, once without and once with the switch.
#[test]
fn missing_assets_fail_only_when_required() {
    let run = |require: bool| {
        let mut cmd = std::process::Command::new(std::env::current_exe().expect("test binary"));
        cmd.args(["--exact", "assets_probe", "--nocapture"])
            .env("FUSEBOX_ASSETS", "/nonexistent/fusebox-assets")
            .env("FUSEBOX_ASSETS_PROBE", "1");
        if require {
            cmd.env("FUSEBOX_REQUIRE_ASSETS", "1");
        } else {
            cmd.env_remove("FUSEBOX_REQUIRE_ASSETS");
        }
        let out = cmd.output().expect("run the probe");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = run(false);
    assert!(ok && text.contains("skipping: assets not found"), "{text}");
    let (ok, text) = run(true);
    assert!(!ok && text.contains("FUSEBOX_REQUIRE_ASSETS=1"), "{text}");
}

/// The child half of the test above; does nothing in a normal run.
#[test]
fn assets_probe() {
    if std::env::var_os("FUSEBOX_ASSETS_PROBE").is_some() {
        assert!(assets().is_none());
    }
}
