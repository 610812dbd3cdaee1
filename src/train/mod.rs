//! The one training loop every task shares: micro-batches with gradient accumulation,
//! AdamW or Adafactor with HF Trainer's groups, linear warmup/decay, global-norm clipping, dynamic
//! loss scaling for fp16, a progress bar (loss, lr, tokens/s, ETA), metrics in
//! `DIR/metrics.jsonl` drawn as `DIR/curves.svg`, evaluation and checkpoints by epoch or
//! by steps, resume from a checkpoint, a clean stop on SIGINT/SIGTERM or a time limit,
//! and the final model written atomically. Tasks supply the batches, the loss and the
//! evaluation.
//!
//! A run killed at any moment and resumed from its newest checkpoint takes the steps
//! the uninterrupted run would have taken, bit for bit: the checkpoint holds every piece
//! of state a step reads (weights, the optimizer's state and masters, the loss scaler, the
//! random stream, the epoch's data order and the position in it, the log's length).

mod checkpoint;
mod config;
mod log;
pub mod outdir;
mod stop;

pub use config::{fingerprint, Every, Resume, TrainConfig};
pub use log::{plot_curves, MetricsLog};
pub use outdir::{prepare as prepare_out, OutMode};
pub use stop::{parse_duration, StopReason};

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::optim::{accumulate_and_step, LinearSchedule, LossScaler, Optimizer};
use crate::tensor::Tensor;
use checkpoint::{LoopState, TrainerState};

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
    /// A fingerprint of the training rows (token ids and targets): a resumed run must
    /// train on the same data ([`fingerprint`] of them).
    fn data_fingerprint(&self) -> String;
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
/// the binaries print). A run stopped by a signal or `--max-time` returns
/// [`Error::Stopped`] after writing its checkpoint.
pub fn run<T: Task>(task: &mut T, cfg: &TrainConfig) -> Result<Value> {
    let n = task.train_len();
    if n == 0 {
        return Err(Error::msg("train: the training set is empty"));
    }
    cfg.check()?;
    let accum = cfg.grad_accum.max(1);
    let micro = (cfg.batch / accum).max(1);
    let steps_per_epoch = n.div_ceil(micro * accum);
    // Trainer's max_steps: the number of steps, overriding the epochs (the data is
    // passed over as many times as it takes).
    let total = cfg.max_steps.unwrap_or(steps_per_epoch * cfg.epochs);
    let epochs = total.div_ceil(steps_per_epoch.max(1));
    let sched = LinearSchedule::from_ratio(cfg.lr, cfg.warmup_ratio, total as u64);
    let params = task.params();
    let mut opt = Optimizer::new(&params, cfg.optim.with_weight_decay(cfg.weight_decay))?;
    let device = params
        .first()
        .map(|(_, t)| t.device())
        .unwrap_or(crate::shape::Device::Cpu);
    let settings = cfg.resume_settings(task, &params);
    // What the disk must hold: the final model (f32) and, per kept checkpoint plus the
    // one being written, the model and the optimizer's masters and state (f32 each).
    let elems: usize = params.iter().map(|(_, t)| t.elem_count()).sum();
    let state: usize = opt.state_tensors().values().map(|t| t.elem_count()).sum();
    let saves = match cfg.save_strategy {
        Every::No => 0,
        Every::Epoch => total.div_ceil(steps_per_epoch.max(1)),
        Every::Steps(k) => total / k,
    };
    let kept = cfg.save_total_limit.map_or(saves, |k| k.min(saves)) + usize::from(saves > 0);
    outdir::check_space(
        &cfg.out_dir,
        (4 * (elems + kept * (elems + state))) as u64,
        &format!("the final model and {kept} checkpoint(s) of {elems} parameters"),
    )?;
    drop(params);
    let out = cfg.out_dir.as_path();
    let metric = cfg
        .metric_for_best_model
        .clone()
        .unwrap_or_else(|| task.headline_metric().to_string());
    let run_id = outdir::new_run_id();
    let (mut st, mut log) = match &cfg.resume {
        None => {
            let mut st = LoopState::new(cfg.seed);
            st.scaler = cfg.loss_scaling.then(LossScaler::default);
            (st, MetricsLog::create(out, task.headline_metric())?)
        }
        Some(r) => resume(r, out, &settings, &mut opt, task.headline_metric())?,
    };
    if st.total != 0 && st.total != total {
        eprintln!(
            "warning: this run has {total} optimizer steps, its checkpoint was made for {}: \
             the learning-rate schedule follows the new count from here",
            st.total
        );
    }
    st.total = total;
    // Measure from here: weights and optimizer state are live, the steps are next.
    crate::backend::tracker::reset_peak(device);
    if let crate::shape::Device::Cuda(n) = device {
        crate::backend::cuda::alloc_reset_peak(n)?;
    }
    // The peak of the training steps; evaluation (no gradients, its own batch size) is
    // left out, as the plan does.
    let mut train_peak = 0usize;
    let pb = progress(total as u64, cfg.quiet);
    pb.set_position(st.step as u64);
    let start = Instant::now();
    let stopper = stop::Stopper::new(start, cfg.max_time);
    let seconds_before = st.seconds;
    let ckpt = Ckpt {
        out,
        cfg,
        run_id: &run_id,
        settings: &settings,
        start,
        seconds_before,
        pb: &pb,
    };
    let rows = micro * accum;
    loop {
        if st.epoch >= epochs {
            break;
        }
        if st.order.is_empty() {
            st.order = (0..n).collect();
            st.rng.shuffle(&mut st.order);
        }
        if st.pos * rows < n {
            if st.step >= total {
                break;
            }
            let chunk = &st.order[st.pos * rows..((st.pos + 1) * rows).min(n)];
            let lr = sched.lr_at(st.applied as u64);
            let mbs: Vec<&[usize]> = chunk.chunks(micro).collect();
            let shares: Vec<f64> = mbs
                .iter()
                .map(|mb| mb.len() as f64 / chunk.len() as f64)
                .collect();
            let mut step_tokens = 0;
            let rng = &mut st.rng;
            let step_range = crate::profile::nvtx::range("step");
            let report = accumulate_and_step(
                &mut opt,
                st.scaler.as_ref(),
                lr,
                cfg.max_grad_norm,
                &shares,
                |i| {
                    let (loss, toks) = task.loss(mbs[i], rng.next_u64())?;
                    step_tokens += toks;
                    Ok(loss)
                },
            )?;
            drop(step_range);
            let (outc, step_loss) = (report.outcome, report.loss);
            // Adafactor's relative step sets its own lr (HF reports it through
            // AdafactorSchedule); else the schedule's.
            let lr = opt.reported_lr(lr);
            if let Some(s) = st.scaler.as_mut() {
                s.update(outc.skipped);
            } else if outc.skipped {
                return Err(Error::msg(format!(
                    "train: non-finite gradients at step {} (loss {step_loss}) in fp32 training",
                    st.step
                )));
            }
            st.step += 1;
            st.pos += 1;
            st.applied += usize::from(!outc.skipped);
            st.tokens_total += step_tokens;
            let window = f64::from_bits(st.window_loss_bits) + step_loss;
            st.window_loss_bits = window.to_bits();
            st.window_n += 1;
            let secs = (seconds_before + start.elapsed().as_secs_f64()).max(1e-9);
            let tps = st.tokens_total as f64 / secs;
            pb.set_position(st.step as u64);
            pb.set_message(format!(
                "loss {step_loss:.4} | lr {lr:.2e} | {tps:.0} tok/s"
            ));
            if st.step.is_multiple_of(cfg.log_every.max(1)) || st.step == total {
                let mean = window / st.window_n.max(1) as f64;
                log.write(&json!({
                    "step": st.step, "epoch": st.epoch as f64 + st.pos as f64 / steps_per_epoch as f64,
                    "loss": mean, "lr": lr, "grad_norm": outc.grad_norm,
                    "tokens_per_s": tps, "elapsed_s": secs,
                    "skipped_steps": st.scaler.as_ref().map(|s| s.skipped).unwrap_or(0),
                    "loss_scale": st.scaler.as_ref().map(|s| s.scale),
                }));
                st.window_loss_bits = 0f64.to_bits();
                st.window_n = 0;
            }
            if cfg.eval_strategy.at_step(st.step) {
                // The evaluation's memory is not the training step's (as the plan has it).
                train_peak = train_peak.max(crate::backend::tracker::peak_bytes(device));
                let epoch = json!(st.epoch as f64 + st.pos as f64 / steps_per_epoch as f64);
                evaluate(task, &mut st, &mut log, epoch, &metric, &pb)?;
                crate::backend::tracker::reset_peak(device);
            }
            let stop = stopper.check();
            if cfg.save_strategy.at_step(st.step) || stop.is_some() {
                ckpt.save(task, &opt, &mut st, &log, stop.is_some())?;
            }
            if let Some(reason) = stop {
                return Err(ckpt.stopped(reason, &st));
            }
            continue;
        }
        // The end of an epoch.
        train_peak = train_peak.max(crate::backend::tracker::peak_bytes(device));
        if cfg.eval_strategy == Every::Epoch {
            let epoch = json!(st.epoch + 1);
            evaluate(task, &mut st, &mut log, epoch, &metric, &pb)?;
        }
        crate::backend::tracker::reset_peak(device);
        st.epoch += 1;
        st.pos = 0;
        st.order.clear();
        let stop = stopper.check();
        if cfg.save_strategy == Every::Epoch || stop.is_some() {
            ckpt.save(task, &opt, &mut st, &log, stop.is_some())?;
        }
        if let Some(reason) = stop {
            return Err(ckpt.stopped(reason, &st));
        }
    }
    if st.last_eval_step != Some(st.step) {
        // Stopped mid-epoch by max_steps (or evaluation off): evaluate the final weights.
        train_peak = train_peak.max(crate::backend::tracker::peak_bytes(device));
        let epoch = st.epoch as f64 + st.pos as f64 / steps_per_epoch as f64;
        evaluate(task, &mut st, &mut log, json!(epoch), &metric, &pb)?;
        crate::backend::tracker::reset_peak(device);
    }
    pb.finish_and_clear();
    let mut fin = st.last_eval.clone();
    if cfg.load_best_model_at_end {
        match st.best.clone() {
            // The final weights are the best: nothing to load (their evaluation may
            // have no checkpoint of its own).
            Some((_, step, _)) if step == st.step => {}
            Some((value, step, eval)) => {
                let dir = out.join(format!("checkpoint-{step}"));
                match load_weights(&dir, &mut opt) {
                    Ok(()) => {
                        eprintln!("loaded the best model: {metric} {value} at step {step}");
                        fin = eval;
                    }
                    Err(e) => eprintln!(
                        "warning: the best model ({metric} {value} at step {step}) could not \
                         be loaded ({e}); the final weights are saved instead"
                    ),
                }
            }
            None => eprintln!(
                "warning: no evaluation reported {metric:?} (--metric-for-best-model): the \
                 final weights are saved"
            ),
        }
    }
    plot_curves(
        &out.join("curves.svg"),
        &log.losses,
        &log.evals,
        task.headline_metric(),
    )?;
    let secs = seconds_before + start.elapsed().as_secs_f64();
    let marker = json!({
        "run_id": run_id, "complete": true, "train_steps": st.step, "settings": settings,
    });
    outdir::save_final(out, &run_id, &marker, &|dir| task.save(dir))?;
    fin.insert("train_steps".into(), json!(st.step));
    fin.insert("train_seconds".into(), json!(secs));
    fin.insert(
        "train_tokens_per_s".into(),
        json!(st.tokens_total as f64 / secs.max(1e-9)),
    );
    if let Some(s) = &st.scaler {
        fin.insert("skipped_steps".into(), json!(s.skipped));
    }
    report_memory(&mut fin, device, train_peak, cfg.memory_plan.as_ref());
    Ok(Value::Object(fin))
}

