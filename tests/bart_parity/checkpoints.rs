//! Checkpoints that HF cannot check for us: the tied embedding under every alias and
//! prefix, an untied head, Marian's position tables, and bad files refused by name (a
//! module of tests/bart_parity.rs).

use super::*;

/// A copy of fixture `name`'s directory whose weights are `edit`ed.
fn edited_copy(name: &str, tag: &str, edit: impl FnOnce(&mut BTreeMap<String, Tensor>)) -> PathBuf {
    let src = fixtures().join("models").join(name);
    let dir = tmp(tag);
    for f in ["config.json", "generation_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut w =
        safetensors_io::load(&src.join("model.safetensors"), DType::F32, Device::Cpu).unwrap();
    edit(&mut w);
    safetensors_io::save(&dir.join("model.safetensors"), &w, None).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    match BartForConditionalGeneration::load(dir, Device::Cpu, DType::F32) {
        Ok(_) => panic!("{} must be refused", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// The tied embedding stored under every alias transformers knows (and under the
/// aliases only, and without the `model.` prefix of a base-model file) loads as the
/// same tied model.
#[test]
fn tied_aliases_and_prefixes_load_as_one_embedding() {
    for (name, (model, io)) in models() {
        let want = eval_logits(&model, &io);
        let shared = "model.shared.weight";
        let aliases = [
            "model.encoder.embed_tokens.weight",
            "model.decoder.embed_tokens.weight",
            "lm_head.weight",
        ];
        let all = edited_copy(name, &format!("dup_{name}"), |w| {
            for a in aliases {
                w.insert(a.into(), w[shared].deep_clone().unwrap());
            }
        });
        let only = edited_copy(name, &format!("alias_{name}"), |w| {
            let t = w.remove(shared).unwrap();
            w.insert(aliases[1].into(), t);
        });
        let base = edited_copy(name, &format!("base_{name}"), |w| {
            let old = std::mem::take(w);
            for (k, t) in old {
                let k = k.strip_prefix("model.").map(str::to_string).unwrap_or(k);
                w.insert(k, t);
            }
        });
        for dir in [&all, &only, &base] {
            let m = BartForConditionalGeneration::load(dir, Device::Cpu, DType::F32).unwrap();
            assert!(m.lm_head_is_tied(), "{}", dir.display());
            assert_eq!(m.trainable().len(), model.trainable().len());
            assert_eq!(eval_logits(&m, &io), want, "{}", dir.display());
            std::fs::remove_dir_all(dir).ok();
        }
        // A base-model file without final_logits_bias: HF initialises it to zeros.
        let nobias = edited_copy(name, &format!("nobias_{name}"), |w| {
            w.remove("final_logits_bias");
        });
        let m = BartForConditionalGeneration::load(&nobias, Device::Cpu, DType::F32).unwrap();
        let saved = tmp(&format!("nobias_saved_{name}"));
        m.save(&saved).unwrap();
        let w = safetensors_io::load(&saved.join("model.safetensors"), DType::F32, Device::Cpu)
            .unwrap();
        assert!(f32s(&w["final_logits_bias"]).iter().all(|&x| x == 0.0));
        remove_dirs([nobias, saved]);
    }
}

/// A head that differs from the embedding is the model's own (transformers unties it at
/// load): trained, saved under `lm_head.weight` with `tie_word_embeddings: false`, and
/// reloaded the same.
#[test]
fn an_untied_head_is_kept_and_saved() {
    let Some((_, io)) = load("bart_tiny") else {
        return;
    };
    let dir = edited_copy("bart_tiny", "untied", |w| {
        let h: Vec<f32> = f32s(&w["model.shared.weight"])
            .iter()
            .map(|x| x * 0.5 + 0.01)
            .collect();
        let dims = w["model.shared.weight"].dims().to_vec();
        w.insert(
            "lm_head.weight".into(),
            Tensor::from_f32(h, dims, Device::Cpu).unwrap(),
        );
    });
    let m = BartForConditionalGeneration::load(&dir, Device::Cpu, DType::F32).unwrap();
    assert!(!m.lm_head_is_tied());
    assert!(m.trainable().iter().any(|(n, _)| n == "lm_head.weight"));
    let out = tmp("untied_saved");
    m.save(&out).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["tie_word_embeddings"], false);
    let back = BartForConditionalGeneration::load(&out, Device::Cpu, DType::F32).unwrap();
    assert!(!back.lm_head_is_tied());
    assert_eq!(eval_logits(&back, &io), eval_logits(&m, &io));
    remove_dirs([dir, out]);
}

/// Marian files may hold the sinusoidal tables (older transformers saved them): the
/// formula's table loads, any other table is refused by name.
#[test]
fn marian_position_tables_in_a_checkpoint() {
    let Some((model, io)) = load("marian_tiny") else {
        return;
    };
    let (n, d) = (model.config.max_position_embeddings, model.config.d_model);
    let table = fusebox::models::bart::sinusoidal_table(n, d);
    let names = [
        "model.encoder.embed_positions.weight",
        "model.decoder.embed_positions.weight",
    ];
    let with = edited_copy("marian_tiny", "marian_pos", |w| {
        for k in names {
            w.insert(
                k.into(),
                Tensor::from_f32(table.clone(), [n, d], Device::Cpu).unwrap(),
            );
        }
    });
    let m = BartForConditionalGeneration::load(&with, Device::Cpu, DType::F32).unwrap();
    assert_eq!(eval_logits(&m, &io), eval_logits(&model, &io));
    let mut bad = table.clone();
    bad[3 * d + 5] += 0.25;
    let wrong = edited_copy("marian_tiny", "marian_badpos", |w| {
        w.insert(
            names[1].into(),
            Tensor::from_f32(bad, [n, d], Device::Cpu).unwrap(),
        );
    });
    let e = load_err(&wrong);
    assert!(
        e.contains(names[1]) && e.contains("sinusoidal") && e.contains("row 3"),
        "{e}"
    );
    for dir in [with, wrong] {
        std::fs::remove_dir_all(dir).ok();
    }
}

/// Bad checkpoints are refused with the file, the field or tensor, and what was
/// expected.
#[test]
fn bad_checkpoints_are_clear_errors() {
    let Some(_) = load("bart_tiny") else {
        return;
    };
    let cfg_edit = |tag: &str, from: &str, to: &str| {
        let dir = edited_copy("bart_tiny", tag, |_| {});
        let p = dir.join("config.json");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{from}");
        std::fs::write(&p, text.replace(from, to)).unwrap();
        dir
    };
    let cases = [
        (
            cfg_edit("vocab", "\"vocab_size\": 99", "\"vocab_size\": 98"),
            vec!["config.json", "vocab_size", "model.shared.weight", "99"],
        ),
        (
            cfg_edit("layers", "\"decoder_layers\": 3", "\"decoder_layers\": 2"),
            vec!["decoder_layers", "3 layers"],
        ),
        (
            cfg_edit("ffn", "\"encoder_ffn_dim\": 37", "\"encoder_ffn_dim\": 40"),
            vec!["encoder_ffn_dim", "fc1.weight"],
        ),
        (
            cfg_edit(
                "maxpos",
                "\"max_position_embeddings\": 40",
                "\"max_position_embeddings\": 50",
            ),
            vec!["max_position_embeddings", "embed_positions", "40"],
        ),
        (
            cfg_edit(
                "act",
                "\"activation_function\": \"gelu\"",
                "\"activation_function\": \"mish\"",
            ),
            vec!["config.json", "activation_function", "mish"],
        ),
        (
            cfg_edit("t5", "\"model_type\": \"bart\"", "\"model_type\": \"t5\""),
            vec!["config.json", "model_type", "t5"],
        ),
        (
            cfg_edit(
                "prenorm",
                "\"model_type\": \"bart\"",
                "\"model_type\": \"bart\", \"normalize_before\": true",
            ),
            vec!["normalize_before"],
        ),
    ];
    for (dir, want) in cases {
        let e = load_err(&dir);
        for w in want {
            assert!(e.contains(w), "{}: {e:?} lacks {w:?}", dir.display());
        }
        std::fs::remove_dir_all(dir).ok();
    }
    let extra = edited_copy("bart_tiny", "extra", |w| {
        w.insert(
            "model.encoder.layer_norm.weight".into(),
            Tensor::from_f32(vec![1.0; 32], [32], Device::Cpu).unwrap(),
        );
    });
    let e = load_err(&extra);
    assert!(
        e.contains("unexpected tensor") && e.contains("model.encoder.layer_norm.weight"),
        "{e}"
    );
    let missing = edited_copy("bart_tiny", "missing", |w| {
        w.remove("model.decoder.layers.1.fc2.bias");
    });
    let e = load_err(&missing);
    assert!(
        e.contains("missing tensor") && e.contains("model.decoder.layers.1.fc2.bias"),
        "{e}"
    );
    let unshared = edited_copy("bart_tiny", "unshared", |w| {
        let t = w["model.shared.weight"].scale(2.0).unwrap();
        w.insert("model.decoder.embed_tokens.weight".into(), t);
    });
    let e = load_err(&unshared);
    assert!(
        e.contains("model.decoder.embed_tokens.weight") && e.contains("not supported"),
        "{e}"
    );
    remove_dirs([extra, missing, unshared]);
}
