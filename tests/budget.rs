//! The VRAM planner against the byte tracker (activation checkpointing against the plain
//! backward in budget/checkpointing.rs, in-place gradient accumulation in
//! budget/accumulation.rs, fp16 on the CPU in budget/fp16.rs, Adafactor in
//! budget/adafactor.rs, `fit`, the CUDA-target plans and `train --plan` in
//! budget/fit_and_cuda.rs, the users' table of models at real size in budget/table.rs,
//! the CUDA memory cap in budget/cap.rs). The planner runs one real step on the meta
//! device; each test runs the same step on the CPU backend and holds the plan to the
//! tracker's count to the byte. The CPU counters are process-global, so every CPU measurement takes one lock
//! (meta counts per thread and needs none).

use std::sync::Mutex;

use fusebox::models::bart::{BartConfig, BartForConditionalGeneration};
use fusebox::models::bert::BertConfig;
use fusebox::models::distilbert::{DistilBertConfig, DistilBertForQa};
use fusebox::models::encoder::QaModel;
use fusebox::models::step::{ModelConfig, ModelSource};
use fusebox::models::t5::{T5Config, T5ForConditionalGeneration};
use fusebox::optim::{AdafactorConfig, OptimConfig};
use fusebox::plan::{fit, measure, predict, Measured, Plan, Workload};
use fusebox::shape::Target;
use fusebox::shape::{DType, Device};

#[path = "budget/accumulation.rs"]
mod accumulation;
#[path = "budget/adafactor.rs"]
mod adafactor;
#[path = "budget/cap.rs"]
mod cap;
#[path = "budget/checkpointing.rs"]
mod checkpointing;
#[path = "budget/fit_and_cuda.rs"]
mod fit_and_cuda;
#[path = "budget/fp16.rs"]
mod fp16;
#[path = "budget/matmul.rs"]
mod matmul;
#[path = "budget/table.rs"]
mod table;

static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn distilbert_cfg(dim: usize, layers: usize, vocab: usize) -> DistilBertConfig {
    distilbert_cfg_pos(dim, layers, vocab, false)
}

fn distilbert_cfg_pos(dim: usize, layers: usize, vocab: usize, sinus: bool) -> DistilBertConfig {
    serde_json::from_value(serde_json::json!({
        "model_type": "distilbert", "vocab_size": vocab, "dim": dim, "n_layers": layers,
        "n_heads": 2, "hidden_dim": 4 * dim, "max_position_embeddings": 512,
        "dropout": 0.1, "attention_dropout": 0.1, "qa_dropout": 0.1,
        "sinusoidal_pos_embds": sinus
    }))
    .expect("config")
}

fn t5_cfg(vocab: usize, d_model: usize, layers: usize, gated: bool) -> T5Config {
    let ff = if gated { "gated-gelu" } else { "relu" };
    T5Config::from_json_str(
        &format!(
            r#"{{"vocab_size": {vocab}, "d_model": {d_model}, "d_kv": {}, "d_ff": {},
                "num_layers": {layers}, "num_decoder_layers": {layers}, "num_heads": 4,
                "dropout_rate": 0.1, "feed_forward_proj": "{ff}"}}"#,
            d_model / 4,
            2 * d_model
        ),
        "test config",
    )
    .expect("t5 config")
}

/// A small BART (learned positions, gelu) or Marian (sinusoidal, swish, scaled
/// embeddings) with every dropout on.
fn bart_cfg(model_type: &str, vocab: usize, d_model: usize, layers: usize) -> BartConfig {
    let (act, scale) = if model_type == "marian" {
        ("swish", true)
    } else {
        ("gelu", false)
    };
    BartConfig::from_json_str(
        &format!(
            r#"{{"model_type": "{model_type}", "vocab_size": {vocab}, "d_model": {d_model},
                "encoder_layers": {layers}, "decoder_layers": {layers},
                "encoder_attention_heads": 4, "decoder_attention_heads": 4,
                "encoder_ffn_dim": {ff}, "decoder_ffn_dim": {ff},
                "max_position_embeddings": 128, "activation_function": "{act}",
                "scale_embedding": {scale}, "pad_token_id": 1, "decoder_start_token_id": 1,
                "eos_token_id": 2, "forced_eos_token_id": 2, "dropout": 0.1,
                "attention_dropout": 0.1, "activation_dropout": 0.1}}"#,
            ff = 2 * d_model
        ),
        "test config",
    )
    .expect("bart config")
}

