//! The settings every `train` task shares (`RunArgs`): their checks, the task defaults
//! they override, and the memory plan they ask for.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args as ClapArgs;

use fusebox::models::step::ModelSource;
use fusebox::optim::OptimConfig;
use fusebox::plan::{self, Plan, Workload};
use fusebox::shape::Target;
use fusebox::train::{parse_duration, prepare_out, Every, OutMode, Resume, TrainConfig};
use fusebox::{DType, Device};

use crate::Precision;

/// Settings every task shares (HF TrainingArguments names where they exist). Unset
/// optional values take the task's defaults: the seed recipe's when fine-tuning, larger
/// steps when training a small model from scratch.
#[derive(ClapArgs, Debug)]
pub(crate) struct RunArgs {
    /// Passes over the training data.
    #[arg(long)]
    pub(crate) epochs: Option<usize>,
    /// Effective batch per optimizer step.
    #[arg(long)]
    pub(crate) batch: Option<usize>,
    /// Micro-batches per optimizer step (--batch is split into this many).
    #[arg(long)]
    pub(crate) grad_accum: Option<usize>,
    /// Peak learning rate (linear warmup, then linear decay to 0). Not used by
    /// Adafactor with relative_step=true in --optim-args, which sets its own step size
    /// (then --lr is refused, as transformers refuses lr with relative_step).
    #[arg(long)]
    pub(crate) lr: Option<f64>,
    /// Weight decay (not applied to biases and LayerNorm weights).
    #[arg(long, default_value_t = 0.01)]
    pub(crate) weight_decay: f64,
    /// The optimizer (HF Trainer's `optim`): adamw (adamw_torch: torch.optim.AdamW) or
    /// adafactor (transformers' Adafactor as Trainer builds it: the --lr schedule,
    /// scale_parameter and relative_step off; factored second moments, so its state is
    /// a small fraction of AdamW's).
    #[arg(long, default_value = "adamw", value_name = "adamw|adafactor")]
    pub(crate) optim: String,
    /// Adafactor's arguments over Trainer's (HF's `optim_args`): key=value,... with
    /// relative_step, scale_parameter, warmup_init (true/false), beta1, clip_threshold,
    /// decay_rate. relative_step=true uses Adafactor's own step size,
    /// min(1e-2, 1/sqrt(step)), instead of --lr and its schedule.
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub(crate) optim_args: Option<String>,
    /// Fraction of the optimizer steps spent warming the learning rate up.
    #[arg(long)]
    pub(crate) warmup_ratio: Option<f64>,
    /// Seeds initialisation, shuffling and dropout.
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// Output directory: checkpoint (HF layout), metrics.jsonl, curves.svg.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub(crate) device: String,
    /// fp16: fp16 weights and activations with fp32 master weights and dynamic loss
    /// scaling (on the CPU, an emulation of the CUDA path: f16 storage, f32 arithmetic).
    #[arg(long, value_enum, default_value = "fp32")]
    pub(crate) precision: Precision,
    /// Total optimizer steps (Trainer's max_steps): overrides --epochs, passing over the
    /// data as many times as it takes.
    #[arg(long)]
    pub(crate) max_steps: Option<usize>,
    /// No progress bar (the metrics still go to metrics.jsonl).
    #[arg(long)]
    pub(crate) quiet: bool,
    /// When to write a checkpoint (`checkpoint-STEP/` in --out: the model in HF layout
    /// plus the trainer state a resume needs): no, epoch or steps (every --save-steps).
    #[arg(long, default_value = "epoch", value_name = "no|epoch|steps")]
    pub(crate) save_strategy: String,
    #[arg(long, value_name = "N")]
    pub(crate) save_steps: Option<usize>,
    /// Checkpoints kept: the newest N (and the best, with --load-best-model-at-end);
    /// 0 keeps every one.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub(crate) save_total_limit: usize,
    /// When to evaluate: no, epoch or steps (every --eval-steps). The final weights are
    /// always evaluated.
    #[arg(long, default_value = "epoch", value_name = "no|epoch|steps")]
    pub(crate) eval_strategy: String,
    #[arg(long, value_name = "N")]
    pub(crate) eval_steps: Option<usize>,
    /// Load the checkpoint with the best --metric-for-best-model before the final save
    /// (needs matching --save-strategy and --eval-strategy).
    #[arg(long)]
    pub(crate) load_best_model_at_end: bool,
    /// The eval metric that ranks checkpoints, greater is better (default: f1 for QA,
    /// rougeL for summarization, bleu for translation).
    #[arg(long, value_name = "METRIC")]
    pub(crate) metric_for_best_model: Option<String>,
    /// Continue an interrupted run: `auto` (the newest complete checkpoint in --out, the
    /// default when the flag has no value) or a checkpoint folder. Model, data, optimizer,
    /// batch, lr, epochs, seed and precision must be the run's; --max-steps, --max-time,
    /// saving, evaluation and --quiet may change.
    #[arg(long, num_args = 0..=1, default_missing_value = "auto", value_name = "auto|DIR")]
    pub(crate) resume: Option<String>,
    /// Save a checkpoint and stop after this long (e.g. 11h30m, 90m, 3600), before a
    /// session's time limit; exits with status 75, continue with --resume.
    #[arg(long, value_name = "DURATION")]
    pub(crate) max_time: Option<String>,
    /// Replace another run's metrics.jsonl, curves.svg, run.json and checkpoints in --out
    /// (without it such a directory is refused).
    #[arg(long, conflicts_with = "resume")]
    pub(crate) overwrite: bool,
    #[command(flatten)]
    pub(crate) mem: crate::memory_args::MemoryArgs,
}

