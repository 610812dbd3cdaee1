//! Tokenizers, QA features and span post-processing, on real assets: the bert-base-cased
//! vocab, all-MiniLM-L6-v2's tokenizer.json and the SQuAD sample from transformers'
//! test fixtures. Feature parity is checked against tests/fixtures/qa_features_hf.json,
//! written by tools/fixtures/make_qa_features_ref.py with transformers' fast tokenizers.
//! Tests skip with a message when /work/shared/assets (or FUSEBOX_ASSETS) is absent.

mod common;
use common::assets;
use std::path::PathBuf;

use fusebox::tasks::qa::{
    pipeline_decode, postprocess_qa_predictions, FeatureConfig, PipelineConfig, PostprocessConfig,
    QaAnswer, QaExample, QaFeature, QaPreprocessor,
};
use fusebox::tokenize::TextTokenizer;
use serde_json::Value;

/// The repository root: where the test was built, else the working directory.
fn root() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if built.join("tests/fixtures").exists() {
        built
    } else {
        PathBuf::from(".")
    }
}

fn cased(a: &std::path::Path) -> TextTokenizer {
    TextTokenizer::from_dir(&a.join("tokenizers/bert-base-cased")).expect("cased vocab")
}

fn minilm(a: &std::path::Path) -> TextTokenizer {
    TextTokenizer::from_dir(&a.join("models/all-minilm-l6-v2")).expect("minilm tokenizer.json")
}

/// The examples the reference script used (the sample + one unanswerable copy).
fn reference() -> Value {
    let p = root().join("tests/fixtures/qa_features_hf.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("fixture")).expect("json")
}

fn examples_of(r: &Value) -> Vec<QaExample> {
    let e = &r["examples"];
    let n = e["id"].as_array().expect("ids").len();
    (0..n)
        .map(|i| {
            let ans = &e["answers"][i];
            let texts = ans["text"].as_array().expect("texts");
            QaExample {
                id: e["id"][i].as_str().expect("id").into(),
                question: e["question"][i].as_str().expect("q").into(),
                context: e["context"][i].as_str().expect("c").into(),
                answers: texts
                    .iter()
                    .zip(ans["answer_start"].as_array().expect("starts"))
                    .map(|(t, s)| QaAnswer {
                        text: t.as_str().expect("text").into(),
                        start: s.as_u64().expect("start") as usize,
                    })
                    .collect(),
            }
        })
        .collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("uint") as u32)
        .collect()
}

#[test]
fn bert_base_cased_vocab_ids() {
    let Some(a) = assets() else { return };
    let t = cased(&a);
    // Reference ids from SOURCES.md (transformers' BertTokenizer on bert-base-cased).
    assert_eq!(
        t.ids("Hello, my dog is cute").expect("encode"),
        vec![101, 8667, 117, 1139, 3676, 1110, 10509, 102]
    );
    assert_eq!(t.pad_id, 0);
    assert_eq!((t.cls_id, t.sep_id), (Some(101), Some(102)));
}

#[test]
fn minilm_tokenizer_json_loads_and_agrees_with_its_vocab() {
    let Some(a) = assets() else { return };
    let dir = a.join("models/all-minilm-l6-v2");
    let json = minilm(&a);
    let vocab = TextTokenizer::bert_wordpiece(&dir.join("vocab.txt"), true).expect("vocab");
    assert_eq!(json.vocab_size(), 30522);
    for s in [
        "Hello, my dog is cute",
        "The Normans (Norman: Nourmands; French: Normands) gave their name to Normandy.",
        "Ünïcödé àccents and 中文 characters, [MASK] tokens.",
    ] {
        let (x, y) = (json.ids(s).expect("json"), vocab.ids(s).expect("vocab"));
        assert_eq!(x, y, "{s}");
        // tokenizer.json carries truncation/padding to 128: they must be gone.
        assert!(x.len() < 40, "{s}: {} ids", x.len());
    }
    let pair = json
        .encode(("a question", "the context"), true)
        .expect("pair");
    assert_eq!(pair.get_type_ids(), &[0, 0, 0, 0, 1, 1, 1]);
}

