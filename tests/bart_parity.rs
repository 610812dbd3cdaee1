//! BART and Marian parity with Hugging Face on the tiny fixtures of tests/fixtures (made by
//! tools/fixtures/make_fixtures_bart.py with transformers 5.25): logits, loss with -100
//! labels, every parameter gradient, one AdamW step fed the stored gradients, and
//! `generate()` (greedy, beam, the models' own settings) through the K/V cache — all f32
//! on the CPU. Plus what HF
//! cannot give us directly: the cached decoder equals the full one, checkpoints load
//! however the tied embedding is stored (`model.` prefix or not, aliases once or several
//! times, an untied head, Marian's position tables) and save as `save_pretrained` does,
//! dropout is seeded, and bad checkpoints are refused by name.
//!
//! Tolerances follow docs/ARCHITECTURE.md: 1e-5 of each tensor's largest magnitude (1e-4
//! for the smallest tensors), an absolute floor for gradients that are exactly zero.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fusebox::autograd::no_grad;
use fusebox::models::bart::{BartConfig, BartForConditionalGeneration, Family};
use fusebox::models::generation_config::GenerateConfig;
use fusebox::models::seq2seq::Seq2SeqLm;
use fusebox::nn::safetensors_io;
use fusebox::nn::Mode;
use fusebox::tasks::generate::{generate, Generated};
use fusebox::{DType, Device, Tensor};

mod common;
use common::parity::{
    self, check_adamw_step, check_cached_decoding_on_fixture, check_logits_loss_grads,
    check_logits_loss_grads_l2, check_seeded_dropout, check_shift_right, check_trains, eval_logits,
    eval_loss, f32s, fixture_models, fixtures, load_fixture, rows, training_batch,
};
use common::{cuda_device, rel_l2_f32 as rel_l2};

#[path = "bart_parity/checkpoints.rs"]
mod checkpoints;

const MODELS: [&str; 2] = ["bart_tiny", "marian_tiny"];

type Fixture = parity::Fixture<BartForConditionalGeneration>;

/// The model and its reference tensors, or `None` (printed) when the fixtures are absent.
fn load_on(name: &str, dev: Device) -> Option<Fixture> {
    load_fixture(name, dev, "bart", BartForConditionalGeneration::load)
}

fn load(name: &str) -> Option<Fixture> {
    load_on(name, Device::Cpu)
}

fn models() -> impl Iterator<Item = (&'static str, Fixture)> {
    fixture_models(&MODELS, load)
}

#[test]
fn forward_loss_and_gradients_match_transformers() {
    for (name, (model, io)) in models() {
        let (ids, mask, labels) = (&io["input_ids"], &io["attention_mask"], &io["labels"]);
        check_shift_right(name, &model, &io, "shift_tokens_right");
        let (loss, logits) = model.loss(ids, Some(mask), labels, Mode::Eval).unwrap();
        check_logits_loss_grads(name, &loss, &logits, &model.trainable(), &io);
    }
}

#[test]
fn adamw_step_from_stored_gradients_matches_torch() {
    for (name, (model, io)) in models() {
        check_adamw_step(name, &model.trainable(), &io);
    }
}

/// Teacher-forcing the decoder one token at a time through the K/V cache gives the full
/// decoder's logits at every position (positions, cache growth, final_logits_bias).
#[test]
fn cached_decoding_equals_full_decoder() {
    for (name, (model, io)) in models() {
        check_cached_decoding_on_fixture(name, &model, &eval_logits(&model, &io), &io);
    }
}

/// `generate()` with every logits processor off: `num_beams` beams, `new_tokens` at
/// most, the model's special ids (the fixture's plain settings).
fn plain(
    model: &BartForConditionalGeneration,
    num_beams: usize,
    new_tokens: usize,
) -> GenerateConfig {
    GenerateConfig {
        num_beams,
        max_new_tokens: Some(new_tokens),
        ..GenerateConfig::for_model(model)
    }
}

fn run_generate(
    model: &BartForConditionalGeneration,
    io: &BTreeMap<String, Tensor>,
    cfg: &GenerateConfig,
) -> Generated {
    generate(model, &io["input_ids"], Some(&io["attention_mask"]), cfg).unwrap()
}

