//! The one training loop every task shares: micro-batches with gradient accumulation,
//! AdamW with HF Trainer's groups, linear warmup/decay, global-norm clipping, dynamic
//! loss scaling for fp16, a progress bar (loss, lr, tokens/s, ETA), metrics appended to
//! `DIR/metrics.jsonl` and drawn as `DIR/curves.svg`, evaluation after each epoch, and a
//! checkpoint at the end. Tasks supply the batches, the loss and the evaluation.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::optim::{accumulate_and_step, AdamW, AdamWConfig, LinearSchedule, LossScaler};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Settings shared by every task (HF TrainingArguments names where they exist).
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Effective batch (per optimizer step).
    pub batch: usize,
    /// Micro-batches per optimizer step; `batch / grad_accum` rows each.
    pub grad_accum: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_ratio: f64,
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
    pub out_dir: PathBuf,
    /// Dynamic loss scaling (fp16 training).
    pub loss_scaling: bool,
    /// Optimizer steps between metric lines.
    pub log_every: usize,
    /// Stop after this many optimizer steps (None: run every epoch).
    pub max_steps: Option<usize>,
    /// Hide the progress bar (tests, non-interactive logs).
    pub quiet: bool,
    /// The VRAM planner's plan for this run (`plan`), reported beside the
    /// measured peak at the end.
    pub memory_plan: Option<crate::plan::Plan>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 3,
            batch: 16,
            grad_accum: 1,
            lr: 2e-5,
            weight_decay: 0.01,
            warmup_ratio: 0.0,
            max_grad_norm: Some(1.0),
            seed: 42,
            out_dir: PathBuf::from("out"),
            loss_scaling: false,
            log_every: 10,
            max_steps: None,
            quiet: false,
            memory_plan: None,
        }
    }
}

/// What a task gives the loop.
pub trait Task {
    /// Number of training rows (features / pairs).
    fn train_len(&self) -> usize;
    /// Loss of the rows `idx` (a micro-batch), in training mode when `train`; dropout
    /// draws from `seed`. Returns the mean loss and the number of tokens it covered.
    fn loss(&mut self, idx: &[usize], seed: u64) -> Result<(Tensor, usize)>;
    /// Metrics on the evaluation set (no gradients).
    fn evaluate(&mut self) -> Result<Map<String, Value>>;
    /// The trainable parameters, named.
    fn params(&self) -> Vec<(String, Tensor)>;
    /// Write a checkpoint in HF layout to `dir`.
    fn save(&self, dir: &Path) -> Result<()>;
    /// The eval metric plotted beside the loss (e.g. "f1", "rougeL", "bleu").
    fn headline_metric(&self) -> &'static str;
}

/// Appends JSON lines to `metrics.jsonl` and keeps the series for the plot.
pub struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
    pub losses: Vec<(f64, f64)>,
    pub evals: Vec<(f64, f64)>,
}

impl MetricsLog {
    pub fn create(dir: &Path) -> Result<MetricsLog> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(MetricsLog {
            file,
            path,
            losses: Vec::new(),
            evals: Vec::new(),
        })
    }
    pub fn write(&mut self, v: &Value) -> Result<()> {
        writeln!(self.file, "{v}").map_err(|e| Error::io(&self.path, e))
    }
}

