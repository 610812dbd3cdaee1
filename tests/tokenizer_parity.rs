//! Marian (SentencePiece), BART (byte-level BPE) and T5 tokenizers against transformers:
//! tests/fixtures/tokenizers/refs.json, written by tools/fixtures/make_tokenizer_refs.py
//! with transformers' MarianTokenizer / BartTokenizer on the small tokenizer directories
//! beside it. Then the bad inputs, each an error naming its file.

mod common;

use std::fmt::Display;
use std::path::{Path, PathBuf};

use fusebox::tokenize::marian::MarianTokenizer;
use fusebox::tokenize::seq2seq::{Seq2SeqTokenizer, Seq2SeqTokenizerKind};
use fusebox::tokenize::spm::SentencePiece;
use serde_json::Value;

fn dir(name: &str) -> PathBuf {
    common::fixture("tokenizers").join(name)
}

fn refs() -> Value {
    common::json_fixture("tokenizers/refs.json")
}

fn ids(v: &Value) -> Vec<i32> {
    serde_json::from_value(v.clone()).expect("id list")
}

fn uids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).expect("id list")
}

fn s(v: &Value) -> &str {
    v.as_str().expect("string")
}

/// Comparisons with transformers' outputs; the mismatches are collected so one run shows
/// them all.
#[derive(Default)]
struct Diffs {
    diffs: Vec<String>,
    checked: usize,
}

impl Diffs {
    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: impl Display, got: T, want: T) {
        self.checked += 1;
        if got != want {
            self.diffs
                .push(format!("{what}\n   got  {got:?}\n   want {want:?}"));
        }
    }

    fn ok<T>(&mut self, what: &impl Display, got: fusebox::Result<T>) -> Option<T> {
        got.map_err(|e| {
            self.checked += 1;
            self.diffs.push(format!("{what}\n   error {e}"));
        })
        .ok()
    }

    /// Ids against a JSON id list.
    fn ids(&mut self, what: impl Display, got: fusebox::Result<Vec<i32>>, want: &Value) {
        if let Some(got) = self.ok(&what, got) {
            self.eq(what, got, ids(want));
        }
    }

    /// A decoded text against a JSON string.
    fn text(&mut self, what: impl Display, got: fusebox::Result<String>, want: &Value) {
        if let Some(got) = self.ok(&what, got) {
            self.eq(what, got.as_str(), s(want));
        }
    }

    fn num(&mut self, what: impl Display, got: usize, want: &Value) {
        self.eq(what, Some(got as u64), want.as_u64());
    }

    fn assert_none(self) {
        assert!(self.checked > 0, "nothing was compared");
        assert!(
            self.diffs.is_empty(),
            "{} of {} checks differ from transformers:\n{}",
            self.diffs.len(),
            self.checked,
            self.diffs[..self.diffs.len().min(12)].join("\n")
        );
    }
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fusebox-tok-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