fn cpu_work(b: usize, l: usize, lt: usize, ckpt: bool) -> Workload {
    Workload {
        micro_batch: b,
        grad_accum: 1,
        seq_len: l,
        tgt_len: lt,
        dtype: DType::F32,
        checkpointing: ckpt,
        target: Target::Cpu,
        infer: false,
        optim: OptimConfig::default(),
    }
}

fn distilbert(cfg: DistilBertConfig) -> ModelSource {
    ModelSource::config(ModelConfig::DistilBert(cfg))
}

fn t5(cfg: T5Config) -> ModelSource {
    ModelSource::config(ModelConfig::T5(cfg))
}

/// The plan of `work` (one step on the meta device) against the same step run on the
/// CPU backend: every measured part equal to the byte, and the plan's tensor peak their
/// sum (weights, optimizer state, the step's peak above them). Returns the CPU's count.
fn exact(what: &str, source: &ModelSource, work: &Workload) -> Measured {
    // Under the lock, meta too: building a model reads its config (and a checkpoint's
    // header) on the CPU, which must not land inside another test's CPU measurement.
    let _l = lock();
    let cpu = measure(source, work, Device::Cpu).expect("cpu step");
    let meta = measure(source, work, Device::Meta(Target::Cpu)).expect("meta step");
    let plan = predict(source, work, work.micro_batch * work.grad_accum).expect("plan");
    eprintln!(
        "{what}: weights {} optimizer {} step {} saved {} (cpu) / plan tensor peak {}",
        cpu.weights, cpu.optimizer, cpu.step, cpu.saved, plan.tensor_peak
    );
    assert_eq!(meta, cpu, "{what}: meta device vs CPU");
    assert_eq!(
        plan.tensor_peak,
        cpu.weights + cpu.optimizer + cpu.step,
        "{what}: {}",
        plan.table()
    );
    assert_eq!(
        plan.peak_bytes, plan.tensor_peak,
        "no CUDA terms on the CPU"
    );
    assert!(cpu.step > 0 && cpu.weights > 0, "{what}: nothing measured");
    cpu
}

#[test]
fn distilbert_prediction_matches_the_tracker() {
    let (b, l, vocab) = (4, 128, 1000);
    // The fixed (sinusoidal) position table: weights held, no gradient or AdamW state.
    for (ckpt, sinus) in [(false, false), (true, false), (false, true)] {
        let src = distilbert(distilbert_cfg_pos(128, 2, vocab, sinus));
        exact(
            &format!("distilbert ckpt={ckpt} sinusoidal={sinus}"),
            &src,
            &cpu_work(b, l, 0, ckpt),
        );
    }
    // Two micro-batches: the first one's gradients and loss live through the second.
    let src = distilbert(distilbert_cfg(64, 2, vocab));
    let work = Workload {
        grad_accum: 2,
        ..cpu_work(2, 64, 0, false)
    };
    exact("distilbert accumulation 2", &src, &work);
}

#[test]
fn bert_prediction_matches_the_tracker() {
    let (b, l, vocab) = (2, 96, 300);
    for ckpt in [false, true] {
        let cfg: BertConfig = serde_json::from_value(serde_json::json!({
            "model_type": "bert", "vocab_size": vocab, "hidden_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
            "max_position_embeddings": 128, "type_vocab_size": 2, "pad_token_id": 0
        }))
        .expect("bert config");
        let src = ModelSource::config(ModelConfig::Bert(cfg));
        exact(&format!("bert ckpt={ckpt}"), &src, &cpu_work(b, l, 0, ckpt));
    }
}

#[test]
fn t5_prediction_matches_the_tracker() {
    let (b, ls, lt, vocab) = (4, 64, 16, 512);
    for gated in [false, true] {
        for ckpt in [false, true] {
            let src = t5(t5_cfg(vocab, 64, 2, gated));
            exact(
                &format!("t5 gated={gated} ckpt={ckpt}"),
                &src,
                &cpu_work(b, ls, lt, ckpt),
            );
        }
    }
}