fn check_against_hf(tok: &TextTokenizer, r: &Value, name: &str) {
    let cfg = FeatureConfig {
        max_length: r["max_length"].as_u64().expect("max") as usize,
        stride: r["stride"].as_u64().expect("stride") as usize,
        pad_to_max_length: true,
    };
    let examples = examples_of(r);
    let pre = QaPreprocessor::new(tok, cfg).expect("preprocessor");
    let train = pre.train_features(&examples).expect("train features");
    let hf = &r[name]["train"];
    assert_eq!(train.len(), hf["input_ids"].as_array().expect("ids").len());
    for (i, f) in train.iter().enumerate() {
        assert_eq!(f.input_ids, u32s(&hf["input_ids"][i]), "{name} window {i}");
        assert_eq!(
            f.token_type_ids,
            u32s(&hf["token_type_ids"][i]),
            "{name} {i}"
        );
        assert_eq!(
            f.attention_mask,
            u32s(&hf["attention_mask"][i]),
            "{name} {i}"
        );
        assert_eq!(
            f.example_index as u64,
            hf["example_index"][i].as_u64().expect("ex")
        );
        let pos = f.positions.expect("train positions");
        assert_eq!(
            (pos.0 as u64, pos.1 as u64),
            (
                hf["start_positions"][i].as_u64().expect("s"),
                hf["end_positions"][i].as_u64().expect("e")
            ),
            "{name} window {i} positions"
        );
    }
    let eval = pre.eval_features(&examples).expect("eval features");
    let hf = &r[name]["eval"];
    assert_eq!(eval.len(), hf["input_ids"].as_array().expect("ids").len());
    for (i, f) in eval.iter().enumerate() {
        assert_eq!(f.example_id, hf["example_id"][i].as_str().expect("id"));
        assert!(f.positions.is_none());
        let offs: Vec<Option<(usize, usize)>> = hf["offset_mapping"][i]
            .as_array()
            .expect("offsets")
            .iter()
            .map(|o| {
                o.as_array().map(|p| {
                    (
                        p[0].as_u64().expect("o") as usize,
                        p[1].as_u64().expect("o") as usize,
                    )
                })
            })
            .collect();
        assert_eq!(f.offsets, offs, "{name} eval window {i} offsets");
    }
}

#[test]
fn features_match_transformers_run_qa() {
    let Some(a) = assets() else { return };
    let r = reference();
    check_against_hf(&cased(&a), &r, "bert-base-cased");
    check_against_hf(&minilm(&a), &r, "all-minilm-l6-v2");
}

fn long_example(a: &std::path::Path) -> QaExample {
    let r = reference();
    let ex = examples_of(&r);
    let mut e = ex
        .into_iter()
        .filter(|e| !e.answers.is_empty())
        .max_by_key(|e| e.context.len())
        .expect("examples");
    let _ = a;
    e.answers.truncate(1);
    e
}

fn context_tokens(f: &QaFeature) -> Vec<(usize, usize)> {
    f.offsets.iter().flatten().copied().collect()
}

#[test]
fn long_context_gives_overlapping_windows() {
    let Some(a) = assets() else { return };
    let tok = cased(&a);
    let ex = long_example(&a);
    let cfg = FeatureConfig {
        max_length: 96,
        stride: 24,
        pad_to_max_length: true,
    };
    let feats = QaPreprocessor::new(&tok, cfg)
        .expect("pre")
        .eval_features(std::slice::from_ref(&ex))
        .expect("features");
    assert!(feats.len() >= 3, "{} windows", feats.len());
    let all = tok.encode(ex.context.as_str(), false).expect("context");
    let mut covered = std::collections::BTreeSet::new();
    for w in feats.windows(2) {
        let (a, b) = (context_tokens(&w[0]), context_tokens(&w[1]));
        assert_eq!(
            &a[a.len() - cfg.stride..],
            &b[..cfg.stride],
            "consecutive windows share exactly `stride` context tokens"
        );
    }
    for f in &feats {
        assert_eq!(f.len(), cfg.max_length);
        assert_eq!(f.input_ids[0], 101);
        covered.extend(context_tokens(f));
    }
    // Every context token is in some window.
    assert_eq!(covered.len(), all.len());
}