fn greedy(model: &BartForConditionalGeneration, io: &BTreeMap<String, Tensor>) -> Vec<Vec<i32>> {
    let new_tokens = io["generate.greedy"].dims()[1] - 1;
    run_generate(model, io, &plain(model, 1, new_tokens)).sequences
}

/// Greedy and 3-beam search with the plain settings, and `generate()` with no arguments
/// (the fixture's generation_config.json: bart-large-cnn's or opus-mt's settings), token
/// for token, `sequences_scores` to 1e-5. (tests/generate_parity.rs varies the settings.)
#[test]
fn generate_matches_transformers() {
    for (name, (model, io)) in models() {
        assert_eq!(
            greedy(&model, &io),
            rows(&io["generate.greedy"]),
            "{name}: greedy"
        );
        let new_tokens = io["generate.beam"].dims()[1] - 1;
        for (cfg, key) in [
            (plain(&model, 3, new_tokens), "generate.beam"),
            (model.generation_config().clone(), "generate.config"),
        ] {
            let got = run_generate(&model, &io, &cfg);
            assert_eq!(got.sequences, rows(&io[key]), "{name}: {key}");
            let want = f32s(&io[&format!("{key}_scores")]);
            let scores = got.scores.expect("beam scores");
            assert!(
                rel_l2(&scores, &want) < 1e-5,
                "{name}: {key} scores {scores:?} vs {want:?}"
            );
        }
    }
}

