//! `transformers.get_linear_schedule_with_warmup`: lr rises linearly from 0 over
//! `warmup` steps, then falls linearly to 0 at `total`. Step indices are 0-based: the
//! first optimizer step uses `lr_at(0)` (which is 0 when warmup > 0, as in HF, because
//! the scheduler steps after the optimizer).

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearSchedule {
    pub base_lr: f64,
    pub warmup: u64,
    pub total: u64,
}

impl LinearSchedule {
    pub fn new(base_lr: f64, warmup: u64, total: u64) -> LinearSchedule {
        LinearSchedule {
            base_lr,
            warmup,
            total,
        }
    }

    /// Warmup as HF Trainer derives it from `warmup_ratio`: ceil(ratio · total).
    pub fn from_ratio(base_lr: f64, ratio: f64, total: u64) -> LinearSchedule {
        let warmup = (ratio * total as f64).ceil() as u64;
        LinearSchedule::new(base_lr, warmup, total)
    }

    pub fn factor(&self, step: u64) -> f64 {
        if step < self.warmup {
            return step as f64 / self.warmup.max(1) as f64;
        }
        let rem = self.total.saturating_sub(step) as f64;
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        (rem / span).max(0.0)
    }

    pub fn lr_at(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step)
    }
}
