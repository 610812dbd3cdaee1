//! Dynamic loss scaling with `torch.amp.GradScaler` semantics: start at 2^16; on a step
//! whose gradients hold inf/NaN, halve the scale and skip the step; after
//! `growth_interval` (2000) clean steps in a row, double it.

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: u64,
    growth_tracker: u64,
    /// Steps skipped because of inf/NaN, for logs.
    pub skipped: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler::new(65536.0, 2.0, 0.5, 2000)
    }
}

impl LossScaler {
    pub fn new(init: f64, growth_factor: f64, backoff_factor: f64, growth_interval: u64) -> Self {
        LossScaler {
            scale: init,
            growth_factor,
            backoff_factor,
            growth_interval,
            growth_tracker: 0,
            skipped: 0,
        }
    }

    /// Clean steps since the last change (torch's `_growth_tracker`).
    pub fn growth_tracker(&self) -> u64 {
        self.growth_tracker
    }

    /// The multiplier to apply to gradients before the update.
    pub fn inv_scale(&self) -> f64 {
        1.0 / self.scale
    }

    /// torch's `_amp_update_scale_`.
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= self.backoff_factor;
            self.growth_tracker = 0;
            self.skipped += 1;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker == self.growth_interval {
                // torch keeps the scale when growing would overflow f32.
                let grown = self.scale * self.growth_factor;
                if (grown as f32).is_finite() {
                    self.scale = grown;
                }
                self.growth_tracker = 0;
            }
        }
    }
}