/// A task's defaults for the optional [`RunArgs`].
pub(crate) struct RunDefaults {
    pub(crate) epochs: usize,
    pub(crate) batch: usize,
    pub(crate) grad_accum: usize,
    pub(crate) lr: f64,
    pub(crate) warmup_ratio: f64,
}

impl RunArgs {
    /// The resolved device, the parameter dtype, and whether training is fp16.
    pub(crate) fn device_dtype(&self) -> Result<(Device, DType, bool)> {
        let device = Device::parse(&self.device)?.resolve();
        Ok((device, self.dtype(), self.precision == Precision::Fp16))
    }

    /// The parameters' dtype --precision names.
    fn dtype(&self) -> DType {
        match self.precision {
            Precision::Fp16 => DType::F16,
            Precision::Fp32 => DType::F32,
        }
    }

    /// The memory plan for `spec` at lengths `seq` (→ `tgt` for T5), fitted to
    /// --vram-budget / --gpu when given (which rewrites the batch split in `cfg`).
    /// Plans for the longest batch the training data makes (dynamic padding). On the
    /// CPU, a run whose plan does not fit in the memory available is refused; `rows`,
    /// the training rows, bounds the micro-batch that check assumes.
    pub(crate) fn memory_plan(
        &self,
        spec: &ModelSource,
        cfg: &mut TrainConfig,
        (seq, tgt): (usize, usize),
        rows: usize,
        device: Device,
    ) -> Result<Plan> {
        let dtype = self.dtype();
        let budget = self.mem.budget()?;
        let accum = cfg.grad_accum.max(1);
        let base = Workload {
            micro_batch: (cfg.batch / accum).max(1),
            grad_accum: accum,
            seq_len: seq,
            tgt_len: tgt,
            dtype,
            checkpointing: self.mem.checkpointing,
            infer: false,
            optim: cfg.optim,
            target: self.mem.target(device),
        };
        let plan = plan::plan_or_fit(spec, budget, cfg.batch, &base)?;
        if device == Device::Cpu && plan.work.target == Target::Cpu && !self.mem.plan {
            // No batch holds more rows than the data has.
            let largest = if plan.work.micro_batch > rows.max(1) {
                let work = Workload {
                    micro_batch: rows.max(1),
                    ..plan.work
                };
                plan::predict(spec, &work, cfg.batch)?
            } else {
                plan.clone()
            };
            // The model is loaded by now: its bytes are in the plan but no longer free.
            let held = fusebox::backend::tracker::live_bytes(Device::Cpu);
            crate::memory_args::check_cpu_memory(
                &largest,
                held,
                "this training run",
                "lower --batch (or raise --grad-accum), shorten the sequences, or add --checkpointing",
            )?;
        }
        if budget.is_some() {
            cfg.grad_accum = plan.work.grad_accum;
            cfg.batch = plan.work.micro_batch * plan.work.grad_accum;
            if !self.mem.plan {
                eprint!("{}", plan.table());
                crate::memory_args::cap_cuda(device, budget, &plan)?;
            }
        }
        if self.mem.plan {
            print!("{}", plan.table());
        }
        cfg.memory_plan = Some(plan.clone());
        Ok(plan)
    }

