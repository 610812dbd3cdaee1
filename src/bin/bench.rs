//! `bench`: time training steps (or inference) of DistilBERT-QA or T5 on any device and
//! print tokens/s, ms/step (median, p90), peak memory, a per-op table and MFU. Same
//! workload and JSON fields as tools/torch_baseline.py, for side-by-side comparisons.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use fusebox::bench::seq2seq::Seq2SeqBench;
use fusebox::bench::{self, BenchConfig, BenchModel};
use fusebox::models::step::{ModelConfig, ModelSource};
use fusebox::plan::{self, human, Workload};

#[path = "common/memory_args.rs"]
mod memory_args;
use fusebox::{DType, Device};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Precision {
    Fp32,
    Fp16,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Mode {
    Train,
    Infer,
}

#[derive(Parser, Debug)]
#[command(
    about = "Benchmark fusebox training/inference steps (tokens/s, ms/step, memory, per-op time)"
)]
struct Args {
    /// `distilbert-qa`, `t5-small`, `flan-t5-small`, `t5-base`, `flan-t5-base`, `t5-large`,
    /// `flan-t5-large`, `bart-base`, `bart-large-cnn`, `opus-mt-en-id` (their public
    /// configurations, random weights) or a model directory.
    #[arg(long, default_value = "t5-small")]
    model: String,
    /// Sequences per step (with --vram-budget / --gpu: the batch to keep, split into
    /// micro-batches that fit).
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Input length.
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// Target length (T5).
    #[arg(long, default_value_t = 16)]
    tgt_seq: usize,
    /// fp16: fp16 weights and activations, fp32 master weights, dynamic loss scaling
    /// (on the CPU, an emulation of the CUDA path: f16 storage, f32 arithmetic).
    #[arg(long, value_enum, default_value = "fp32")]
    precision: Precision,
    /// Timed steps (median and p90 reported).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Stop the timed steps after this many seconds (at most --steps, at least one).
    #[arg(long, value_name = "SECONDS")]
    max_time: Option<f64>,
    /// Untimed steps first (allocator, cuBLAS heuristics and kernel loading warm up).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// train: forward, backward and the optimizer; infer: the forward alone, without
    /// gradients.
    #[arg(long, value_enum, default_value = "train")]
    mode: Mode,
    /// The optimizer of a training step (HF Trainer's `optim`): adamw (adamw_torch) or
    /// adafactor (Trainer's settings; see `train --help`).
    #[arg(long, default_value = "adamw", value_name = "adamw|adafactor")]
    optim: String,
    /// Adafactor's arguments (HF's `optim_args`; see `train --help`).
    #[arg(long, value_name = "KEY=VALUE,...")]
    optim_args: Option<String>,
    /// Extra steps run under the per-op profiler (not part of the timings).
    #[arg(long, default_value_t = 1)]
    profile_steps: usize,
    /// Print only one JSON line.
    #[arg(long)]
    json: bool,
    /// Write the profiled steps' per-op timeline as a Chrome trace (open in Perfetto).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// PyTorch's per-category times for the same workload (the JSON
    /// `tools/torch_baseline.py --profile FILE` writes): printed beside fusebox's with
    /// the ratio per category.
    #[arg(long, value_name = "FILE")]
    compare: Option<PathBuf>,
    /// Write the run as a self-contained HTML page, DIR/index.html (time per category,
    /// the memory plan beside the measured peak, the roofline, the per-op table), with
    /// the JSON record beside it (DIR/bench.json).
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// Replace the report already in --report DIR (without it such a DIR is refused).
    #[arg(long, requires = "report")]
    overwrite: bool,
    #[command(flatten)]
    mem: memory_args::MemoryArgs,
}

