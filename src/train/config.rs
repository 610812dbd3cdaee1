//! The settings of a training run (HF TrainingArguments' names where they exist), and
//! the part of them a resumed run must share with its checkpoint.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use super::Task;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// When to evaluate or save (HF's `IntervalStrategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Every {
    No,
    Epoch,
    Steps(usize),
}

impl Every {
    /// From a flag's value (`no`, `epoch`, `steps`) and its `--*-steps` count.
    pub fn parse(flag: &str, value: &str, steps: Option<usize>) -> Result<Every> {
        match (value, steps) {
            ("no", _) => Ok(Every::No),
            ("epoch", _) => Ok(Every::Epoch),
            ("steps", Some(n)) if n > 0 => Ok(Every::Steps(n)),
            ("steps", _) => Err(Error::msg(format!(
                "--{flag}-strategy steps needs --{flag}-steps N (N >= 1)"
            ))),
            (other, _) => Err(Error::msg(format!(
                "--{flag}-strategy {other:?}: expected no, epoch or steps"
            ))),
        }
    }

    /// Is step `step` (1-based) one of this schedule's steps?
    pub fn at_step(self, step: usize) -> bool {
        matches!(self, Every::Steps(k) if step.is_multiple_of(k))
    }
}

/// Which checkpoint a run continues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// The newest complete checkpoint in the output directory.
    Auto,
    /// This checkpoint folder.
    Dir(PathBuf),
}

/// Settings shared by every task.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Effective batch (per optimizer step).
    pub batch: usize,
    /// Micro-batches per optimizer step; `batch / grad_accum` rows each.
    pub grad_accum: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// The optimizer (Trainer's `optim`); its weight decay is `weight_decay`.
    pub optim: crate::optim::OptimConfig,
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
    pub eval_strategy: Every,
    pub save_strategy: Every,
    /// Checkpoints kept (the newest; plus the best one when it is loaded at the end).
    pub save_total_limit: Option<usize>,
    /// Load the checkpoint with the best `metric_for_best_model` before the final save.
    pub load_best_model_at_end: bool,
    /// The eval metric that ranks checkpoints (greater is better); None: the task's
    /// headline metric.
    pub metric_for_best_model: Option<String>,
    pub resume: Option<Resume>,
    /// Save and stop this long after the start (a session's time limit).
    pub max_time: Option<Duration>,
    /// What else a resumed run must share (the binaries put the model they train here).
    pub settings: Value,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 3,
            batch: 16,
            grad_accum: 1,
            lr: 2e-5,
            weight_decay: 0.01,
            optim: crate::optim::OptimConfig::default(),
            warmup_ratio: 0.0,
            max_grad_norm: Some(1.0),
            seed: 42,
            out_dir: PathBuf::from("out"),
            loss_scaling: false,
            log_every: 10,
            max_steps: None,
            quiet: false,
            memory_plan: None,
            eval_strategy: Every::Epoch,
            save_strategy: Every::Epoch,
            save_total_limit: Some(2),
            load_best_model_at_end: false,
            metric_for_best_model: None,
            resume: None,
            max_time: None,
            settings: Value::Null,
        }
    }
}

/// FNV-1a over 64-bit words: a stable fingerprint (not a security hash) of data a
/// resumed run must share.
pub fn fingerprint(words: impl IntoIterator<Item = u64>) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for w in words {
        for b in w.to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

impl TrainConfig {
    /// Refuse combinations HF refuses too.
    pub fn check(&self) -> Result<()> {
        if self.load_best_model_at_end {
            if self.save_strategy == Every::No {
                return Err(Error::msg(
                    "--load-best-model-at-end needs checkpoints: --save-strategy epoch or steps",
                ));
            }
            if self.save_strategy != self.eval_strategy {
                return Err(Error::msg(format!(
                    "--load-best-model-at-end needs --save-strategy and --eval-strategy to \
                     match (got {:?} and {:?}), so every checkpoint has its evaluation",
                    self.save_strategy, self.eval_strategy
                )));
            }
        }
        Ok(())
    }

    /// The optimizer as the resume settings name it: `"adamw"` (as checkpoints made
    /// before Adafactor have it), or Adafactor and every setting of it.
    fn optim_settings(&self) -> Value {
        match self.optim {
            crate::optim::OptimConfig::AdamW(_) => json!("adamw"),
            o => o.settings(),
        }
    }

    /// The settings a resumed run must share with its checkpoint: model (its parameters'
    /// names and shapes, and what the binary names), data (the task's fingerprint of its
    /// training rows, which covers the tokenizer), optimizer and its settings, batch and
    /// accumulation, lr and schedule, epochs, seed, precision. Free to change: max steps,
    /// max time, saving, evaluation, quiet.
    pub fn resume_settings<T: Task>(&self, task: &T, params: &[(String, Tensor)]) -> Value {
        let shapes = params.iter().flat_map(|(name, t)| {
            let dtype = t.dtype() as u64;
            name.bytes()
                .map(u64::from)
                .chain(t.dims().iter().map(|&d| d as u64))
                .chain([dtype, u64::MAX])
                .collect::<Vec<_>>()
        });
        json!({
            "model": self.settings,
            "parameters": fingerprint(shapes),
            "train_rows": task.train_len(),
            "data": task.data_fingerprint(),
            "optimizer": self.optim_settings(),
            "epochs": self.epochs,
            "batch": self.batch,
            "grad_accum": self.grad_accum,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "warmup_ratio": self.warmup_ratio,
            "max_grad_norm": self.max_grad_norm,
            "seed": self.seed,
            "loss_scaling": self.loss_scaling,
        })
    }
}