/// The checkpoint of `r` (checked against `settings`), its state restored into `opt`,
/// and the log continued from the checkpoint's line.
fn resume(
    r: &Resume,
    out: &Path,
    settings: &Value,
    opt: &mut Optimizer,
    headline: &str,
) -> Result<(LoopState, MetricsLog)> {
    let (dir, ts) = match r {
        Resume::Auto => checkpoint::latest(out).ok_or_else(|| {
            Error::msg(format!(
                "--resume auto: no complete checkpoint in {} (checkpoint-STEP folders with \
                 a manifest)",
                out.display()
            ))
        })?,
        Resume::Dir(d) => (d.clone(), checkpoint::verify(d)?),
    };
    let diff = checkpoint::differences(&ts.config, settings);
    if !diff.is_empty() {
        return Err(Error::msg(format!(
            "--resume {}: the checkpoint belongs to another run: {}",
            dir.display(),
            diff.join("; ")
        )));
    }
    load_weights(&dir, opt)?;
    opt.set_steps(ts.state.optimizer_steps);
    // The run is unfinished again: a marker of an earlier end would call half-moved
    // final files complete. Checkpoints past this one belong to a history this run does
    // not continue: set aside (not deleted), so rotation and a later `--resume auto`
    // never take them for this run's.
    let _ = std::fs::remove_file(out.join(outdir::RUN_MARKER));
    checkpoint::set_aside_after(out, ts.state.step);
    eprintln!(
        "resuming from {} (step {}, epoch {})",
        dir.display(),
        ts.state.step,
        ts.state.epoch
    );
    let log = MetricsLog::resume(out, ts.state.metrics_lines, headline)?;
    Ok((ts.state, log))
}

