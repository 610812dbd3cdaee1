//! The workloads behind the `bench` binary: one fixed random batch, timed training steps
//! (forward, backward, clip, AdamW — the same step as tools/torch_baseline.py) or
//! inference forwards, with tokens/s, ms/step (median, p90), peak memory, a per-op time
//! table (profile.rs) with each op's roofline and the sums per category (roofline.rs,
//! against peaks.rs), and MFU against the card's fp16 tensor peak.

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use crate::autograd::no_grad;
use crate::backend::tracker;
use crate::error::{Error, Result};
use crate::models::auto::load_qa_model;
use crate::models::distilbert::{DistilBertConfig, DistilBertForQa};
use crate::models::presets;
use crate::models::qa::{QaBatch, QaModel};
use crate::models::step::{ModelConfig, ModelSource};
use crate::nn::Mode;
use crate::optim::{accumulate_and_step, LossScaler, OptimConfig, Optimizer};
use crate::profile::{self, nvtx};
use crate::rng::Rng;
use crate::shape::{DType, Device};
use crate::tensor::Tensor;

/// A model with a fixed random batch, ready to time.
pub trait BenchModel {
    fn describe(&self) -> String;
    fn params(&self) -> Vec<(String, Tensor)>;
    /// Training loss on the batch (dropout drawn from `seed`).
    fn train_loss(&self, seed: u64) -> Result<Tensor>;
    /// One inference forward on the batch.
    fn infer(&self) -> Result<()>;
    /// Tokens one step processes (inputs, plus targets for seq2seq), as torch_baseline counts.
    fn tokens_per_step(&self) -> usize;
    /// Model FLOPs of one step (see [`train_flops`]).
    fn flops_per_step(&self, train: bool) -> f64;
    /// Per-layer activation checkpointing on or off.
    fn set_checkpointing(&mut self, on: bool);
}

/// 6·N per token for forward + backward of the dense weights plus the attention score
/// and value products (4·L²·d per layer forward, ×3 with backward), the accounting of
/// PaLM's MFU (Chowdhery et al. 2022, appendix B). Inference is a third of it.
pub fn train_flops(dense_params_times_tokens: f64, attn_flops_fwd: f64, train: bool) -> f64 {
    let fwd = 2.0 * dense_params_times_tokens + attn_flops_fwd;
    if train {
        3.0 * fwd
    } else {
        fwd
    }
}

fn random_ids(rng: &mut Rng, n: usize, lo: usize, hi: usize) -> Vec<i32> {
    (0..n).map(|_| (lo + rng.below(hi - lo)) as i32).collect()
}

pub mod compare;
pub mod peaks;
pub mod report;
pub mod roofline;
pub mod seq2seq;

/// The model a `bench --model` value names, for the planner and the bench:
/// `distilbert-qa` and the encoder-decoder presets ([`presets::PRESETS`]) are public
/// configurations with random weights, anything else a model directory.
pub fn model_source(model: &str) -> Result<ModelSource> {
    if let Some(cfg) = presets::preset(model)? {
        return Ok(ModelSource::config(cfg));
    }
    match model {
        "distilbert-qa" => {
            let c: DistilBertConfig = serde_json::from_str("{}")
                .map_err(|e| Error::msg(format!("default DistilBERT config: {e}")))?;
            Ok(ModelSource::config(ModelConfig::DistilBert(c)))
        }
        dir if !Path::new(dir).join("config.json").is_file() => Err(Error::msg(format!(
            "--model {dir}: expected distilbert-qa, {} or a model directory with config.json",
            presets::PRESETS.join(", ")
        ))),
        dir => ModelSource::dir(Path::new(dir)),
    }
}

/// Settings of one bench run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub steps: usize,
    pub warmup: usize,
    pub train: bool,
    pub fp16: bool,
    pub device: Device,
    /// Steps run again under the profiler for the per-op table (not in the timings).
    pub profile_steps: usize,
    pub trace: bool,
    /// The VRAM planner's plan, reported beside the measured peak.
    pub memory_plan: Option<crate::plan::Plan>,
    /// The optimizer a training step runs.
    pub optim: OptimConfig,
    /// Micro-batches per optimizer step (the plan's accumulation under a budget): a
    /// timed step runs them all, as the training loop does.
    pub grad_accum: usize,
    /// Stop the timed steps once this many seconds have passed since the first (at
    /// most `steps`, at least one).
    pub max_time: Option<f64>,
}

pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(n) => crate::backend::cuda::context::device(n)
            .map(|d| d.name.clone())
            .unwrap_or_else(|e| format!("cuda:{n} ({e})")),
        _ => format!(
            "cpu ({}, {} threads)",
            crate::backend::cpu::path::cpu_path().name(),
            rayon::current_num_threads()
        ),
    }
}

fn sync(device: Device) -> Result<()> {
    if device.is_cuda() {
        crate::backend::cuda::synchronize(device)?;
    }
    Ok(())
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((q * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
}

/// Run the benchmark; returns the report as JSON (same field names as torch_baseline.py).
pub fn run(m: &dyn BenchModel, cfg: &BenchConfig) -> Result<Value> {
    let dev = cfg.device;
    let name = device_name(dev);
    // The roofline's ceilings, measured before anything else runs.
    let peaks = if cfg.profile_steps > 0 {
        Some(peaks::measure(dev, &name)?)
    } else {
        None
    };
    // What the model and its batch hold before the optimizer exists (the measured side
    // of the report's memory bars).
    let held_model = tracker::live_bytes(dev);
    // Inference holds no optimizer state (no fp32 masters, no moments): only training
    // builds the optimizer, so `--mode infer` measures what an inference process holds.
    let mut opt = if cfg.train {
        Some(Optimizer::new(
            &m.params(),
            cfg.optim.with_weight_decay(0.01),
        )?)
    } else {
        None
    };
    let held_opt = tracker::live_bytes(dev);
    let mut scaler = (cfg.train && cfg.fp16).then(LossScaler::default);
    let mut losses = Vec::new();
    // NVTX ranges (profile/nvtx.rs) as the training loop's: step > forward, backward,
    // optimizer.
    let accum = cfg.grad_accum.max(1);
    let shares = vec![1.0 / accum as f64; accum];
    let mut step = |i: u64| -> Result<()> {
        let _step = nvtx::range("step");
        if !cfg.train {
            let _range = nvtx::range("forward");
            return m.infer();
        }
        let opt = opt
            .as_mut()
            .ok_or_else(|| Error::msg("bench: training step without an optimizer"))?;
        // The training loop's step: every micro-batch (dropout seeds i·accum + j), then
        // one update.
        let report = accumulate_and_step(opt, scaler.as_ref(), 5e-5, Some(1.0), &shares, |j| {
            m.train_loss(i * accum as u64 + j as u64)
        })?;
        if let Some(s) = scaler.as_mut() {
            s.update(report.outcome.skipped);
        }
        losses.push(report.loss);
        Ok(())
    };
    let t0 = Instant::now();
    for i in 0..cfg.warmup {
        step(i as u64)?;
    }
    sync(dev)?;
    let warmup_s = t0.elapsed().as_secs_f64();
    tracker::reset_peak(dev);
    if let Device::Cuda(n) = dev {
        crate::backend::cuda::alloc_reset_peak(n)?;
    }
    let mut times = Vec::with_capacity(cfg.steps);
    let timed = Instant::now();
    for i in 0..cfg.steps {
        if cfg
            .max_time
            .is_some_and(|t| i > 0 && timed.elapsed().as_secs_f64() >= t)
        {
            break;
        }
        sync(dev)?;
        let t = Instant::now();
        step((cfg.warmup + i) as u64)?;
        sync(dev)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let peak = tracker::peak_bytes(dev);
    let ops = if cfg.profile_steps > 0 {
        profile::enable(cfg.trace);
        for i in 0..cfg.profile_steps {
            step((cfg.warmup + cfg.steps + i) as u64)?;
        }
        sync(dev)?;
        profile::disable();
        profile::summary()
    } else {
        Vec::new()
    };
    let total: f64 = times.iter().sum();
    let mut ms: Vec<f64> = times.iter().map(|t| t * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let micro = if cfg.train { accum } else { 1 };
    let tokens = m.tokens_per_step() * micro;
    let flops = m.flops_per_step(cfg.train) * micro as f64;
    let achieved = flops * times.len() as f64 / total.max(1e-12);
    let mfu = peaks::card_peaks(&name).map(|p| achieved / (p.fp16_tensor_tflops * 1e12));
    let mut rec = json!({
        "impl": "fusebox",
        "mode": if cfg.train { "train" } else { "infer" },
        "model": m.describe(),
        "device": name,
        // The CPU's SIMD path and rayon's thread count, which CPU figures depend on (both
        // also printed for a CUDA run, whose host-side work they describe).
        "cpu_path": crate::backend::cpu::path::cpu_path().name(),
        "threads": rayon::current_num_threads(),
        "precision": if cfg.fp16 { "fp16" } else { "fp32" },
        "steps": times.len(),
        "grad_accum": micro,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens as f64 * times.len() as f64 / total.max(1e-12),
        "ms_per_step_median": percentile(&ms, 0.5),
        "ms_per_step_p90": percentile(&ms, 0.9),
        "warmup_s": warmup_s,
        "peak_mem_bytes": peak,
        "predicted_peak_bytes": cfg.memory_plan.as_ref().map(|p| p.tensor_peak),
        "model_tflops_per_s": achieved / 1e12,
        "mfu_vs_fp16_peak": mfu,
        "first_loss": losses.first(),
        "final_loss": losses.last(),
        // The measured peak by component (the tracker's live bytes before and after the
        // optimizer was built, and the step's peak above them), beside the plan's.
        "measured_memory": {
            "weights_and_batch_bytes": held_model,
            "optimizer_state_bytes": held_opt.saturating_sub(held_model),
            "step_bytes": peak.saturating_sub(held_opt.max(held_model)),
        },
        "memory_plan": cfg.memory_plan.as_ref().map(|p| json!({
            // The tensors' components, then the CUDA-only terms (they sum to the peak).
            "components": p.components.iter().chain(&p.cuda_only)
                .map(|(what, bytes)| json!({"what": what, "bytes": bytes}))
                .collect::<Vec<_>>(),
            "tensor_peak_bytes": p.tensor_peak,
            "peak_bytes": p.peak_bytes,
        })),
    });
    if let Some(p) = &peaks {
        let (rows, categories) = roofline::report(&ops, p, cfg.fp16, cfg.profile_steps);
        rec["ops"] = json!(rows);
        rec["categories"] = categories;
        rec["profile_steps"] = json!(cfg.profile_steps);
        rec["peaks"] = p.json();
    } else {
        rec["ops"] = json!([]);
    }
    if let Some(s) = &scaler {
        rec["skipped_steps"] = json!(s.skipped);
        rec["final_loss_scale"] = json!(s.scale);
    }
    if let Device::Cuda(n) = dev {
        let st = crate::backend::cuda::mem_stats(n)?;
        rec["allocator_peak_reserved_bytes"] = json!(st.peak_reserved);
        if let Ok((free, total)) = crate::backend::cuda::mem_info(n) {
            rec["device_used_bytes"] = json!(total - free);
        }
        if let Some(used) = crate::backend::cuda::nvml_used_bytes(n) {
            rec["nvml_used_bytes"] = json!(used);
        }
        if let Some(p) = &cfg.memory_plan {
            rec["device_predicted_bytes"] = json!(p.peak_bytes);
        }
        // What the plan (and the --vram-budget cap) counts outside the allocator.
        rec["cuda_fixed_bytes"] = json!(crate::plan::CUDA_FIXED);
        for (k, v) in crate::backend::cuda::switches(n) {
            rec["switches"][k] = json!(v);
        }
    }
    rec["switches"]["separate_qkv"] = json!(crate::nn::separate_qkv());
    rec["switches"]["adamw_multi_tensor"] = json!(crate::optim::adamw::multi_tensor_default());
    // Inference builds no optimizer (and plans none): say so rather than the default's name.
    rec["optimizer"] = json!(if cfg.train { cfg.optim.name() } else { "none" });
    if losses.iter().any(|l| !l.is_finite()) && scaler.is_none() {
        return Err(Error::msg(format!(
            "bench: non-finite loss in fp32 training: {losses:?}"
        )));
    }
    Ok(rec)
}

/// DistilBERT (distilbert-base-uncased sizes by default) or BERT QA with a random
/// `[batch, seq]` batch and random answer spans, as torch_baseline.py builds it.
pub struct QaBench {
    model: Box<dyn QaModel>,
    batch_data: QaBatch,
    batch: usize,
    seq: usize,
}

pub fn distilbert_bench(
    dir: Option<&Path>,
    batch: usize,
    seq: usize,
    device: Device,
    dtype: DType,
) -> Result<Box<dyn BenchModel>> {
    let model: Box<dyn QaModel> = match dir {
        Some(d) => load_qa_model(d, device, dtype, 0)?,
        None => {
            let cfg: DistilBertConfig = serde_json::from_str("{}")
                .map_err(|e| Error::msg(format!("default DistilBERT config: {e}")))?;
            Box::new(DistilBertForQa::new(cfg, device, dtype, 0)?)
        }
    };
    if seq > model.max_positions() {
        return Err(Error::msg(format!(
            "--seq {seq} exceeds the model's max_position_embeddings {}",
            model.max_positions()
        )));
    }
    let vocab = model.vocab_size();
    let mut rng = Rng::new(1);
    let lo = 1000.min(vocab / 2);
    let ids: Vec<Vec<u32>> = (0..batch)
        .map(|_| {
            (0..seq)
                .map(|_| (lo + rng.below(vocab - lo)) as u32)
                .collect()
        })
        .collect();
    let mask = vec![vec![1u32; seq]; batch];
    let starts: Vec<usize> = (0..batch).map(|_| rng.below(seq)).collect();
    let ends: Vec<usize> = starts
        .iter()
        .map(|&s| (s + rng.below(30)).min(seq - 1))
        .collect();
    let types = model
        .uses_token_type_ids()
        .then(|| vec![vec![0u32; seq]; batch]);
    let batch_data = QaBatch::from_rows(
        &ids,
        &mask,
        types.as_deref(),
        Some((&starts, &ends)),
        device,
    )?;
    Ok(Box::new(QaBench {
        model,
        batch_data,
        batch,
        seq,
    }))
}

impl BenchModel for QaBench {
    fn describe(&self) -> String {
        format!(
            "{} vocab {} ({:.1} M params), batch {} x {}",
            self.model.hf_class(),
            self.model.vocab_size(),
            self.model.params().num_params() as f64 / 1e6,
            self.batch,
            self.seq
        )
    }
    fn params(&self) -> Vec<(String, Tensor)> {
        self.model.params().trainable()
    }
    fn train_loss(&self, seed: u64) -> Result<Tensor> {
        let (s, e) = self.model.forward(&self.batch_data, Mode::train(seed))?;
        self.model.loss(&s, &e, &self.batch_data)
    }
    fn infer(&self) -> Result<()> {
        let _g = no_grad();
        self.model.forward(&self.batch_data, Mode::eval())?;
        Ok(())
    }
    fn tokens_per_step(&self) -> usize {
        self.batch * self.seq
    }
    fn set_checkpointing(&mut self, on: bool) {
        self.model.set_checkpointing(on);
    }
    fn flops_per_step(&self, train: bool) -> f64 {
        // Dense weights touched per token: everything but the embedding tables.
        let p = self.model.params();
        let dense: usize = p
            .trainable()
            .iter()
            .filter(|(n, t)| !n.contains("embeddings") && t.shape().rank() == 2)
            .map(|(_, t)| t.elem_count())
            .sum();
        let (b, s) = (self.batch as f64, self.seq as f64);
        // Attention: hidden = (q weight rows) per layer; 4·S²·hidden per layer forward.
        let attn: f64 = p
            .trainable()
            .iter()
            .filter(|(n, _)| {
                n.ends_with("q_lin.weight") || n.ends_with("attention.self.query.weight")
            })
            .map(|(_, t)| 4.0 * s * s * t.dims()[0] as f64 * b)
            .sum();
        train_flops(dense as f64 * b * s, attn, train)
    }
}