/// Draw loss and the headline eval metric over steps as an SVG (plotters).
pub fn plot_curves(
    path: &Path,
    losses: &[(f64, f64)],
    evals: &[(f64, f64)],
    metric: &str,
) -> Result<()> {
    use plotters::prelude::*;
    let err =
        |e: &dyn std::fmt::Display| Error::msg(format!("{}: plotting failed: {e}", path.display()));
    let root = SVGBackend::new(path, (900, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(320);
    let max_step = losses
        .iter()
        .chain(evals)
        .map(|p| p.0)
        .fold(1.0f64, f64::max);
    let max_loss = losses
        .iter()
        .map(|p| p.1)
        .filter(|x| x.is_finite())
        .fold(1e-3f64, f64::max);
    let mut c = curve_panel(&top, "training loss", "loss", [max_step, max_loss], &err)?;
    c.draw_series(LineSeries::new(losses.iter().copied(), &RED))
        .map_err(|e| err(&e))?;
    let max_eval = evals.iter().map(|p| p.1).fold(1e-3f64, f64::max);
    let caption = format!("eval {metric}");
    let mut c = curve_panel(&bottom, &caption, metric, [max_step, max_eval], &err)?;
    c.draw_series(LineSeries::new(evals.iter().copied(), &BLUE))
        .map_err(|e| err(&e))?;
    c.draw_series(evals.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// A panel of `plot_curves`: f64 steps against f64 values, on the SVG.
type CurvePanel<'a, 'b> = plotters::chart::ChartContext<
    'a,
    plotters::prelude::SVGBackend<'b>,
    plotters::coord::cartesian::Cartesian2d<RangedCoordf64, RangedCoordf64>,
>;

/// One panel of the curves: axes from 0 to `[x_max, y_max * 1.05]`, x labelled "step".
fn curve_panel<'a, 'b>(
    area: &'a plotters::drawing::DrawingArea<plotters::prelude::SVGBackend<'b>, Shift>,
    caption: &str,
    y_desc: &str,
    [x_max, y_max]: [f64; 2],
    err: &dyn Fn(&dyn std::fmt::Display) -> Error,
) -> Result<CurvePanel<'a, 'b>> {
    let mut c = plotters::chart::ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max * 1.05)
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .x_desc("step")
        .y_desc(y_desc)
        .draw()
        .map_err(|e| err(&e))?;
    Ok(c)
}

fn progress(total: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps | {msg} | ETA {eta}")
    {
        pb.set_style(style);
    }
    pb
}

/// Train `task` per `cfg`; returns the final metrics object (also the last stdout line
/// the binaries print).
pub fn run<T: Task>(task: &mut T, cfg: &TrainConfig) -> Result<Value> {
    let n = task.train_len();
    if n == 0 {
        return Err(Error::msg("train: the training set is empty"));
    }
    let accum = cfg.grad_accum.max(1);
    let micro = (cfg.batch / accum).max(1);
    let steps_per_epoch = n.div_ceil(micro * accum);
    let mut total = steps_per_epoch * cfg.epochs;
    if let Some(m) = cfg.max_steps {
        total = total.min(m);
    }
    let sched = LinearSchedule::from_ratio(cfg.lr, cfg.warmup_ratio, total as u64);
    let params = task.params();
    let mut opt = AdamW::new(
        &params,
        AdamWConfig {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..AdamWConfig::default()
        },
        true,
    )?;
    let mut scaler = cfg.loss_scaling.then(LossScaler::default);
    // Measure from here: weights and optimizer state are live, the steps are next.
    let device = params
        .first()
        .map(|(_, t)| t.device())
        .unwrap_or(crate::shape::Device::Cpu);
    crate::backend::tracker::reset_peak(device);
    if let crate::shape::Device::Cuda(n) = device {
        crate::backend::cuda::alloc_reset_peak(n)?;
    }
    // The peak of the training steps; evaluation (no gradients, its own batch size) is
    // left out, as the plan does.
    let mut train_peak = 0usize;
    let mut log = MetricsLog::create(&cfg.out_dir)?;
    let mut rng = Rng::new(cfg.seed);
    let pb = progress(total as u64, cfg.quiet);
    let start = Instant::now();
    let mut step = 0usize;
    // Optimizer steps actually applied: the schedule follows these, as HF Trainer steps
    // its scheduler only when the optimizer ran (an fp16 overflow step does not move the
    // learning rate), while `step` (HF's global_step) counts every step.
    let mut applied = 0usize;
    let mut tokens_total = 0usize;
    let mut window_loss = 0.0;
    let mut window_n = 0usize;
    let mut last_eval = Map::new();
    let mut last_eval_step = None;
    'epochs: for epoch in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        for chunk in order.chunks(micro * accum) {
            if step >= total {
                break 'epochs;
            }
            let lr = sched.lr_at(applied as u64);
            let mbs: Vec<&[usize]> = chunk.chunks(micro).collect();
            let shares: Vec<f64> = mbs
                .iter()
                .map(|mb| mb.len() as f64 / chunk.len() as f64)
                .collect();
            let mut step_tokens = 0;
            let report = accumulate_and_step(
                &mut opt,
                scaler.as_ref(),
                lr,
                cfg.max_grad_norm,
                &shares,
                |i| {
                    let (loss, toks) = task.loss(mbs[i], rng.next_u64())?;
                    step_tokens += toks;
                    Ok(loss)
                },
            )?;
            let (out, step_loss) = (report.outcome, report.loss);
            if let Some(s) = scaler.as_mut() {
                s.update(out.skipped);
            } else if out.skipped {
                return Err(Error::msg(format!(
                    "train: non-finite gradients at step {step} (loss {step_loss}) in fp32 training"
                )));
            }
            step += 1;
            applied += usize::from(!out.skipped);
            tokens_total += step_tokens;
            window_loss += step_loss;
            window_n += 1;
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            let tps = tokens_total as f64 / secs;
            pb.set_position(step as u64);
            pb.set_message(format!(
                "loss {step_loss:.4} | lr {lr:.2e} | {tps:.0} tok/s"
            ));
            if step.is_multiple_of(cfg.log_every.max(1)) || step == total {
                let mean = window_loss / window_n.max(1) as f64;
                log.losses.push((step as f64, mean));
                log.write(&json!({
                    "step": step, "epoch": epoch as f64 + (step - epoch * steps_per_epoch) as f64 / steps_per_epoch as f64,
                    "loss": mean, "lr": lr, "grad_norm": out.grad_norm,
                    "tokens_per_s": tps, "elapsed_s": secs,
                    "skipped_steps": scaler.as_ref().map(|s| s.skipped).unwrap_or(0),
                    "loss_scale": scaler.as_ref().map(|s| s.scale),
                }))?;
                window_loss = 0.0;
                window_n = 0;
            }
        }
        train_peak = train_peak.max(crate::backend::tracker::peak_bytes(device));
        last_eval = evaluate_and_log(task, &mut log, step, epoch + 1, &pb)?;
        crate::backend::tracker::reset_peak(device);
        last_eval_step = Some(step);
    }
    if last_eval_step != Some(step) {
        // Stopped mid-epoch by max_steps: evaluate the final weights too.
        train_peak = train_peak.max(crate::backend::tracker::peak_bytes(device));
        last_eval = evaluate_and_log(task, &mut log, step, cfg.epochs, &pb)?;
        crate::backend::tracker::reset_peak(device);
    }
    pb.finish_and_clear();
    let metric = task.headline_metric();
    plot_curves(
        &cfg.out_dir.join("curves.svg"),
        &log.losses,
        &log.evals,
        metric,
    )?;
    task.save(&cfg.out_dir)?;
    let secs = start.elapsed().as_secs_f64();
    let mut fin = last_eval;
    fin.insert("train_steps".into(), json!(step));
    fin.insert("train_seconds".into(), json!(secs));
    fin.insert(
        "train_tokens_per_s".into(),
        json!(tokens_total as f64 / secs.max(1e-9)),
    );
    if let Some(s) = &scaler {
        fin.insert("skipped_steps".into(), json!(s.skipped));
    }
    report_memory(&mut fin, device, train_peak, cfg.memory_plan.as_ref());
    Ok(Value::Object(fin))
}

fn evaluate_and_log<T: Task>(
    task: &mut T,
    log: &mut MetricsLog,
    step: usize,
    epoch: usize,
    pb: &indicatif::ProgressBar,
) -> Result<Map<String, Value>> {
    let m = task.evaluate()?;
    if let Some(v) = m.get(task.headline_metric()).and_then(|v| v.as_f64()) {
        log.evals.push((step as f64, v));
    }
    pb.println(format!(
        "epoch {epoch} (step {step}): {}",
        Value::Object(m.clone())
    ));
    log.write(&json!({"step": step, "epoch": epoch, "eval": m}))?;
    Ok(m)
}

/// Add the measured peak of the training steps (tracker; on CUDA also the allocator's
/// reserved peak, evaluation included, and NVML's device-wide used bytes now) beside the
/// planner's prediction to `fin`, and say it on stderr. Reading NVML is best-effort:
/// without it the field is absent.
fn report_memory(
    fin: &mut Map<String, Value>,
    device: crate::shape::Device,
    measured: usize,
    plan: Option<&crate::plan::Plan>,
) {
    use crate::plan::human;
    fin.insert("peak_memory_bytes".into(), json!(measured));
    fin.insert(
        "peak_memory_predicted_bytes".into(),
        json!(plan.map(|p| p.tensor_peak)),
    );
    let mut line = format!("peak memory: tensors measured {}", human(measured));
    if let Some(p) = plan {
        line += &format!(" / predicted {}", human(p.tensor_peak));
        if device.is_cuda() {
            fin.insert("device_predicted_bytes".into(), json!(p.peak_bytes));
            line += &format!("; device predicted {}", human(p.peak_bytes));
        }
    }
    if let crate::shape::Device::Cuda(n) = device {
        if let Ok(st) = crate::backend::cuda::mem_stats(n) {
            fin.insert(
                "allocator_peak_reserved_bytes".into(),
                json!(st.peak_reserved),
            );
            line += &format!(", allocator reserved peak {}", human(st.peak_reserved));
        }
        if let Some(used) = crate::backend::cuda::nvml_used_bytes(n) {
            fin.insert("nvml_used_bytes".into(), json!(used));
            line += &format!(", NVML used now {}", human(used as usize));
        }
    }
    eprintln!("{line}");
}
