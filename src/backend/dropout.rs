//! The dropout mask both backends (and the kernels) draw: a counter-based hash of
//! (seed, element index), so backward re-derives the mask from the seed.

/// The dropout mask both backends draw: element `i` is kept when this returns true.
///
/// The per-element hash is 32-bit (the GPU's integer units do 32-bit multiplies natively;
/// a 64-bit multiply is several instructions, and the fused attention kernels draw one
/// decision per probability, so a splitmix64 per element cost ~57 % of the forward's
/// time at DistilBERT's shape): the seed is mixed once by splitmix64 into a multiplier
/// `m` (odd) and an offset `a` ([`dropout_key`], hoisted out of the kernels' loops),
/// the index folded to 32 bits, `h = lowbias32(x·m + a)` (Wellons' lowbias32), and its
/// top 24 bits are a uniform in [0, 1) compared with `p`. Statistics: tests below.
/// kernels/common.cuh and kernels/attention.cu compute the same expression bit for bit.
pub fn dropout_keep(seed: u64, i: u64, p: f32) -> bool {
    dropout_keep_keyed(dropout_key(seed), i, p)
}

/// The per-seed half of [`dropout_keep`]: (odd multiplier, offset) from splitmix64(seed).
pub fn dropout_key(seed: u64) -> (u32, u32) {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z as u32) | 1, (z >> 32) as u32)
}

/// [`dropout_key`] as the CUDA kernels take it: `m | a << 32` in their `key` argument
/// (mixed once on the host, so a kernel reads m and a from its parameters).
pub fn dropout_key_packed(seed: u64) -> u64 {
    let (m, a) = dropout_key(seed);
    m as u64 | (a as u64) << 32
}

/// [`dropout_keep`] with the seed already mixed by [`dropout_key`].
#[inline]
pub fn dropout_keep_keyed(key: (u32, u32), i: u64, p: f32) -> bool {
    let x = (i as u32) ^ ((i >> 32) as u32).wrapping_mul(0x85EB_CA6B);
    let mut h = x.wrapping_mul(key.0).wrapping_add(key.1);
    h ^= h >> 16;
    h = h.wrapping_mul(0x7FEB_352D);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846C_A68B);
    h ^= h >> 16;
    ((h >> 8) as f32) * (1.0 / 16_777_216.0) >= p
}

#[cfg(test)]
mod tests {
    use super::{dropout_keep, dropout_keep_keyed, dropout_key};

    /// |observed - expected| within `k` binomial standard deviations of n draws.
    fn close(count: usize, n: usize, prob: f64, k: f64) -> bool {
        let sd = (n as f64 * prob * (1.0 - prob)).sqrt();
        (count as f64 - n as f64 * prob).abs() <= k * sd
    }

    #[test]
    fn keep_rate_pairs_and_seeds_look_independent() {
        let n = 200_000usize;
        for &p in &[0.1f32, 0.5, 0.9] {
            for seed in [0u64, 1, 2, 0xdead_beef, u64::MAX, 1 << 40] {
                let q = 1.0 - p as f64;
                let m: Vec<bool> = (0..n as u64).map(|i| dropout_keep(seed, i, p)).collect();
                let kept = m.iter().filter(|&&k| k).count();
                assert!(close(kept, n, q, 5.0), "p={p} seed={seed}: kept {kept}/{n}");
                // Neighbours (i, i+1) and (i, i+64): both kept with probability q².
                for lag in [1usize, 64] {
                    let both = (0..n - lag).filter(|&i| m[i] && m[i + lag]).count();
                    assert!(
                        close(both, n - lag, q * q, 5.0),
                        "p={p} seed={seed} lag={lag}"
                    );
                }
                // The next seed (as dropout sites get them): agreement like two coins.
                let other = (0..n as u64)
                    .filter(|&i| m[i as usize] && dropout_keep(seed.wrapping_add(1), i, p))
                    .count();
                assert!(
                    close(other, n, q * q, 5.0),
                    "p={p} seeds {seed}, +1: {other}"
                );
            }
        }
        // Indices past 2^32 are drawn too (attention over B·H·Lq·Lk can get there).
        let hi = (1u64 << 32..(1u64 << 32) + 100_000)
            .filter(|&i| dropout_keep(7, i, 0.5))
            .count();
        assert!(close(hi, 100_000, 0.5, 5.0), "{hi}");
    }

    #[test]
    fn packed_key_holds_both_halves() {
        let (m, a) = dropout_key(9);
        assert_eq!(super::dropout_key_packed(9), m as u64 | (a as u64) << 32);
        assert_eq!(m & 1, 1, "the multiplier is odd (a bijection of the index)");
    }

    /// The first 64 decisions of seed 12345 at p = 0.5 (bit k = element base + k), from an
    /// independent Python transcription of the hash; dev/cuda/emu/check.cpp asserts the same
    /// words for fb_dropout_keep, which ties the CUDA copy to this one without a GPU.
    pub(crate) const GOLDEN: [(u64, u64); 2] = [
        (0, 0x108f_841e_c86e_69ae),
        ((1 << 32) | 5, 0x15fc_12c8_9560_c12f),
    ];

    #[test]
    fn matches_the_independent_transcription() {
        for (base, want) in GOLDEN {
            let got = (0..64).fold(0u64, |acc, k| {
                acc | ((dropout_keep(12345, base + k, 0.5) as u64) << k)
            });
            assert_eq!(got, want, "base {base}");
        }
    }

    #[test]
    fn keyed_form_is_the_same_decision_and_p_bounds_hold() {
        let key = dropout_key(42);
        for i in (0..5000u64).chain([u32::MAX as u64, 1 << 33, u64::MAX]) {
            assert_eq!(dropout_keep(42, i, 0.3), dropout_keep_keyed(key, i, 0.3));
            assert!(dropout_keep(42, i, 0.0), "p = 0 keeps everything");
            assert!(!dropout_keep(42, i, 1.0), "p = 1 keeps nothing");
        }
    }
}