#[test]
fn answer_positions_map_back_or_fall_to_cls() {
    let Some(a) = assets() else { return };
    let tok = minilm(&a);
    let ex = long_example(&a);
    let ans = ex.answers[0].clone();
    let cfg = FeatureConfig {
        max_length: 64,
        stride: 16,
        pad_to_max_length: true,
    };
    let pre = QaPreprocessor::new(&tok, cfg).expect("pre");
    let train = pre
        .train_features(std::slice::from_ref(&ex))
        .expect("train");
    let eval = pre.eval_features(std::slice::from_ref(&ex)).expect("eval");
    assert_eq!(train.len(), eval.len());
    let chars: Vec<char> = ex.context.chars().collect();
    let (mut inside, mut outside) = (0, 0);
    for (t, e) in train.iter().zip(&eval) {
        let (s, en) = t.positions.expect("positions");
        let ctx = context_tokens(e);
        let holds = ctx.first().is_some_and(|o| o.0 <= ans.start)
            && ctx
                .last()
                .is_some_and(|o| o.1 >= ans.start + ans.text.chars().count());
        if holds {
            inside += 1;
            let (cs, ce) = (
                e.offsets[s].expect("start").0,
                e.offsets[en].expect("end").1,
            );
            let text: String = chars[cs..ce].iter().collect();
            assert_eq!(text, ans.text);
        } else {
            outside += 1;
            assert_eq!((s, en), (0, 0), "answer outside the window -> CLS");
        }
    }
    assert!(inside >= 1 && outside >= 1, "{inside} in, {outside} out");
    // Unanswerable: CLS in every window.
    let mut un = ex.clone();
    un.answers.clear();
    for f in pre.train_features(&[un]).expect("train") {
        assert_eq!(f.positions, Some((0, 0)));
    }
    // A wrong answer offset is an error naming the example, not silent garbage.
    let mut bad = ex.clone();
    bad.answers[0].start += 1;
    let err = pre.train_features(&[bad]).expect_err("mismatch");
    assert!(err.to_string().contains(&ex.id), "{err}");
}

/// Logits that favour (s, e) in window `w`; everything else low.
fn logits_for(feats: &[QaFeature], w: usize, s: usize, e: usize) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut st: Vec<Vec<f32>> = feats
        .iter()
        .map(|f| (0..f.len()).map(|k| (k % 7) as f32 * 0.1).collect())
        .collect();
    let mut en = st.clone();
    st[w][s] = 8.0;
    en[w][e] = 7.0;
    (st, en)
}

#[test]
fn postprocessing_recovers_the_answer() {
    let Some(a) = assets() else { return };
    let tok = cased(&a);
    let ex = long_example(&a);
    let cfg = FeatureConfig {
        max_length: 96,
        stride: 24,
        pad_to_max_length: true,
    };
    let pre = QaPreprocessor::new(&tok, cfg).expect("pre");
    let train = pre.train_features(std::slice::from_ref(&ex)).expect("t");
    let eval = pre.eval_features(std::slice::from_ref(&ex)).expect("e");
    let w = train
        .iter()
        .position(|f| f.positions != Some((0, 0)))
        .expect("a window holds the answer");
    let (s, e) = train[w].positions.expect("p");
    let (st, en) = logits_for(&eval, w, s, e);
    let preds = postprocess_qa_predictions(
        std::slice::from_ref(&ex),
        &eval,
        &st,
        &en,
        &PostprocessConfig::default(),
    )
    .expect("post");
    assert_eq!(preds[0].text, ex.answers[0].text);
    assert!(preds[0].nbest.len() <= 20);
    let psum: f32 = preds[0].nbest.iter().map(|n| n.probability).sum();
    assert!((psum - 1.0).abs() < 1e-5);

    // v2: a strong CLS in every window makes the answer empty, with a positive diff.
    let (mut st2, mut en2) = (st.clone(), en.clone());
    for r in st2.iter_mut().chain(en2.iter_mut()) {
        r[0] = 20.0;
    }
    let v2 = PostprocessConfig {
        version_2_with_negative: true,
        ..Default::default()
    };
    let p2 = postprocess_qa_predictions(std::slice::from_ref(&ex), &eval, &st2, &en2, &v2)
        .expect("post v2");
    assert_eq!(p2[0].text, "");
    let diff = p2[0].null_score_diff.expect("diff");
    assert!((diff - (40.0 - 15.0)).abs() < 1e-4, "{diff}");
    // ... and without the CLS preference the span wins.
    let p3 = postprocess_qa_predictions(std::slice::from_ref(&ex), &eval, &st, &en, &v2)
        .expect("post v2");
    assert_eq!(p3[0].text, ex.answers[0].text);

    // The pipeline decoder finds the same span; its score is p_start * p_end.
    let refs: Vec<&QaFeature> = eval.iter().collect();
    let ans = pipeline_decode(&ex, &refs, &st, &en, &PipelineConfig::default()).expect("pipe");
    assert_eq!(ans.len(), 1);
    assert_eq!(ans[0].answer, ex.answers[0].text);
    assert!(
        ans[0].score > 0.5 && ans[0].score <= 1.0,
        "{}",
        ans[0].score
    );
    let top3 = pipeline_decode(
        &ex,
        &refs,
        &st,
        &en,
        &PipelineConfig {
            top_k: 3,
            handle_impossible_answer: true,
            ..Default::default()
        },
    )
    .expect("pipe");
    assert_eq!(top3.len(), 3);
    assert!(top3.windows(2).all(|p| p[0].score >= p[1].score));
}

