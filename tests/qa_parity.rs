//! Parity of the BERT/DistilBERT QA models with transformers, f32 on the CPU.
//!
//! - Tiny random `DistilBertForQuestionAnswering` / `BertForQuestionAnswering` fixtures
//!   (tools/fixtures/make_fixtures.py: tests/fixtures/models/<name>/ + <name>_io.safetensors):
//!   start/end logits, loss, every parameter gradient, and one AdamW step fed the
//!   *stored* gradients (lr 1e-3, wd 0.01, no groups).
//! - A real pretrained encoder, all-MiniLM-L6-v2: last hidden states for 3 padded
//!   sentences against tests/fixtures/minilm_hidden.safetensors
//!   (tools/fixtures/make_minilm_ref.py).
//! - Save in HF layout and load back.
//!
//! Absent assets or fixtures skip with a message.

mod common;
use common::{adamw_step_on_stored_grads, assets, cuda_device, rel_l2, root as manifest};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fusebox::autograd::{backward, no_grad};
use fusebox::models::auto::load_qa_model;
use fusebox::models::bert::BertForQa;
use fusebox::models::qa::{QaBatch, QaModel};
use fusebox::nn::safetensors_io;
use fusebox::nn::Mode;
use fusebox::{DType, Device, Tensor};

fn load(path: &Path) -> BTreeMap<String, Tensor> {
    safetensors_io::load(path, DType::F32, Device::Cpu).expect("fixture")
}

/// max |a − b| / max(|b|_max, floor); returns (error, scale).
fn rel_err(a: &Tensor, b: &Tensor, what: &str) -> (f64, f64) {
    assert_eq!(a.dims(), b.dims(), "{what}: shape");
    let (x, y) = (a.to_vec_f64().expect("a"), b.to_vec_f64().expect("b"));
    let scale = y.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = x
        .iter()
        .zip(&y)
        .fold(0f64, |m, (p, q)| m.max((p - q).abs()));
    assert!(x.iter().all(|v| v.is_finite()), "{what}: non-finite values");
    (err, scale)
}

/// ~1e-5 of the tensor's largest value; tensors that are (structurally) zero in the
/// reference get an absolute 1e-6.
fn assert_close(a: &Tensor, b: &Tensor, rel: f64, what: &str) {
    let (err, scale) = rel_err(a, b, what);
    let tol = if scale < 1e-6 { 1e-6 } else { rel * scale };
    assert!(
        err <= tol,
        "{what}: max abs error {err:.3e} > {tol:.3e} (reference max {scale:.3e})"
    );
}

/// (model dir, io file) of each QA fixture found.
fn qa_fixtures() -> Vec<(String, PathBuf, PathBuf)> {
    let root = match std::env::var("FUSEBOX_QA_FIXTURES") {
        Ok(p) => PathBuf::from(p),
        Err(_) => manifest().join("tests/fixtures"),
    };
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root.join("models")) else {
        return out;
    };
    let mut dirs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    dirs.sort();
    for dir in dirs {
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        let io = root.join(format!("{name}_io.safetensors"));
        let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap_or_default();
        let qa = cfg.contains("\"distilbert\"") || cfg.contains("\"bert\"");
        if qa && io.exists() {
            out.push((name, dir, io));
        }
    }
    out
}

/// A fixture tensor by name, bare or under an `inputs.`/`outputs.` style prefix.
fn pick<'a>(io: &'a BTreeMap<String, Tensor>, name: &str) -> Option<&'a Tensor> {
    ["", "inputs.", "input.", "outputs.", "output."]
        .iter()
        .find_map(|p| io.get(&format!("{p}{name}")))
}

fn need<'a>(io: &'a BTreeMap<String, Tensor>, name: &str, fixture: &str) -> &'a Tensor {
    pick(io, name).unwrap_or_else(|| panic!("{fixture}: no tensor {name:?}"))
}

fn batch_from(io: &BTreeMap<String, Tensor>, fixture: &str) -> QaBatch {
    let ids = need(io, "input_ids", fixture).clone();
    let mask = pick(io, "attention_mask").cloned().unwrap_or_else(|| {
        ids.full_on_same(ids.shape().clone(), DType::I32, 1.0)
            .expect("mask")
    });
    QaBatch {
        input_ids: ids,
        attention_mask: mask,
        token_type_ids: pick(io, "token_type_ids").cloned(),
        start_positions: Some(need(io, "start_positions", fixture).clone()),
        end_positions: Some(need(io, "end_positions", fixture).clone()),
    }
}

