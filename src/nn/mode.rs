//! `Mode`: training (dropout on, masks drawn from a step seed) or evaluation, for every
//! model. Dropout masks are a counter-based hash of (site seed, element), so a mask is
//! never stored: it is re-derived from its seed in backward and in a checkpointed
//! recompute. This file is the one place a step seed becomes a site seed.

use crate::rng::Rng;

/// Training (dropout on, with this step's seed) or evaluation.
///
/// Both spellings callers use name the same value: `Mode::train(seed)` is
/// `Mode::Train { seed }`, `Mode::eval()` is `Mode::Eval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Eval,
    /// `seed` is the base of this step's dropout masks; each dropout site derives its
    /// own with [`Mode::seed_for`].
    Train {
        seed: u64,
    },
}

impl Mode {
    pub fn eval() -> Mode {
        Mode::Eval
    }
    pub fn train(seed: u64) -> Mode {
        Mode::Train { seed }
    }
    pub fn is_train(&self) -> bool {
        matches!(self, Mode::Train { .. })
    }
    /// The dropout probability actually applied (0 in evaluation).
    pub fn p(&self, p: f32) -> f32 {
        if self.is_train() {
            p
        } else {
            0.0
        }
    }
    /// A distinct, reproducible seed for dropout site `site` of this step (0 in
    /// evaluation, where no mask is drawn). The encoders number their sites by
    /// position in the model, T5 in the order its forward reaches them; both hash the
    /// number here, so a given (step seed, site) gives the same mask in every model.
    pub fn seed_for(&self, site: u64) -> u64 {
        // Eval hashed seed 0 before the two Mode types became one; kept so an eval
        // seed passed to an op with p = 0 is the value it always was.
        let seed = match self {
            Mode::Eval => 0,
            Mode::Train { seed } => *seed,
        };
        Rng::new(seed ^ site.wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The site seeds the encoders and T5 have always drawn, as numbers: a change here
    /// moves every dropout mask (and the README's reproducible QA run), so it must fail
    /// loudly.
    #[test]
    fn site_seeds_are_pinned() {
        let m = Mode::train(42);
        let want: [(u64, u64); 5] = [
            (0, 0x021a_94bb_b760_1313),
            (1, 0x85a8_92cf_ddd7_6b25),
            (16, 0xf241_db62_e412_b104),
            (17, 0xcd1d_e5a6_d68c_b35a),
            (18, 0xeb76_0f5f_d4f0_f728),
        ];
        for (site, seed) in want {
            assert_eq!(m.seed_for(site), seed, "site {site}");
        }
        assert_eq!(Mode::eval().seed_for(1), 0x1fa0_0378_fac6_15ee);
        assert_eq!(Mode::train(7), Mode::Train { seed: 7 });
        assert_eq!(Mode::eval(), Mode::Eval);
        assert_eq!(Mode::eval().p(0.1), 0.0);
        assert_eq!(Mode::train(1).p(0.1), 0.1);
    }
}