    /// Before a model is built on the CPU: refuse one this machine cannot hold even to
    /// train on a single one-token sequence (weights, gradients, optimizer state), with the
    /// plan's table, instead of letting an allocation abort the process.
    pub(crate) fn check_model_fits_cpu(&self, spec: &ModelSource, device: Device) -> Result<()> {
        if device != Device::Cpu {
            return Ok(());
        }
        let smallest = Workload {
            micro_batch: 1,
            grad_accum: 1,
            seq_len: 1,
            tgt_len: 1,
            dtype: self.dtype(),
            checkpointing: false,
            infer: false,
            target: Target::Cpu,
            optim: self.optim()?,
        };
        let plan = plan::predict(spec, &smallest, 1)?;
        crate::memory_args::check_cpu_memory(
            &plan,
            0,
            "this model, trained on a single one-token sequence,",
            "the model itself is too large: choose a smaller one",
        )
    }

    /// Do --vram-budget / --gpu choose the micro-batch split (overriding --grad-accum)?
    fn fitted(&self) -> bool {
        self.mem.vram_budget.is_some() || self.mem.gpu.is_some()
    }

    /// Refuse flags no task default can make right, before any data is read.
    pub(crate) fn check_flags(&self) -> Result<()> {
        if self.batch == Some(0) || self.grad_accum == Some(0) {
            bail!("--batch and --grad-accum must be at least 1");
        }
        if let (Some(b), Some(g), false) = (self.batch, self.grad_accum, self.fitted()) {
            if !b.is_multiple_of(g) {
                bail!("--batch {b} does not split into --grad-accum {g} equal micro-batches");
            }
        }
        if self.epochs == Some(0) || self.max_steps == Some(0) {
            bail!("--epochs and --max-steps must be at least 1");
        }
        if let Some(lr) = self.lr.filter(|lr| !(lr.is_finite() && *lr > 0.0)) {
            bail!("--lr must be a positive number, got {lr}");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!(
                "--weight-decay must be 0 or more, got {}",
                self.weight_decay
            );
        }
        if let Some(w) = self.warmup_ratio.filter(|w| !(0.0..=1.0).contains(w)) {
            bail!("--warmup-ratio must be in [0, 1], got {w}");
        }
        if let (true, Some(lr)) = (self.optim()?.own_schedule(), self.lr) {
            bail!(
                "--lr {lr} with --optim adafactor and relative_step=true: Adafactor sets its \
                 own step size then (transformers refuses lr with relative_step); drop --lr"
            );
        }
        Ok(())
    }

    /// The optimizer --optim and --optim-args name, with --weight-decay.
    pub(crate) fn optim(&self) -> Result<OptimConfig> {
        Ok(OptimConfig::parse(
            &self.optim,
            self.optim_args.as_deref(),
            self.weight_decay,
        )?)
    }

