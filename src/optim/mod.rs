//! Optimisation: AdamW with torch semantics and HF Trainer's parameter groups, the
//! linear warmup/decay schedule, global-norm clipping, and the dynamic loss scaler.

pub mod adamw;
pub mod scaler;
pub mod schedule;
pub mod step;

pub use adamw::{decays, global_grad_norm, AdamW, AdamWConfig, StepOutcome};
pub use scaler::LossScaler;
pub use schedule::LinearSchedule;
pub use step::{accumulate_and_step, StepReport};