#[test]
fn bart_and_marian_predictions_match_the_tracker() {
    let (b, ls, lt, vocab) = (4, 64, 16, 512);
    for kind in ["bart", "marian"] {
        for ckpt in [false, true] {
            let src = ModelSource::config(ModelConfig::Bart(bart_cfg(kind, vocab, 64, 2)));
            exact(
                &format!("{kind} ckpt={ckpt}"),
                &src,
                &cpu_work(b, ls, lt, ckpt),
            );
        }
        let src = ModelSource::config(ModelConfig::Bart(bart_cfg(kind, vocab, 64, 2)));
        let infer = Workload {
            infer: true,
            ..cpu_work(b, ls, lt, false)
        };
        exact(&format!("{kind} infer"), &src, &infer);
    }
    // From a saved directory: the planner reads the config and the safetensors header.
    let dir = std::env::temp_dir().join(format!("fusebox-budget-bart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let l = lock();
    let m = BartForConditionalGeneration::new_random(
        bart_cfg("marian", 200, 32, 2),
        Device::Cpu,
        DType::F32,
        3,
    )
    .expect("marian");
    m.save(&dir).expect("save");
    drop((m, l));
    let src = ModelSource::dir(&dir).expect("marian dir");
    assert_eq!(src.config.name(), "Marian");
    exact("marian from a checkpoint", &src, &cpu_work(2, 24, 8, true));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A saved checkpoint directory: the planner reads its config and safetensors header
/// (no weights) and plans the model the CPU loads from it.
#[test]
fn checkpoint_directories_plan_from_their_header() {
    let dir = std::env::temp_dir().join(format!("fusebox-budget-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // CPU buffers, so under the lock like every CPU measurement.
    let l = lock();
    let qa = DistilBertForQa::new(distilbert_cfg(64, 2, 300), Device::Cpu, DType::F32, 3)
        .expect("model");
    qa.save(&dir.join("qa")).expect("save qa");
    drop(qa);
    let t = T5ForConditionalGeneration::new_random(
        t5_cfg(200, 32, 2, true),
        Device::Cpu,
        DType::F32,
        3,
    )
    .expect("t5");
    t.save(&dir.join("t5")).expect("save t5");
    drop((t, l));
    let qa = ModelSource::dir(&dir.join("qa")).expect("qa dir");
    exact(
        "distilbert from a checkpoint",
        &qa,
        &cpu_work(2, 48, 0, false),
    );
    let t5 = ModelSource::dir(&dir.join("t5")).expect("t5 dir");
    exact("t5 from a checkpoint", &t5, &cpu_work(2, 24, 8, true));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Inference (`bench --mode infer`: the forward under no_grad, T5 with its loss): weights
/// and the forward's transients only.
#[test]
fn inference_prediction_matches_the_tracker() {
    let infer = |b, l, lt, ckpt| Workload {
        infer: true,
        ..cpu_work(b, l, lt, ckpt)
    };
    // Small widths hide a local held too long behind a bigger transient elsewhere, so
    // the base DistilBERT sizes too (2 layers, batch 2 × 96).
    let base_cfg: DistilBertConfig =
        serde_json::from_value(serde_json::json!({ "n_layers": 2 })).expect("config");
    let cases = [
        (distilbert_cfg(128, 2, 1000), 4, 128, false),
        (distilbert_cfg(128, 2, 1000), 4, 128, true),
        (base_cfg, 2, 96, false),
    ];
    for (cfg, b, l, ckpt) in cases {
        exact(
            &format!("distilbert infer ckpt={ckpt}"),
            &distilbert(cfg),
            &infer(b, l, 0, ckpt),
        );
    }
    for gated in [false, true] {
        let src = t5(t5_cfg(512, 64, 2, gated));
        exact(
            &format!("t5 infer gated={gated}"),
            &src,
            &infer(4, 64, 16, false),
        );
        let plan = predict(&src, &infer(4, 64, 16, false), 4).expect("plan");
        assert!(
            !plan.components.iter().any(|c| c.0.contains("AdamW")),
            "no optimizer state in an inference plan"
        );
    }
}

fn t4_work(ckpt: bool) -> Workload {
    Workload {
        micro_batch: 1,
        grad_accum: 1,
        seq_len: 384,
        tgt_len: 0,
        dtype: DType::F16,
        checkpointing: ckpt,
        target: Target::Cuda,
        infer: false,
        optim: OptimConfig::default(),
    }
}

fn default_distilbert() -> ModelSource {
    distilbert(serde_json::from_str("{}").expect("defaults"))
}

/// Default DistilBERT in fp16 on a T4, 8 rows of 384 tokens.
fn t4_distilbert_b8() -> (ModelSource, Workload) {
    let work = Workload {
        micro_batch: 8,
        ..t4_work(false)
    };
    (default_distilbert(), work)
}