#[test]
fn qa_fixtures_match_transformers() {
    let fixtures = qa_fixtures();
    if fixtures.is_empty() {
        eprintln!("skipped: no BERT/DistilBERT QA fixtures under tests/fixtures/models (tools/fixtures/make_fixtures.py)");
        return;
    }
    for (name, dir, io_path) in fixtures {
        let io = load(&io_path);
        let model = load_qa_model(&dir, Device::Cpu, DType::F32, 0).expect("model");
        let batch = batch_from(&io, &name);
        let (start, end) = model.forward(&batch, Mode::eval()).expect("forward");
        assert_close(
            &start,
            need(&io, "start_logits", &name),
            1e-5,
            &format!("{name} start_logits"),
        );
        assert_close(
            &end,
            need(&io, "end_logits", &name),
            1e-5,
            &format!("{name} end_logits"),
        );
        let loss = model.loss(&start, &end, &batch).expect("loss");
        assert_close(
            &loss,
            &need(&io, "loss", &name).reshape([1]).expect("loss"),
            1e-5,
            &format!("{name} loss"),
        );

        let grads = backward(&loss).expect("backward");
        let params = model.params().trainable();
        let (mut checked, mut worst) = (0, 0f64);
        for (pname, p) in &params {
            let Some(want) = io.get(&format!("grad.{pname}")) else {
                panic!("{name}: fixture has no grad.{pname}");
            };
            let got = grads
                .get(p)
                .unwrap_or_else(|| panic!("{name}: no gradient reached {pname}"));
            assert_close(got, want, 1e-5, &format!("{name} grad.{pname}"));
            let (err, scale) = rel_err(got, want, pname);
            if scale >= 1e-6 {
                worst = worst.max(err / scale);
            }
            checked += 1;
        }
        let n_ref = io.keys().filter(|k| k.starts_with("grad.")).count();
        assert_eq!(
            checked, n_ref,
            "{name}: every reference gradient has a parameter"
        );
        drop(grads);

        // One AdamW step from the stored gradients (torch.optim.AdamW, no groups).
        adamw_step_on_stored_grads(&name, &params, &io);
        for (pname, p) in &params {
            let want = &io[&format!("param_after.{pname}")];
            assert_close(p, want, 1e-5, &format!("{name} param_after.{pname}"));
        }
        eprintln!(
            "{name}: logits, loss, {checked} gradients (worst {worst:.1e} of the tensor's max) \
             and the AdamW step match"
        );
    }
}

#[test]
fn minilm_hidden_states_match_transformers() {
    let Some(a) = assets() else { return };
    let dir = a.join("models/all-minilm-l6-v2");
    let fx = load(&manifest().join("tests/fixtures/minilm_hidden.safetensors"));
    let model = BertForQa::load(&dir, Device::Cpu, DType::F32, 0).expect("MiniLM loads");
    let _g = no_grad();
    let h = model
        .encoder()
        .forward(
            &fx["input_ids"],
            &fx["attention_mask"],
            Some(&fx["token_type_ids"]),
            Mode::eval(),
        )
        .expect("encode");
    let (err, scale) = rel_err(&h, &fx["last_hidden_state"], "minilm hidden");
    eprintln!("MiniLM last hidden states: max abs error {err:.2e} (values up to {scale:.2})");
    assert!(
        err <= 1e-4 * scale.max(1.0),
        "MiniLM hidden states: max error {err:.3e} (max {scale:.3e})"
    );
    // The padded rows of the batch must not have changed the real tokens: the second
    // sentence alone gives the same hidden states on its real tokens.
    let mask = fx["attention_mask"].to_vec_i32().expect("mask");
    let l = fx["input_ids"].dims()[1];
    let n = mask[l..2 * l].iter().filter(|&&m| m != 0).count();
    assert!(n < l, "sentence 2 is padded in the batch");
    let ids = fx["input_ids"].to_vec_i32().expect("ids")[l..l + n].to_vec();
    let one = Tensor::from_i32(ids, [1, n], Device::Cpu).expect("ids");
    let ones = Tensor::from_i32(vec![1; n], [1, n], Device::Cpu).expect("mask");
    let h1 = model
        .encoder()
        .forward(&one, &ones, None, Mode::eval())
        .expect("encode one");
    let hb = h
        .narrow(0, 1, 1)
        .expect("row")
        .narrow(1, 0, n)
        .expect("real");
    assert_close(&h1, &hb, 1e-5, "padding does not leak into real tokens");
}