/// pipeline_decode against transformers 4.57.6's pipeline("question-answering") on the
/// same per-window logits (tests/fixtures/qa_pipeline_hf.json, written by
/// tools/fixtures/make_pipeline_ref.py): windows, answer texts, character spans and scores.
#[test]
fn pipeline_decode_matches_transformers_pipeline() {
    let Some(a) = assets() else { return };
    let tok = minilm(&a);
    let p = root().join("tests/fixtures/qa_pipeline_hf.json");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(p).expect("fixture")).expect("json");
    let cfg = FeatureConfig {
        max_length: r["max_seq_len"].as_u64().expect("len") as usize,
        stride: r["doc_stride"].as_u64().expect("stride") as usize,
        pad_to_max_length: false,
    };
    let pre = QaPreprocessor::new(&tok, cfg).expect("pre");
    let cases = r["cases"].as_array().expect("cases");
    assert!(cases.len() >= 9);
    for (ci, c) in cases.iter().enumerate() {
        let ex = QaExample {
            id: c["id"].as_str().expect("id").into(),
            question: c["question"].as_str().expect("q").into(),
            context: c["context"].as_str().expect("c").into(),
            answers: vec![],
        };
        let feats = pre
            .eval_features(std::slice::from_ref(&ex))
            .expect("features");
        let windows = c["windows"].as_array().expect("windows");
        assert_eq!(feats.len(), windows.len(), "case {ci}: window count");
        let floats = |v: &Value| -> Vec<f32> {
            v.as_array()
                .expect("logits")
                .iter()
                .map(|x| x.as_f64().expect("f") as f32)
                .collect()
        };
        for (f, w) in feats.iter().zip(windows) {
            assert_eq!(
                f.input_ids,
                u32s(&w["input_ids"]),
                "case {ci}: window tokens"
            );
        }
        let st: Vec<Vec<f32>> = windows.iter().map(|w| floats(&w["start"])).collect();
        let en: Vec<Vec<f32>> = windows.iter().map(|w| floats(&w["end"])).collect();
        let s = &c["settings"];
        let mut pc = PipelineConfig::default();
        if let Some(k) = s["top_k"].as_u64() {
            pc.top_k = k as usize;
        }
        if let Some(h) = s["handle_impossible_answer"].as_bool() {
            pc.handle_impossible_answer = h;
        }
        if let Some(al) = s["align_to_words"].as_bool() {
            pc.align_to_words = al;
        }
        if let Some(m) = s["max_answer_len"].as_u64() {
            pc.max_answer_len = m as usize;
        }
        let refs: Vec<&QaFeature> = feats.iter().collect();
        let got = pipeline_decode(&ex, &refs, &st, &en, &pc).expect("decode");
        let want = c["answers"].as_array().expect("answers");
        assert_eq!(got.len(), want.len(), "case {ci}: number of answers");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.answer, w["answer"].as_str().expect("a"), "case {ci}");
            assert_eq!(
                (g.start as u64, g.end as u64),
                (
                    w["start"].as_u64().expect("s"),
                    w["end"].as_u64().expect("e")
                ),
                "case {ci}"
            );
            let ws = w["score"].as_f64().expect("score");
            assert!(
                (g.score as f64 - ws).abs() <= 1e-5 * ws.abs().max(1e-3),
                "case {ci}: score {} vs {ws}",
                g.score
            );
        }
    }
}