    /// The run's settings: the flags (checked by `check_flags`) over the task's defaults,
    /// with a batch that splits evenly into the micro-batches.
    pub(crate) fn train_config(
        &self,
        d: RunDefaults,
        out: PathBuf,
        fp16: bool,
    ) -> Result<TrainConfig> {
        let batch = self.batch.unwrap_or(d.batch).max(1);
        let grad_accum = match self.grad_accum {
            Some(g) if !self.fitted() && !batch.is_multiple_of(g) => bail!(
                "{} does not split into --grad-accum {g} equal micro-batches",
                match self.batch {
                    Some(_) => format!("--batch {batch}"),
                    None => format!("the task's default batch {batch} (set --batch)"),
                }
            ),
            Some(g) => g,
            // The task's default split where it divides the batch, else the next split
            // that does: the batch stays what was asked, and the micro-batch no larger
            // than the default's would be at that batch.
            None => (d.grad_accum.max(1)..=batch)
                .find(|g| batch.is_multiple_of(*g))
                .unwrap_or(batch),
        };
        let lr = self.lr.unwrap_or(d.lr);
        let warmup_ratio = self.warmup_ratio.unwrap_or(d.warmup_ratio);
        Ok(TrainConfig {
            epochs: self.epochs.unwrap_or(d.epochs),
            batch,
            grad_accum,
            lr,
            weight_decay: self.weight_decay,
            optim: self.optim()?,
            warmup_ratio,
            max_grad_norm: Some(1.0),
            seed: self.seed,
            out_dir: out,
            loss_scaling: fp16,
            log_every: 10,
            max_steps: self.max_steps,
            quiet: self.quiet,
            memory_plan: None,
            eval_strategy: Every::parse("eval", &self.eval_strategy, self.eval_steps)?,
            save_strategy: Every::parse("save", &self.save_strategy, self.save_steps)?,
            save_total_limit: (self.save_total_limit > 0).then_some(self.save_total_limit),
            load_best_model_at_end: self.load_best_model_at_end,
            metric_for_best_model: self.metric_for_best_model.clone(),
            resume: self.resume.as_deref().map(|r| match r {
                "auto" => Resume::Auto,
                dir => Resume::Dir(PathBuf::from(dir)),
            }),
            max_time: self.max_time.as_deref().map(parse_duration).transpose()?,
            settings: serde_json::Value::Null,
        })
    }

    /// Make `out` ready before anything is written to it: refused when it is the model
    /// being trained (`model`, a directory) or holds another run's files, unless
    /// --overwrite or --resume says what to do with them.
    pub(crate) fn prepare_out(&self, out: &std::path::Path, model: Option<&str>) -> Result<()> {
        if self.mem.plan {
            return Ok(()); // a plan trains nothing and writes no run files
        }
        let mode = match (self.resume.is_some(), self.overwrite) {
            (true, _) => OutMode::Resume,
            (false, true) => OutMode::Overwrite,
            (false, false) => OutMode::New,
        };
        let model = model.map(std::path::Path::new).filter(|p| p.is_dir());
        Ok(prepare_out(out, model, mode)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    /// The settings `args` give over T5 fine-tuning's defaults (batch 8 in 4 micro-batches).
    fn split(args: &[&str]) -> Result<(usize, usize)> {
        let cli = Cli::try_parse_from(std::iter::once("train").chain(args.iter().copied()))?;
        cli.run.check_flags()?;
        let d = RunDefaults {
            epochs: 3,
            batch: 8,
            grad_accum: 4,
            lr: 3e-5,
            warmup_ratio: 0.0,
        };
        let c = cli.run.train_config(d, PathBuf::from("out"), false)?;
        Ok((c.batch, c.grad_accum))
    }

    #[test]
    fn the_batch_splits_evenly_and_stays_what_was_asked() {
        assert_eq!(split(&[]).unwrap(), (8, 4));
        assert_eq!(split(&["--batch", "16"]).unwrap(), (16, 4));
        // The default split does not divide: the next one that does (micro-batch 2, 1).
        assert_eq!(split(&["--batch", "10"]).unwrap(), (10, 5));
        assert_eq!(split(&["--batch", "7"]).unwrap(), (7, 7));
        assert_eq!(split(&["--batch", "2"]).unwrap(), (2, 2));
        assert_eq!(
            split(&["--batch", "12", "--grad-accum", "3"]).unwrap(),
            (12, 3)
        );
        let e = split(&["--batch", "10", "--grad-accum", "4"]).unwrap_err();
        assert!(e.to_string().contains("--batch 10"), "{e}");
        let e = split(&["--grad-accum", "3"]).unwrap_err();
        assert!(e.to_string().contains("default batch 8"), "{e}");
        // A card or budget picks the split itself.
        assert!(split(&["--batch", "10", "--grad-accum", "4", "--gpu", "t4"]).is_ok());
        for bad in [
            &["--batch", "0"][..],
            &["--lr=-1"],
            &["--lr", "NaN"],
            &["--warmup-ratio", "1.5"],
            &["--weight-decay=-0.1"],
            &["--epochs", "0"],
        ] {
            assert!(split(bad).is_err(), "{bad:?}");
        }
    }
}