fn build(
    args: &Args,
    spec: &ModelSource,
    device: Device,
    dtype: DType,
) -> Result<Box<dyn BenchModel>> {
    let (b, s, t) = (args.batch, args.seq, args.tgt_seq);
    Ok(match &spec.config {
        ModelConfig::T5(_) | ModelConfig::Bart(_) => {
            Box::new(Seq2SeqBench::new(spec, (b, s, t), device, dtype)?)
        }
        ModelConfig::DistilBert(_) | ModelConfig::Bert(_) => {
            bench::distilbert_bench(spec.checkpoint.as_deref(), b, s, device, dtype)?
        }
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = Device::parse(&args.device)?.resolve();
    let fp16 = args.precision == Precision::Fp16;
    let dtype = if fp16 { DType::F16 } else { DType::F32 };
    for (flag, v, what) in [
        ("--batch", args.batch, "sequences per step"),
        ("--seq", args.seq, "input tokens per sequence"),
        ("--steps", args.steps, "timed steps"),
    ] {
        if v == 0 {
            bail!("{flag} must be at least 1 ({what})");
        }
    }
    if let Some(t) = args.max_time.filter(|t| !(t.is_finite() && *t > 0.0)) {
        bail!("--max-time must be a positive number of seconds, got {t}");
    }
    let torch = match &args.compare {
        Some(_) if args.profile_steps == 0 => {
            bail!("--compare needs the per-op profile: --profile-steps must be at least 1")
        }
        Some(path) => Some(bench::compare::load(path)?),
        None => None,
    };
    if let Some(dir) = &args.report {
        bench::report::prepare(dir, args.overwrite)?;
    }
    let spec = bench::model_source(&args.model)?;
    if spec.config.has_target() && args.tgt_seq == 0 {
        bail!("--tgt-seq must be at least 1 (T5's target tokens per sequence)");
    }
    // Past its position table a BERT-family model has no embedding to look up; T5's
    // relative positions have no such limit (the memory plan bounds it instead).
    let positions = match &spec.config {
        ModelConfig::DistilBert(c) => Some(c.max_position_embeddings),
        ModelConfig::Bert(c) => Some(c.max_position_embeddings),
        // BART / Marian: source and target both read the position table.
        ModelConfig::Bart(c) => Some(c.max_position_embeddings),
        ModelConfig::T5(_) => None,
    };
    if let Some(max) = positions.filter(|&max| args.seq > max) {
        let whose = match &spec.checkpoint {
            Some(dir) => format!("{}", dir.join("config.json").display()),
            None => format!("the built-in {}", args.model),
        };
        bail!(
            "--seq {} exceeds the model's max_position_embeddings {max} ({whose}): it has no position embedding past that",
            args.seq
        );
    }
    let optim = fusebox::optim::OptimConfig::parse(&args.optim, args.optim_args.as_deref(), 0.01)?;
    let work = Workload {
        micro_batch: args.batch,
        grad_accum: 1,
        seq_len: args.seq,
        tgt_len: args.tgt_seq,
        dtype,
        checkpointing: args.mem.checkpointing,
        infer: args.mode == Mode::Infer,
        optim,
        target: args.mem.target(device),
    };
    let budget_bytes = args.mem.budget()?;
    let plan = plan::plan_or_fit(&spec, budget_bytes, args.batch, &work)?;
    if args.mem.plan {
        print!("{}", plan.table());
        return Ok(());
    }
    if device == Device::Cpu {
        memory_args::check_cpu_memory(
            &plan,
            0,
            "this bench",
            "lower --batch or --seq, or add --checkpointing",
        )?;
    }
    if budget_bytes.is_some() {
        eprint!("{}", plan.table());
    }
    memory_args::cap_cuda(device, budget_bytes, &plan)?;
    let mut args = args;
    args.batch = plan.work.micro_batch;
    let mut model = build(&args, &spec, device, dtype)?;
    model.set_checkpointing(plan.work.checkpointing);
    let cfg = BenchConfig {
        steps: args.steps,
        warmup: args.warmup,
        train: args.mode == Mode::Train,
        fp16,
        device,
        profile_steps: args.profile_steps,
        trace: args.trace.is_some(),
        memory_plan: Some(plan.clone()),
        optim,
        grad_accum: plan.work.grad_accum,
        max_time: args.max_time,
    };
    let mut rec = bench::run(model.as_ref(), &cfg)?;
    if let Some(t) = &torch {
        let workload = serde_json::json!({
            "model": args.model,
            "batch": args.batch,
            "seq": args.seq,
            "tgt_seq": spec.config.has_target().then_some(args.tgt_seq),
        });
        rec["compare"] = bench::compare::compare(&rec, t, &workload);
    }
    if let Some(path) = &args.trace {
        let doc = fusebox::profile::chrome_trace();
        std::fs::write(path, serde_json::to_string(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &args.report {
        let page = bench::report::write(dir, &rec)?;
        eprintln!("report: {}", page.display());
    }
    if !args.json {
        println!("device        {}", rec["device"].as_str().unwrap_or("?"));
        println!("model         {}", rec["model"].as_str().unwrap_or("?"));
        println!("optimizer     {}", rec["optimizer"].as_str().unwrap_or("?"));
        println!(
            "mode          {} {}",
            rec["mode"].as_str().unwrap_or("?"),
            rec["precision"].as_str().unwrap_or("?")
        );
        if args.mode == Mode::Train {
            println!(
                "steps         {} timed, {} micro-batch(es) of {} each; loss first {:.4} final {:.4}; skipped (fp16 overflow) {}",
                rec["steps"],
                rec["grad_accum"],
                plan.work.micro_batch,
                rec["first_loss"].as_f64().unwrap_or(f64::NAN),
                rec["final_loss"].as_f64().unwrap_or(f64::NAN),
                rec["skipped_steps"].as_u64().map_or("n/a (fp32)".into(), |n| n.to_string())
            );
        }
        println!(
            "tokens/s      {:.1}",
            rec["tokens_per_s"].as_f64().unwrap_or(f64::NAN)
        );
        println!(
            "ms/step       median {:.2}  p90 {:.2}",
            rec["ms_per_step_median"].as_f64().unwrap_or(f64::NAN),
            rec["ms_per_step_p90"].as_f64().unwrap_or(f64::NAN)
        );
        println!(
            "peak memory predicted and measured: tensors predicted {} / measured {} (tracker)",
            human(plan.tensor_peak),
            human(rec["peak_mem_bytes"].as_u64().unwrap_or(0) as usize),
        );
        if device.is_cuda() {
            println!(
                "              device predicted {} / allocator reserved peak {} / NVML used {}",
                human(plan.peak_bytes),
                human(rec["allocator_peak_reserved_bytes"].as_u64().unwrap_or(0) as usize),
                rec["nvml_used_bytes"]
                    .as_u64()
                    .map(|b| human(b as usize))
                    .unwrap_or_else(|| "n/a".into()),
            );
        }
        match rec["mfu_vs_fp16_peak"].as_f64() {
            Some(m) => println!(
                "MFU           {:.1} % of the card's fp16 tensor peak ({:.2} TFLOP/s)",
                m * 100.0,
                rec["model_tflops_per_s"].as_f64().unwrap_or(0.0)
            ),
            None => println!(
                "model TFLOP/s {:.3} (no fp16 peak known for this device)",
                rec["model_tflops_per_s"].as_f64().unwrap_or(0.0)
            ),
        }
        if args.profile_steps > 0 {
            print!("{}", bench::roofline::table(&rec, args.profile_steps, 30));
        }
        if rec.get("compare").is_some() {
            print!("{}", bench::compare::table(&rec["compare"]));
        }
    }
    let mut line = rec.clone();
    if args.json {
        println!("{line}");
    } else if let Some(o) = line.as_object_mut() {
        for k in ["ops", "categories", "compare", "memory_plan"] {
            o.remove(k);
        }
        println!("\n{}", serde_json::Value::Object(o.clone()));
    }
    Ok(())
}