/// Every question of real SQuAD-format files (TyDi QA English, the allennlp SQuAD v2
/// sample with unanswerables) through the data loader and the train/eval features:
/// no errors, every answer token span covers its answer text (HF's token boundaries
/// may widen it, never cut it), unanswerables and windows without the answer at CLS.
#[test]
fn real_squad_files_through_features() {
    use fusebox::data::squad::{load_squad, SquadOptions};
    let Some(a) = assets() else { return };
    let tok = cased(&a);
    let pre = QaPreprocessor::new(&tok, FeatureConfig::default()).expect("pre");
    for file in ["qa/tydiqa-goldp-dev-en.json", "qa/allennlp-squad-v2.json"] {
        let load = load_squad(
            a.join(file),
            SquadOptions {
                skip_bad: true,
                ..Default::default()
            },
        )
        .expect("load");
        let examples: Vec<QaExample> = load.examples.iter().map(QaExample::from).collect();
        let train = pre.train_features(&examples).expect("train features");
        let eval = pre.eval_features(&examples).expect("eval features");
        assert_eq!(train.len(), eval.len(), "{file}");
        assert!(train.len() >= examples.len());
        let (mut spans, mut cls) = (0, 0);
        for (t, e) in train.iter().zip(&eval) {
            assert_eq!(t.input_ids, e.input_ids);
            let ex = &examples[t.example_index];
            let (s, en) = t.positions.expect("positions");
            if (s, en) == (t.cls_index, t.cls_index) {
                cls += 1;
                continue;
            }
            spans += 1;
            let (cs, ce) = (e.offsets[s].expect("ctx").0, e.offsets[en].expect("ctx").1);
            let text: String = ex.context.chars().skip(cs).take(ce - cs).collect();
            let ans = &ex.answers[0].text;
            assert!(
                text.contains(ans.trim()),
                "{file} {}: span {text:?} vs {ans:?}",
                ex.id
            );
        }
        eprintln!(
            "{file}: {} questions, {} windows, {spans} answer spans, {cls} at CLS",
            examples.len(),
            train.len()
        );
        assert!(spans > 0 && cls > 0, "{file}");
    }
}

/// postprocess_qa_predictions against utils_qa.py run on the same random logits over
/// the same windows (tests/fixtures/qa_features_hf.json "postprocess"): answers, n-best
/// texts, logits and probabilities, v2 null-score differences.
#[test]
fn postprocess_matches_utils_qa() {
    let Some(a) = assets() else { return };
    let r = reference();
    let cfg = FeatureConfig {
        max_length: r["max_length"].as_u64().expect("max") as usize,
        stride: r["stride"].as_u64().expect("stride") as usize,
        pad_to_max_length: true,
    };
    let examples = examples_of(&r);
    let eval = QaPreprocessor::new(&cased(&a), cfg)
        .expect("pre")
        .eval_features(&examples)
        .expect("eval");
    let pp = &r["postprocess"];
    let rows = |v: &Value| -> Vec<Vec<f32>> {
        v.as_array()
            .expect("rows")
            .iter()
            .map(|row| {
                row.as_array()
                    .expect("row")
                    .iter()
                    .map(|x| x.as_f64().expect("f") as f32)
                    .collect()
            })
            .collect()
    };
    let (st, en) = (rows(&pp["start_logits"]), rows(&pp["end_logits"]));
    let mut nulls = 0;
    for (key, v2) in [("v1", false), ("v2", true)] {
        let pc = PostprocessConfig {
            version_2_with_negative: v2,
            ..Default::default()
        };
        let preds = postprocess_qa_predictions(&examples, &eval, &st, &en, &pc).expect("post");
        let want = &pp[key];
        for p in &preds {
            assert_eq!(
                p.text,
                want["predictions"][&p.id].as_str().expect("t"),
                "{key} {}",
                p.id
            );
            let nb = want["nbest"][&p.id].as_array().expect("nbest");
            assert_eq!(p.nbest.len(), nb.len(), "{key} {}", p.id);
            for (g, w) in p.nbest.iter().zip(nb) {
                assert_eq!(g.text, w["text"].as_str().expect("t"), "{key} {}", p.id);
                for (x, y) in [
                    (g.start_logit, &w["start_logit"]),
                    (g.end_logit, &w["end_logit"]),
                    (g.probability, &w["probability"]),
                ] {
                    let y = y.as_f64().expect("f");
                    assert!(
                        (x as f64 - y).abs() <= 1e-5 * y.abs().max(1.0),
                        "{key} {x} {y}"
                    );
                }
            }
            if v2 {
                let d = want["null_diff"][&p.id].as_f64().expect("diff");
                let got = p.null_score_diff.expect("diff") as f64;
                assert!((got - d).abs() <= 1e-4 * d.abs().max(1.0), "{got} vs {d}");
                nulls += p.text.is_empty() as usize;
            }
        }
    }
    assert!(
        nulls > 0 && nulls < examples.len(),
        "v2 answers both ways: {nulls}"
    );
}
