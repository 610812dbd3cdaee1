//! Optimisation: AdamW with torch semantics and HF Trainer's parameter groups,
//! transformers' Adafactor, the linear warmup/decay schedule, global-norm clipping, and
//! the dynamic loss scaler.

pub mod adafactor;
pub mod adamw;
mod optimizer;
pub mod scaler;
pub mod schedule;
mod slots;
pub mod step;

pub use adafactor::{Adafactor, AdafactorConfig};
pub use adamw::{decays, AdamW, AdamWConfig};
pub use optimizer::{OptimConfig, Optimizer};
pub use scaler::LossScaler;
pub use schedule::LinearSchedule;
pub use slots::{global_grad_norm, StepOutcome};
pub use step::{accumulate_and_step, StepReport};