#[test]
fn save_in_hf_layout_and_load_back() {
    let Some(a) = assets() else { return };
    let dir = a.join("models/all-minilm-l6-v2");
    let model = BertForQa::load(&dir, Device::Cpu, DType::F32, 7).expect("load");
    let names: Vec<String> = model.params().named().into_iter().map(|(n, _)| n).collect();
    assert!(names
        .iter()
        .all(|n| n.starts_with("bert.") || n.starts_with("qa_outputs.")));
    assert!(!names
        .iter()
        .any(|n| n.contains("pooler") || n.contains("position_ids")));
    let out = std::env::temp_dir().join(format!("fusebox-qa-save-{}", std::process::id()));
    model.save(&out).expect("save");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).expect("cfg"))
            .expect("json");
    assert_eq!(cfg["architectures"][0], "BertForQuestionAnswering");
    assert_eq!(cfg["model_type"], "bert");
    assert_eq!(cfg["hidden_size"], 384);
    let back = load_qa_model(&out, Device::Cpu, DType::F32, 99).expect("reload");
    assert_eq!(back.hf_class(), "BertForQuestionAnswering");
    let ids =
        Tensor::from_i32(vec![101, 7592, 1010, 2026, 3899, 102], [1, 6], Device::Cpu).expect("ids");
    let batch = QaBatch {
        attention_mask: Tensor::from_i32(vec![1; 6], [1, 6], Device::Cpu).expect("m"),
        input_ids: ids,
        token_type_ids: None,
        start_positions: None,
        end_positions: None,
    };
    let _g = no_grad();
    let (s0, e0) = model.forward(&batch, Mode::eval()).expect("fwd");
    let (s1, e1) = back.forward(&batch, Mode::eval()).expect("fwd back");
    assert_eq!(s0.to_vec_f32().expect("s"), s1.to_vec_f32().expect("s"));
    assert_eq!(e0.to_vec_f32().expect("e"), e1.to_vec_f32().expect("e"));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn unsupported_configs_are_clear_errors() {
    let tmp = std::env::temp_dir().join(format!("fusebox-qa-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let cases = [
        (
            r#"{"model_type": "distilbert", "activation": "mish"}"#,
            "activation",
        ),
        (
            r#"{"model_type": "bert", "position_embedding_type": "relative_key"}"#,
            "position_embedding_type",
        ),
        (
            r#"{"model_type": "bert", "hidden_act": "mish"}"#,
            "hidden_act",
        ),
        (r#"{"model_type": "t5"}"#, "model_type"),
    ];
    for (cfg, field) in cases {
        std::fs::write(tmp.join("config.json"), cfg).expect("write");
        let err = load_qa_model(&tmp, Device::Cpu, DType::F32, 0)
            .err()
            .unwrap_or_else(|| panic!("{cfg} should fail"));
        assert!(err.to_string().contains(field), "{err}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

fn tiny_distilbert(
    dropout: f32,
    attention_dropout: f32,
) -> fusebox::models::distilbert::DistilBertForQa {
    use fusebox::models::distilbert::{DistilBertConfig, DistilBertForQa};
    let cfg: DistilBertConfig = serde_json::from_value(serde_json::json!({
        "model_type": "distilbert", "vocab_size": 50, "dim": 16, "n_layers": 2, "n_heads": 2,
        "hidden_dim": 32, "max_position_embeddings": 16, "dropout": dropout,
        "attention_dropout": attention_dropout, "qa_dropout": dropout
    }))
    .expect("config");
    DistilBertForQa::new(cfg, Device::Cpu, DType::F32, 3).expect("model")
}

fn tiny_batch() -> QaBatch {
    let ids: Vec<i32> = (0..20).map(|i| 1 + (i * 7) % 49).collect();
    let mut mask = vec![1; 20];
    mask[17..].iter_mut().for_each(|m| *m = 0);
    QaBatch {
        input_ids: Tensor::from_i32(ids, [2, 10], Device::Cpu).expect("ids"),
        attention_mask: Tensor::from_i32(mask, [2, 10], Device::Cpu).expect("mask"),
        token_type_ids: None,
        start_positions: Some(Tensor::from_i32(vec![2, 0], [2], Device::Cpu).expect("s")),
        end_positions: Some(Tensor::from_i32(vec![4, 0], [2], Device::Cpu).expect("e")),
    }
}

#[test]
fn dropout_is_seeded_and_off_in_eval() {
    let model = tiny_distilbert(0.3, 0.0);
    let b = tiny_batch();
    let _g = no_grad();
    let run = |m: Mode| {
        model
            .forward(&b, m)
            .expect("fwd")
            .0
            .to_vec_f32()
            .expect("v")
    };
    let (e1, e2) = (run(Mode::eval()), run(Mode::eval()));
    assert_eq!(e1, e2);
    let (t1, t1b, t2) = (
        run(Mode::train(1)),
        run(Mode::train(1)),
        run(Mode::train(2)),
    );
    assert_eq!(t1, t1b, "same seed, same masks");
    assert_ne!(t1, t2, "another seed, other masks");
    assert_ne!(t1, e1, "dropout is on in training");
}

#[test]
fn attention_dropout_is_seeded_and_reaches_gradients() {
    // Dropout only on the attention probabilities: same seed, same logits and gradients;
    // another seed, others; eval, none.
    let model = tiny_distilbert(0.0, 0.5);
    let b = tiny_batch();
    let run = |m: Mode| {
        let (s, e) = model.forward(&b, m).expect("fwd");
        let loss = model.loss(&s, &e, &b).expect("loss");
        let g = backward(&loss).expect("backward");
        let (_, w) = model
            .params()
            .trainable()
            .into_iter()
            .find(|(n, _)| n.ends_with("layer.0.attention.v_lin.weight"))
            .expect("v_lin");
        let gv = g.get(&w).expect("grad").to_vec_f32().expect("g");
        (s.to_vec_f32().expect("s"), gv)
    };
    let (a, b2, c, e) = (
        run(Mode::train(5)),
        run(Mode::train(5)),
        run(Mode::train(6)),
        run(Mode::eval()),
    );
    assert_eq!(a, b2, "same seed, same masks, same gradients");
    assert_ne!(a.0, c.0, "another seed, another mask");
    assert_ne!(a.1, c.1);
    assert_ne!(a.0, e.0, "no dropout in eval");
}

/// Relative error ‖a − b‖ / ‖b‖ (docs/ARCHITECTURE.md's GPU-vs-CPU measure).
fn norm_rel(a: &Tensor, b: &Tensor) -> f64 {
    rel_l2(&a.to_vec_f64().expect("a"), &b.to_vec_f64().expect("b"))
}

/// The same models on the GPU: MiniLM hidden states (f32 and f16) against transformers,
/// and a training step (dropout on) of a tiny DistilBERT: logits, loss and every
/// gradient against the CPU.
#[test]
fn gpu_matches_cpu_and_transformers() {
    let Some(gpu) = cuda_device("gpu_matches_cpu_and_transformers") else {
        return;
    };
    if let Some(a) = assets() {
        let fx = load(&manifest().join("tests/fixtures/minilm_hidden.safetensors"));
        let dir = a.join("models/all-minilm-l6-v2");
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F16, 1e-2)] {
            let model = BertForQa::load(&dir, gpu, dtype, 0).expect("MiniLM on the GPU");
            let _g = no_grad();
            let on = |t: &Tensor| t.to_device(gpu).expect("to gpu");
            let h = model
                .encoder()
                .forward(
                    &on(&fx["input_ids"]),
                    &on(&fx["attention_mask"]),
                    Some(&on(&fx["token_type_ids"])),
                    Mode::eval(),
                )
                .expect("encode")
                .to_dtype(DType::F32)
                .expect("f32")
                .to_device(Device::Cpu)
                .expect("host");
            let err = norm_rel(&h, &fx["last_hidden_state"]);
            eprintln!("MiniLM on CUDA {dtype}: relative error {err:.3e}");
            assert!(err <= tol, "MiniLM {dtype} on CUDA: {err:.3e} > {tol:.1e}");
        }
    }
    // Dropout on: the CPU and CUDA backends derive the same masks from the same seeds.
    let cpu = tiny_distilbert(0.1, 0.1);
    let b = tiny_batch();
    let (s, e) = cpu.forward(&b, Mode::train(1)).expect("cpu fwd");
    let loss = cpu.loss(&s, &e, &b).expect("loss");
    let g_cpu = backward(&loss).expect("cpu backward");
    let dir = std::env::temp_dir().join(format!("fusebox-gpu-tiny-{}", std::process::id()));
    cpu.save(&dir).expect("save");
    let model = load_qa_model(&dir, gpu, DType::F32, 0).expect("tiny on GPU");
    let on = |t: &Option<Tensor>| t.as_ref().map(|t| t.to_device(gpu).expect("gpu"));
    let bg = QaBatch {
        input_ids: b.input_ids.to_device(gpu).expect("gpu"),
        attention_mask: b.attention_mask.to_device(gpu).expect("gpu"),
        token_type_ids: None,
        start_positions: on(&b.start_positions),
        end_positions: on(&b.end_positions),
    };
    let (sg, eg) = model.forward(&bg, Mode::train(1)).expect("gpu fwd");
    let lg = model.loss(&sg, &eg, &bg).expect("gpu loss");
    let g_gpu = backward(&lg).expect("gpu backward");
    let host = |t: &Tensor| t.to_device(Device::Cpu).expect("host");
    assert!(norm_rel(&host(&sg), &s) <= 1e-5, "start logits");
    assert!(norm_rel(&host(&lg), &loss) <= 1e-5, "loss");
    let gpu_params: BTreeMap<String, Tensor> = model.params().trainable().into_iter().collect();
    for (name, p) in cpu.params().trainable() {
        let want = g_cpu.get(&p).expect("cpu grad");
        let got = host(g_gpu.get(&gpu_params[&name]).expect("gpu grad"));
        assert_close(&got, want, 1e-4, &format!("{name}: GPU grad"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bare base-model checkpoint (no `distilbert.` prefix, no QA head, TF-era
/// `LayerNorm.gamma/beta` names, an integer `position_ids` buffer) loads into the same
/// encoder.
#[test]
fn bare_and_legacy_checkpoint_names_load() {
    let model = tiny_distilbert(0.0, 0.0);
    let dir = std::env::temp_dir().join(format!("fusebox-bare-{}", std::process::id()));
    model.save(&dir).expect("save");
    let file = dir.join("model.safetensors");
    let mut renamed = BTreeMap::new();
    for (name, t) in load(&file) {
        if name.starts_with("qa_outputs") {
            continue;
        }
        let name = name.trim_start_matches("distilbert.").to_string();
        let name = name
            .replace("LayerNorm.weight", "LayerNorm.gamma")
            .replace("LayerNorm.bias", "LayerNorm.beta");
        renamed.insert(name, t);
    }
    renamed.insert(
        "embeddings.position_ids".into(),
        Tensor::from_i32((0..16).collect(), [1, 16], Device::Cpu).expect("ids"),
    );
    safetensors_io::save(&file, &renamed, None).expect("rewrite");
    let back = load_qa_model(&dir, Device::Cpu, DType::F32, 0).expect("bare loads");
    let mut names: Vec<String> = back.params().named().into_iter().map(|(n, _)| n).collect();
    names.sort();
    let mut want: Vec<String> = model.params().named().into_iter().map(|(n, _)| n).collect();
    want.sort();
    assert_eq!(names, want, "same parameter names after adoption");
    let b = tiny_batch();
    let _g = no_grad();
    let h0 = model
        .encoder()
        .forward(&b.input_ids, &b.attention_mask, None, Mode::eval())
        .expect("h0");
    let enc = fusebox::models::distilbert::DistilBertForQa::load(&dir, Device::Cpu, DType::F32, 0)
        .expect("load");
    let h1 = enc
        .encoder()
        .forward(&b.input_ids, &b.attention_mask, None, Mode::eval())
        .expect("h1");
    assert_eq!(h0.to_vec_f32().expect("h0"), h1.to_vec_f32().expect("h1"));
    // A checkpoint missing an encoder tensor is an error naming it, not a random layer.
    let mut partial = renamed.clone();
    partial.remove("transformer.layer.1.ffn.lin2.weight");
    safetensors_io::save(&file, &partial, None).expect("rewrite");
    let err = load_qa_model(&dir, Device::Cpu, DType::F32, 0)
        .err()
        .expect("missing tensor must fail");
    assert!(
        err.to_string()
            .contains("transformer.layer.1.ffn.lin2.weight"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