/// What `save_pretrained` writes: the same tensor names (no aliases, no Marian position
/// tables, `final_logits_bias`), a config.json and generation_config.json transformers
/// reads back; and the reload computes the same logits.
#[test]
fn save_and_reload_round_trip() {
    for (name, (model, io)) in models() {
        let dir = tmp(&format!("save_{name}"));
        model.save(&dir).unwrap();
        let hf = fixtures().join("models").join(name);
        let names = |d: &Path| safetensors_io::tensor_names(&d.join("model.safetensors")).unwrap();
        let (mut ours, mut theirs) = (names(&dir), names(&hf));
        ours.sort();
        theirs.sort();
        assert_eq!(
            ours, theirs,
            "{name}: saved tensor names vs save_pretrained's"
        );
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let class = model.family().class();
        assert_eq!(cfg["architectures"], serde_json::json!([class]), "{name}");
        assert_eq!(cfg["tie_word_embeddings"], true, "{name}");
        let gen = |d: &Path| -> serde_json::Value {
            serde_json::from_str(
                &std::fs::read_to_string(d.join("generation_config.json")).unwrap(),
            )
            .unwrap()
        };
        assert_eq!(
            gen(&dir),
            gen(&hf),
            "{name}: generation_config.json carried over"
        );
        let back = BartForConditionalGeneration::load(&dir, Device::Cpu, DType::F32).unwrap();
        assert!(back.lm_head_is_tied());
        assert_eq!(
            eval_logits(&back, &io),
            eval_logits(&model, &io),
            "{name}: reloaded logits"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// Removes the scratch directories `dirs` (and what they hold), ignoring any error.
fn remove_dirs<const N: usize>(dirs: [PathBuf; N]) {
    for d in dirs {
        std::fs::remove_dir_all(d).ok();
    }
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fusebox_bart_{}_{tag}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// HF applies dropout only in training; ours is seeded, so a training forward is
/// reproducible, differs from eval and from another seed, and each kind of dropout
/// (residual, attention probabilities, activation) is drawn.
#[test]
fn dropout_is_seeded_and_training_only() {
    let Some((model, io)) = load("marian_tiny") else {
        return;
    };
    let (ids, mask, labels) = (&io["input_ids"], &io["attention_mask"], &io["labels"]);
    let run = |m: &BartForConditionalGeneration, mode: Mode| {
        let _g = no_grad();
        m.loss(ids, Some(mask), labels, mode)
            .unwrap()
            .0
            .to_scalar()
            .unwrap()
    };
    assert_eq!(
        run(&model, Mode::Eval),
        run(&model, Mode::Train { seed: 1 }),
        "rates 0"
    );
    let rates = [
        ("dropout", [0.2, 0.0, 0.0]),
        ("attention_dropout", [0.0, 0.2, 0.0]),
        ("activation_dropout", [0.0, 0.0, 0.2]),
    ];
    let mut eval = None;
    for (what, [p, pa, pact]) in rates {
        let mut cfg = model.config.clone();
        (cfg.dropout, cfg.attention_dropout, cfg.activation_dropout) = (p, pa, pact);
        // The same seed draws the same weights whatever the rates.
        let m = BartForConditionalGeneration::new_random(cfg, Device::Cpu, DType::F32, 5).unwrap();
        let e = run(&m, Mode::Eval);
        assert_eq!(
            *eval.get_or_insert(e),
            e,
            "{what}: evaluation has no dropout"
        );
        check_seeded_dropout(what, &m, &io, e, |mode| run(&m, mode));
    }
}

/// A fresh model of each family (HF init, dropout on) trains: a few AdamW steps on one
/// batch lower its eval loss; it saves tied and reloads to the same loss.
#[test]
fn random_models_train_save_and_reload() {
    for (model_type, act, scale) in [("bart", "gelu", false), ("marian", "swish", true)] {
        let cfg = BartConfig::from_json_str(
            &format!(
                r#"{{"model_type": "{model_type}", "vocab_size": 50, "d_model": 16,
                    "encoder_layers": 1, "decoder_layers": 2, "encoder_attention_heads": 4,
                    "decoder_attention_heads": 2, "encoder_ffn_dim": 24, "decoder_ffn_dim": 20,
                    "max_position_embeddings": 64, "activation_function": "{act}",
                    "scale_embedding": {scale}, "pad_token_id": 1, "decoder_start_token_id": 1,
                    "eos_token_id": 2, "forced_eos_token_id": 2, "dropout": 0.1,
                    "attention_dropout": 0.1, "activation_dropout": 0.1}}"#
            ),
            "test config",
        )
        .unwrap();
        let model =
            BartForConditionalGeneration::new_random(cfg, Device::Cpu, DType::F32, 7).unwrap();
        assert_eq!(
            model.family(),
            if model_type == "bart" {
                Family::Bart
            } else {
                Family::Marian
            }
        );
        let batch = training_batch(3);
        let after = check_trains(model_type, &model, &batch);
        let dir = tmp(&format!("random_{model_type}"));
        model.save(&dir).unwrap();
        let back = BartForConditionalGeneration::load(&dir, Device::Cpu, DType::F32).unwrap();
        assert!(back.lm_head_is_tied());
        assert_eq!(eval_loss(&back, &batch), after, "{model_type}: reloaded");
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// On a CUDA device: the fixtures in f32 (logits, loss, gradients, greedy tokens through
/// the cache) and an f16 forward. Skips without a GPU.
#[test]
fn gpu_matches_transformers() {
    let Some(dev) = cuda_device("gpu_matches_transformers") else {
        return;
    };
    for name in MODELS {
        let Some((model, io)) = load_on(name, dev) else {
            continue;
        };
        let what = format!("{name} on {dev:?}");
        let (ids, mask, labels) = (&io["input_ids"], &io["attention_mask"], &io["labels"]);
        let (loss, logits) = model.loss(ids, Some(mask), labels, Mode::Eval).unwrap();
        check_logits_loss_grads_l2(&what, (&loss, &logits), &model.trainable(), &io);
        let want = rows(&io["generate.greedy"]);
        assert_eq!(greedy(&model, &io), want, "{what}: greedy");
        let dir = fixtures().join("models").join(name);
        let half = BartForConditionalGeneration::load(&dir, dev, DType::F16).unwrap();
        let _g = no_grad();
        let l16 = half
            .forward(ids, Some(mask), &io["decoder_input_ids"], Mode::Eval)
            .unwrap();
        let r = rel_l2(&f32s(&l16), &f32s(&io["logits"]));
        assert!(r < 1e-2, "{what}: f16 logits rel L2 {r:e}");
    }
}