fn err_of<T>(r: fusebox::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// `vocab_size`, `pad_token_id`, `eos_token_id`.
fn sizes_match(name: &str, t: &Seq2SeqTokenizer, want: &Value, d: &mut Diffs) {
    d.num(
        format!("{name} vocab_size"),
        t.vocab_size(),
        &want["vocab_size"],
    );
    d.num(format!("{name} pad"), t.pad_id() as usize, &want["pad_id"]);
    d.num(format!("{name} eos"), t.eos_id() as usize, &want["eos_id"]);
}

/// One Marian directory against its refs: special ids, then per text the source and
/// target ids and every decode transformers was asked for, truncation, and decodes of
/// hand-made id lists (specials between pieces, byte pieces, language codes).
fn marian_matches(name: &str, want: &Value, d: &mut Diffs) {
    let m = MarianTokenizer::from_dir(&dir(name)).expect("load");
    let t = Seq2SeqTokenizer::from_dir(&dir(name)).expect("load");
    assert_eq!(t.kind(), Seq2SeqTokenizerKind::Marian, "{name}");
    sizes_match(name, &t, want, d);
    d.num(format!("{name} unk"), m.unk_id() as usize, &want["unk_id"]);
    if !m.separate_vocabs() {
        let codes: Vec<String> = serde_json::from_value(want["language_codes"].clone()).unwrap();
        d.eq(format!("{name} language codes"), t.language_codes(), codes);
    }
    for c in want["cases"].as_array().expect("cases") {
        let text = s(&c["text"]);
        let source = t.encode_source(text, None);
        d.ids(format!("{name} source {text:?}"), source, &c["source_ids"]);
        let target = t.encode_target(text, None);
        d.ids(format!("{name} target {text:?}"), target, &c["target_ids"]);
        for key in ["source", "target"] {
            let list = ids(&c[format!("{key}_ids")]);
            let u = uids(&c[format!("{key}_ids")]);
            let decodes = [
                ("", t.decode(&list, false)),
                ("_skip", t.decode(&list, true)),
                ("_target_spm", m.decode_with(&u, false, false)),
                ("_skip_target_spm", m.decode_with(&u, true, false)),
                ("_skip_source_spm", m.decode_with(&u, true, true)),
            ];
            for (suffix, got) in decodes {
                let field = format!("decode_{key}{suffix}");
                d.text(format!("{name} {field} {text:?}"), got, &c[&field]);
            }
        }
    }
    for c in want["truncation"].as_array().expect("truncation") {
        let (text, len) = (s(&c["text"]), c["max_length"].as_u64().unwrap() as usize);
        let got = t.encode_source(text, Some(len));
        d.ids(
            format!("{name} source max_length {len}"),
            got,
            &c["source_ids"],
        );
        let got = t.encode_target(text, Some(len));
        d.ids(
            format!("{name} target max_length {len}"),
            got,
            &c["target_ids"],
        );
    }
    for c in want["decodes"].as_array().expect("decodes") {
        let (u, skip) = (uids(&c["ids"]), c["skip_special_tokens"].as_bool().unwrap());
        let got = match c["use_source_tokenizer"].as_bool() {
            None => m.decode(&u, skip),
            Some(src) => m.decode_with(&u, skip, src),
        };
        d.text(format!("{name} decode {c}"), got, &c["text"]);
    }
}

#[test]
fn marian_ids_and_decodes_match_transformers() {
    let r = refs();
    let mut d = Diffs::default();
    let dirs = r["marian"].as_object().expect("marian");
    let names: Vec<&str> = dirs.keys().map(String::as_str).collect();
    assert_eq!(names, ["marian_en_id", "marian_en_id_sep", "marian_en_mul"]);
    for (name, want) in dirs {
        marian_matches(name, want, &mut d);
    }
    d.assert_none();
}

/// The Unigram + Precompiled pipeline segments like the SentencePiece library on a few
/// hundred real sentences in eight languages (NusaX-MT's valid split in English and
/// Indonesian, and 15 rows of each of six regional languages).
#[test]
fn marian_corpus_sample_matches_transformers() {
    let r = refs();
    let corpus = &r["corpus"];
    let texts = corpus["texts"].as_array().expect("texts");
    assert!(texts.len() > 250);
    let mut d = Diffs::default();
    for name in ["marian_en_id", "marian_en_mul"] {
        let t = Seq2SeqTokenizer::from_dir(&dir(name)).expect("load");
        let want = &corpus[name];
        for (i, text) in texts.iter().map(s).enumerate() {
            let got = t.encode_source(text, None);
            d.ids(
                format!("{name} source {text:?}"),
                got,
                &want["source_ids"][i],
            );
            let got = t.encode_target(text, None);
            d.ids(
                format!("{name} target {text:?}"),
                got,
                &want["target_ids"][i],
            );
        }
    }
    d.assert_none();
}

/// A tokenizers-backed directory (BART, T5) against its refs; `tokenizer(text_target=)`
/// is `tokenizer(text)` for these.
fn fast_matches(name: &str, t: &Seq2SeqTokenizer, want: &Value, d: &mut Diffs) {
    sizes_match(name, t, want, d);
    for c in want["cases"].as_array().expect("cases") {
        let text = s(&c["text"]);
        d.ids(
            format!("{name} ids {text:?}"),
            t.encode_source(text, None),
            &c["ids"],
        );
        let got = t.encode_target(text, None);
        d.ids(format!("{name} target {text:?}"), got, &c["ids"]);
        let list = ids(&c["ids"]);
        d.text(
            format!("{name} decode {text:?}"),
            t.decode(&list, false),
            &c["decode"],
        );
        let got = t.decode(&list, true);
        d.text(
            format!("{name} decode skip {text:?}"),
            got,
            &c["decode_skip"],
        );
    }
    for c in want["truncation"].as_array().expect("truncation") {
        let len = c["max_length"].as_u64().unwrap() as usize;
        let got = t.encode_source(s(&c["text"]), Some(len));
        d.ids(format!("{name} max_length {len}"), got, &c["ids"]);
    }
    for c in want["decodes"].as_array().expect("decodes") {
        let skip = c["skip_special_tokens"].as_bool().unwrap();
        let got = t.decode(&ids(&c["ids"]), skip);
        d.text(format!("{name} decode {c}"), got, &c["text"]);
    }
}

#[test]
fn bart_from_tokenizer_json_and_from_vocab_merges_match_transformers() {
    let r = refs();
    let mut d = Diffs::default();
    let kinds = [
        ("bart_json", Seq2SeqTokenizerKind::TokenizerJson),
        ("bart_vocab", Seq2SeqTokenizerKind::BartVocabMerges),
    ];
    for (name, kind) in kinds {
        let t = Seq2SeqTokenizer::from_dir(&dir(name)).expect("load");
        assert_eq!(t.kind(), kind, "{name}");
        assert!(t.as_fast().is_some() && t.language_codes().is_empty());
        fast_matches(name, &t, &r["bart"][name], &mut d);
    }
    d.assert_none();
}

#[test]
fn t5_tokenizer_json_matches_transformers() {
    let Some(t5) = common::asset("tokenizers/t5-small") else {
        return;
    };
    let t = Seq2SeqTokenizer::from_dir(&t5).expect("load");
    assert_eq!(t.kind(), Seq2SeqTokenizerKind::TokenizerJson);
    let mut d = Diffs::default();
    fast_matches("t5-small", &t, &refs()["t5_assets"], &mut d);
    d.assert_none();
}

#[test]
fn directory_kinds_are_detected_without_loading() {
    for (name, kind) in [
        ("marian_en_id", Seq2SeqTokenizerKind::Marian),
        ("marian_en_id_sep", Seq2SeqTokenizerKind::Marian),
        ("bart_json", Seq2SeqTokenizerKind::TokenizerJson),
        ("bart_vocab", Seq2SeqTokenizerKind::BartVocabMerges),
    ] {
        assert_eq!(
            Seq2SeqTokenizerKind::detect(&dir(name)).unwrap(),
            kind,
            "{name}"
        );
    }
    // A checkpoint whose config.json says marian is Marian even with no spm files (so
    // the error names what is missing) ...
    let d = tmp("detect");
    std::fs::write(d.join("config.json"), r#"{"model_type": "marian"}"#).unwrap();
    let kind = Seq2SeqTokenizerKind::detect(&d).unwrap();
    assert_eq!(kind, Seq2SeqTokenizerKind::Marian);
    // ... unless it has a tokenizer.json (a Marian trained from scratch on a word-level
    // tokenizer), which is read.
    std::fs::write(d.join("tokenizer.json"), "{}").unwrap();
    let kind = Seq2SeqTokenizerKind::detect(&d).unwrap();
    assert_eq!(kind, Seq2SeqTokenizerKind::TokenizerJson);
    let e = err_of(Seq2SeqTokenizerKind::detect(&d.join("nope")));
    assert!(e.contains("nope") && e.contains("not a directory"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn marian_language_codes() {
    let r = refs();
    let mul = Seq2SeqTokenizer::from_dir(&dir("marian_en_mul")).expect("load");
    let case = r["marian"]["marian_en_mul"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["text"] == ">>ind<< Good morning, friend.")
        .expect("case");
    let with = mul.clone().with_target_language("ind").expect("ind");
    assert_eq!(with.target_language(), Some(">>ind<<"));
    let got = with.encode_source("Good morning, friend.", None).unwrap();
    assert_eq!(got, ids(&case["source_ids"]));
    let same = mul.clone().with_target_language(">>ind<<").expect("ind");
    assert_eq!(
        same.encode_source("Good morning, friend.", None).unwrap(),
        got
    );

    let e = err_of(mul.clone().with_target_language("fra"));
    assert!(
        e.contains(">>fra<<") && e.contains(">>ind<<") && e.contains("vocab.json"),
        "{e}"
    );
    let e = err_of(mul.encode_source(">>fra<< Good morning", None));
    assert!(e.contains(">>fra<<") && e.contains(">>zsm<<"), "{e}");

    let en_id = Seq2SeqTokenizer::from_dir(&dir("marian_en_id")).expect("load");
    let e = err_of(en_id.clone().with_target_language("ind"));
    assert!(e.contains("no >>xx<< codes"), "{e}");
    let e = err_of(en_id.encode_source(">>ind<< Hello", None));
    assert!(e.contains(">>ind<<") && e.contains("vocab.json"), "{e}");
    let bart = Seq2SeqTokenizer::from_dir(&dir("bart_json")).expect("load");
    let e = err_of(bart.with_target_language("ind"));
    assert!(e.contains("not a Marian tokenizer"), "{e}");
}

#[test]
fn marian_vocab_missing_a_few_pieces_maps_them_to_unk() {
    let r = refs();
    let m = MarianTokenizer::from_dir(&dir("marian_en_id")).expect("load");
    let dropped: Vec<String> =
        serde_json::from_value(r["meta"]["dropped_from_marian_en_id"].clone()).unwrap();
    let cov = &m.coverage()[0];
    assert!(cov.spm.ends_with("source.spm") && cov.vocab.ends_with("vocab.json"));
    let mut want: Vec<String> = dropped;
    want.sort();
    want.dedup();
    let mut got = cov.missing.clone();
    got.sort();
    assert_eq!(got, want);
    let ids = m.encode_source("quizzically", None).unwrap();
    assert!(ids.contains(&m.unk_id()), "{ids:?}");
}

#[test]
fn saved_tokenizers_load_back_the_same() {
    let texts = [
        "Hello world.",
        "a </s> b",
        "Makanannya enak, harganya murah.",
    ];
    for name in [
        "marian_en_id",
        "marian_en_id_sep",
        "marian_en_mul",
        "bart_json",
        "bart_vocab",
    ] {
        let t = Seq2SeqTokenizer::from_dir(&dir(name)).expect("load");
        let out = tmp(&format!("save-{name}"));
        t.save_to(&out).expect("save");
        let back = Seq2SeqTokenizer::from_dir(&out).expect("load saved");
        for text in texts {
            common::same_encoding(&back, &t, text, text);
        }
        assert_eq!(back.vocab_size(), t.vocab_size());
        assert_eq!(back.kind(), t.kind(), "{name}");
        let cfg: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("tokenizer_config.json")).expect("config written"),
        )
        .unwrap();
        if let Some(m) = t.as_marian() {
            assert_eq!(cfg["tokenizer_class"], "MarianTokenizer");
            assert_eq!(cfg["separate_vocabs"], m.separate_vocabs());
            assert_eq!(
                std::fs::read(out.join("source.spm")).unwrap(),
                m.source_spm().bytes()
            );
        } else {
            assert!(
                cfg["tokenizer_class"]
                    .as_str()
                    .unwrap()
                    .ends_with("Tokenizer"),
                "{cfg}"
            );
        }
        let _ = std::fs::remove_dir_all(&out);
    }
}

#[test]
fn marian_directory_without_source_spm_is_an_error_naming_it() {
    let d = tmp("nosrc");
    copy_dir(&dir("marian_en_id"), &d);
    std::fs::remove_file(d.join("source.spm")).unwrap();
    let e = err_of(Seq2SeqTokenizer::from_dir(&d));
    assert!(
        e.contains("no source.spm") && e.contains(&d.display().to_string()),
        "{e}"
    );
    std::fs::remove_file(d.join("target.spm")).unwrap();
    // Still Marian by its tokenizer_config.json class.
    std::fs::write(
        d.join("tokenizer_config.json"),
        r#"{"tokenizer_class": "MarianTokenizer"}"#,
    )
    .unwrap();
    let e = err_of(Seq2SeqTokenizer::from_dir(&d));
    assert!(e.contains("no source.spm"), "{e}");
    let empty = tmp("empty");
    let e = err_of(Seq2SeqTokenizer::from_dir(&empty));
    assert!(
        e.contains("no tokenizer") && e.contains("tokenizer.json"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn vocab_json_not_covering_the_pieces_is_an_error() {
    let d = tmp("cover");
    copy_dir(&dir("marian_en_id"), &d);
    let text = std::fs::read_to_string(d.join("vocab.json")).unwrap();
    let v: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    // Keep the specials and every third piece: another model's vocabulary, in effect.
    let kept: serde_json::Map<String, Value> = v
        .into_iter()
        .enumerate()
        .filter(|(i, (k, _))| i % 3 == 0 || k.starts_with('<'))
        .map(|(_, kv)| kv)
        .collect();
    std::fs::write(d.join("vocab.json"), Value::Object(kept).to_string()).unwrap();
    let e = err_of(Seq2SeqTokenizer::from_dir(&d));
    assert!(
        e.contains("vocab.json") && e.contains("source.spm") && e.contains("does not cover"),
        "{e}"
    );
    // Ids that are not integers, or used twice.
    std::fs::write(d.join("vocab.json"), r#"{"</s>": 0, "<unk>": -1}"#).unwrap();
    let e = err_of(Seq2SeqTokenizer::from_dir(&d));
    assert!(
        e.contains("vocab.json") && e.contains("non-negative integer"),
        "{e}"
    );
    std::fs::write(d.join("vocab.json"), r#"{"</s>": 0, "<unk>": 0}"#).unwrap();
    let e = err_of(Seq2SeqTokenizer::from_dir(&d));
    assert!(e.contains("vocab.json") && e.contains("id 0"), "{e}");
    // separate_vocabs without target_vocab.json.
    copy_dir(&dir("marian_en_id_sep"), &d);
    std::fs::remove_file(d.join("target_vocab.json")).unwrap();
    let e = err_of(Seq2SeqTokenizer::from_dir(&d));
    assert!(e.contains("no target_vocab.json"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

/// A minimal ModelProto: `<unk>` and one piece, with the given trainer_spec.model_type.
fn tiny_model(model_type: u8) -> Vec<u8> {
    let piece = |s: &str, kind: u8| {
        let mut p = vec![0x0a, s.len() as u8];
        p.extend_from_slice(s.as_bytes());
        p.push(0x15); // score, fixed32
        p.extend_from_slice(&(-1.0f32).to_le_bytes());
        p.extend_from_slice(&[0x18, kind]);
        p
    };
    let mut m = Vec::new();
    for p in [piece("<unk>", 2), piece("a", 1)] {
        m.push(0x0a);
        m.push(p.len() as u8);
        m.extend(p);
    }
    m.extend_from_slice(&[0x12, 2, 0x18, model_type]); // trainer_spec { model_type }
    m
}

#[test]
fn corrupt_or_unsupported_spm_files_are_errors_naming_the_file() {
    let d = tmp("corrupt");
    copy_dir(&dir("marian_en_id"), &d);
    let src = d.join("source.spm");
    let bytes = std::fs::read(&src).unwrap();
    std::fs::write(&src, &bytes[..bytes.len() / 2]).unwrap();
    let e = err_of(Seq2SeqTokenizer::from_dir(&d));
    assert!(
        e.contains("source.spm") && e.contains("not a SentencePiece model"),
        "{e}"
    );
    std::fs::write(&src, "this is a text file, not a model\n").unwrap();
    let e = err_of(Seq2SeqTokenizer::from_dir(&d));
    assert!(
        e.contains("source.spm") && e.contains("not a SentencePiece model"),
        "{e}"
    );
    std::fs::write(&src, tiny_model(2)).unwrap();
    let e = err_of(Seq2SeqTokenizer::from_dir(&d));
    assert!(e.contains("source.spm") && e.contains("BPE"), "{e}");
    let sp = SentencePiece::from_bytes(tiny_model(1), Path::new("tiny.model")).expect("unigram");
    assert_eq!(sp.encode_pieces("aa").unwrap(), vec!["\u{2581}", "a", "a"]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_ids_and_lengths_are_errors() {
    for name in ["marian_en_id", "bart_json"] {
        let t = Seq2SeqTokenizer::from_dir(&dir(name)).expect("load");
        let e = err_of(t.decode(&[5, -100], true));
        assert!(e.contains("-100"), "{e}");
        let e = err_of(t.encode_source("Hello", Some(0)));
        assert!(e.contains("max_length 0"), "{e}");
    }
    // Marian looks ids up in vocab.json, as MarianTokenizer does (its SentencePiece
    // fallback refuses an id past the model too); BART drops an unknown id (refs.json).
    let t = Seq2SeqTokenizer::from_dir(&dir("marian_en_id")).expect("load");
    let e = err_of(t.decode(&[t.vocab_size() as i32 + 7], false));
    assert!(e.contains("is not in") && e.contains("vocab.json"), "{e}");
}

#[test]
fn marian_config_and_special_token_errors_name_the_file() {
    let d = tmp("specials");
    copy_dir(&dir("marian_en_id"), &d);
    let text = std::fs::read_to_string(d.join("vocab.json")).unwrap();
    let mut v: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    v.remove("<pad>");
    std::fs::write(d.join("vocab.json"), Value::Object(v).to_string()).unwrap();
    let e = err_of(Seq2SeqTokenizer::from_dir(&d));
    assert!(e.contains("vocab.json") && e.contains("\"<pad>\""), "{e}");
    copy_dir(&dir("marian_en_id"), &d);
    std::fs::write(
        d.join("tokenizer_config.json"),
        r#"{"separate_vocabs": "yes"}"#,
    )
    .unwrap();
    let e = err_of(Seq2SeqTokenizer::from_dir(&d));
    assert!(
        e.contains("tokenizer_config.json") && e.contains("separate_vocabs"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