/// The weights and optimizer state of checkpoint `dir` into `opt` (and the model's
/// parameters, which it holds).
fn load_weights(dir: &Path, opt: &mut Optimizer) -> Result<()> {
    let path = dir.join("optimizer.safetensors");
    // On the host: each tensor goes to the device only while it is copied in, so resuming
    // needs no second copy of the whole optimizer state on the card.
    let tensors = crate::nn::safetensors_io::load(
        &path,
        crate::shape::DType::F32,
        crate::shape::Device::Cpu,
    )?;
    opt.load_state(&tensors)
        .map_err(|e| Error::msg(format!("{}: {e}", path.display())))
}

/// What a checkpoint save needs besides the loop's state.
struct Ckpt<'a> {
    out: &'a Path,
    cfg: &'a TrainConfig,
    run_id: &'a str,
    settings: &'a Value,
    start: Instant,
    seconds_before: f64,
    pb: &'a indicatif::ProgressBar,
}

impl Ckpt<'_> {
    /// Write `checkpoint-STEP` and rotate the old ones. A failed save warns and training
    /// goes on, unless the run is stopping on it (`must`).
    fn save<T: Task>(
        &self,
        task: &T,
        opt: &Optimizer,
        st: &mut LoopState,
        log: &MetricsLog,
        must: bool,
    ) -> Result<()> {
        st.metrics_lines = log.lines;
        st.seconds = self.seconds_before + self.start.elapsed().as_secs_f64();
        st.optimizer_steps = opt.steps();
        let ts = TrainerState {
            format: 1,
            run_id: self.run_id.to_string(),
            config: self.settings.clone(),
            state: st.clone(),
        };
        match checkpoint::save(self.out, &ts, &|d| task.save(d), &opt.state_tensors()) {
            Ok(dir) => {
                self.pb.println(format!("checkpoint {}", dir.display()));
                let protect = self
                    .cfg
                    .load_best_model_at_end
                    .then(|| st.best.as_ref().map(|b| b.1))
                    .flatten();
                checkpoint::rotate(self.out, self.cfg.save_total_limit, st.step, protect);
                Ok(())
            }
            Err(e) if !must => {
                self.pb.println(format!(
                    "warning: checkpoint at step {} failed: {e}",
                    st.step
                ));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The error that ends a stopped run, saying how to continue it.
    fn stopped(&self, reason: StopReason, st: &LoopState) -> Error {
        self.pb.finish_and_clear();
        let why = match reason {
            StopReason::Signal => "interrupted",
            StopReason::TimeLimit => "--max-time reached",
        };
        Error::Stopped {
            code: reason.exit_code(),
            message: format!(
                "{why} at step {}: checkpoint in {}; to continue, run the same command with \
                 --resume auto",
                st.step,
                self.out.join(format!("checkpoint-{}", st.step)).display()
            ),
        }
    }
}

/// Evaluate, log the line, and keep the best evaluation by `metric` (greater is better).
fn evaluate<T: Task>(
    task: &mut T,
    st: &mut LoopState,
    log: &mut MetricsLog,
    epoch: Value,
    metric: &str,
    pb: &indicatif::ProgressBar,
) -> Result<()> {
    let m = task.evaluate()?;
    pb.println(format!(
        "epoch {epoch} (step {}): {}",
        st.step,
        Value::Object(m.clone())
    ));
    log.write(&json!({"step": st.step, "epoch": epoch, "eval": m}));
    if let Some(v) = m.get(metric).and_then(|v| v.as_f64()) {
        if st.best.as_ref().is_none_or(|b| v > b.0) {
            st.best = Some((v, st.step, m.clone()));
        }
    }
    st.last_eval = m;
    st.last_eval_step = Some(st.step);
    Ok(())
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
