//! The optimizer a run trains with, HF Trainer's `optim`: `adamw` (`adamw_torch`) or
//! `adafactor`, behind one face for the training loop, the planner and the bench.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{decays, AdafactorConfig, AdamW, AdamWConfig, StepOutcome};
use crate::autograd::Grads;
use crate::error::{Error, Result};
use crate::optim::adafactor::Adafactor;
use crate::tensor::Tensor;

/// Which optimizer, with its settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimConfig {
    AdamW(AdamWConfig),
    Adafactor(AdafactorConfig),
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig::AdamW(AdamWConfig::default())
    }
}

/// A `true`/`false` value of `--optim-args` (Python's spellings too).
fn flag(key: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "True" | "1" => Ok(true),
        "false" | "False" | "0" => Ok(false),
        _ => Err(Error::msg(format!(
            "--optim-args {key}={v}: expected true or false"
        ))),
    }
}

fn number(key: &str, v: &str) -> Result<f64> {
    v.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(|| Error::msg(format!("--optim-args {key}={v}: expected a number")))
}

impl OptimConfig {
    /// Trainer's `optim` (`adamw`, `adamw_torch`, `adafactor`) with `weight_decay`, and
    /// for Adafactor the `optim_args` string (`key=value,...` with transformers'
    /// `Adafactor` argument names: relative_step, scale_parameter, warmup_init, beta1,
    /// clip_threshold, decay_rate) over Trainer's settings (external lr, no relative
    /// step, no parameter scale).
    pub fn parse(optim: &str, optim_args: Option<&str>, weight_decay: f64) -> Result<OptimConfig> {
        match optim {
            "adamw" | "adamw_torch" => {
                if let Some(a) = optim_args.filter(|a| !a.trim().is_empty()) {
                    return Err(Error::msg(format!(
                        "--optim-args {a:?}: AdamW takes none (they are for --optim adafactor)"
                    )));
                }
                Ok(OptimConfig::AdamW(AdamWConfig {
                    weight_decay,
                    ..AdamWConfig::default()
                }))
            }
            "adafactor" => {
                let mut c = AdafactorConfig::trainer(weight_decay);
                for kv in optim_args.unwrap_or("").split(',').map(str::trim) {
                    if kv.is_empty() {
                        continue;
                    }
                    let (k, v) = kv.split_once('=').ok_or_else(|| {
                        Error::msg(format!("--optim-args {kv:?}: expected key=value"))
                    })?;
                    let (k, v) = (k.trim(), v.trim());
                    match k {
                        "relative_step" => c.relative_step = flag(k, v)?,
                        "scale_parameter" => c.scale_parameter = flag(k, v)?,
                        "warmup_init" => c.warmup_init = flag(k, v)?,
                        "beta1" if matches!(v, "None" | "none") => c.beta1 = None,
                        "beta1" => c.beta1 = Some(number(k, v)?),
                        "clip_threshold" => c.clip_threshold = number(k, v)?,
                        "decay_rate" => c.decay_rate = number(k, v)?,
                        _ => {
                            return Err(Error::msg(format!(
                                "--optim-args {k}: not an Adafactor argument (expected \
                                 relative_step, scale_parameter, warmup_init, beta1, \
                                 clip_threshold or decay_rate)"
                            )))
                        }
                    }
                }
                c.check()
                    .map_err(|e| Error::msg(format!("--optim-args: {e}")))?;
                Ok(OptimConfig::Adafactor(c))
            }
            other => Err(Error::msg(format!(
                "--optim {other:?}: expected adamw (or adamw_torch) or adafactor"
            ))),
        }
    }

    /// The same optimizer with weight decay `wd` (for the decaying group).
    pub fn with_weight_decay(self, wd: f64) -> OptimConfig {
        match self {
            OptimConfig::AdamW(c) => OptimConfig::AdamW(AdamWConfig {
                weight_decay: wd,
                ..c
            }),
            OptimConfig::Adafactor(c) => OptimConfig::Adafactor(AdafactorConfig {
                weight_decay: wd,
                ..c
            }),
        }
    }

    /// Trainer's name of the optimizer.
    pub fn name(&self) -> &'static str {
        match self {
            OptimConfig::AdamW(_) => "adamw",
            OptimConfig::Adafactor(_) => "adafactor",
        }
    }

    /// Does the optimizer set its own step size (Adafactor's `relative_step`), so the
    /// external lr and its schedule are not used?
    pub fn own_schedule(&self) -> bool {
        matches!(self, OptimConfig::Adafactor(c) if c.relative_step)
    }

    /// What a resumed run must share: the optimizer and every setting of it, as one
    /// string (numbers in Rust's shortest round-trip form: a JSON number such as 1e-30
    /// may not read back bit for bit).
    pub fn settings(&self) -> Value {
        Value::String(match self {
            OptimConfig::AdamW(c) => {
                format!("adamw betas=({}, {}) eps={}", c.beta1, c.beta2, c.eps)
            }
            OptimConfig::Adafactor(c) => format!(
                "adafactor eps=({}, {}) clip_threshold={} decay_rate={} beta1={:?} \
                 scale_parameter={} relative_step={} warmup_init={}",
                c.eps.0,
                c.eps.1,
                c.clip_threshold,
                c.decay_rate,
                c.beta1,
                c.scale_parameter,
                c.relative_step,
                c.warmup_init
            ),
        })
    }

    /// What the optimizer's state holds besides the masters, for the memory plan.
    pub fn state_label(&self) -> &'static str {
        match self {
            OptimConfig::AdamW(_) => "AdamW m and v (fp32)",
            OptimConfig::Adafactor(c) if c.beta1.is_some() => {
                "Adafactor factored second moments and m (fp32)"
            }
            OptimConfig::Adafactor(_) => "Adafactor factored second moments (fp32)",
        }
    }
}

/// The optimizer of a run.
pub enum Optimizer {
    AdamW(AdamW),
    Adafactor(Adafactor),
}

impl Optimizer {
    /// `config`'s optimizer over `params`, weight decay by HF Trainer's groups
    /// ([`decays`]).
    pub fn new(params: &[(String, Tensor)], config: OptimConfig) -> Result<Optimizer> {
        Ok(match config {
            OptimConfig::AdamW(c) => Optimizer::AdamW(AdamW::new(params, c, true)?),
            OptimConfig::Adafactor(c) => Optimizer::Adafactor(Adafactor::new(params, c, decays)?),
        })
    }

    /// One update at external learning rate `lr` (see [`AdamW::step`]).
    pub fn step(
        &mut self,
        grads: &Grads,
        lr: f64,
        grad_scale: f64,
        max_grad_norm: Option<f64>,
    ) -> Result<StepOutcome> {
        match self {
            Optimizer::AdamW(o) => o.step(grads, lr, grad_scale, max_grad_norm),
            Optimizer::Adafactor(o) => o.step(grads, lr, grad_scale, max_grad_norm),
        }
    }

    /// The learning rate to report for a step taken at external `lr`: `lr` itself, or
    /// Adafactor's own step size where it sets it (what HF's AdafactorSchedule reports).
    pub fn reported_lr(&self, lr: f64) -> f64 {
        match self {
            Optimizer::Adafactor(o) if o.config.relative_step => o.last_lr().unwrap_or(0.0),
            _ => lr,
        }
    }

    /// Updates applied (the count a resumed run continues from).
    pub fn steps(&self) -> u64 {
        match self {
            Optimizer::AdamW(o) => o.steps(),
            Optimizer::Adafactor(o) => o.steps(),
        }
    }

    pub fn set_steps(&mut self, steps: u64) {
        match self {
            Optimizer::AdamW(o) => o.set_steps(steps),
            Optimizer::Adafactor(o) => o.set_steps(steps),
        }
    }

    /// The state a checkpoint keeps (masters and torch's state names, by parameter).
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        match self {
            Optimizer::AdamW(o) => o.state_tensors(),
            Optimizer::Adafactor(o) => o.state_tensors(),
        }
    }

    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        match self {
            Optimizer::AdamW(o) => o.load_state(state),
            Optimizer::Adafactor(o) => o.load_state(state),
        }
    }
}
