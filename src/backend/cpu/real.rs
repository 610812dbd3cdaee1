//! The float types the CPU backend computes in, behind one trait so each op family is
//! written once: f32 (what users train on, and what f16 is emulated in) and f64 (what
//! gradchecks use).

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{AddAssign, MulAssign, SubAssign};

use super::CpuData;
use crate::shape::DType;

/// The float types the CPU backend computes in. One generic body per op keeps the f32
/// path (what users train on) and the f64 path (what gradchecks use) identical.
pub(crate) trait Real:
    num_traits::Float
    + Send
    + Sync
    + Debug
    + Default
    + Sum
    + AddAssign
    + SubAssign
    + MulAssign
    + 'static
{
    const DTYPE: DType;
    fn of(x: f64) -> Self;
    fn f64(self) -> f64;
    /// `exp(self)` for the softmax's arguments (`x − max`, at most 0; -inf gives 0): in
    /// f32 a branch-free polynomial that vectorises, within 2 ulp of `exp` down to
    /// f32's smallest normal and 0 below; in f64 `exp` itself.
    fn exp_nonpos(self) -> Self;
    /// `erf(self)` in a form that vectorises: in f32 a rational approximation (below),
    /// in f64 `erf` itself.
    fn erf_vec(self) -> Self;
    fn slice(d: &CpuData) -> Option<&[Self]>;
    fn slice_mut(d: &mut CpuData) -> Option<&mut [Self]>;
    fn wrap(v: Vec<Self>) -> CpuData;
}

/// `Real` for `$t`, held in `CpuData::$variant`: the conversions and the vectorisable `exp`/`erf` given, the
/// buffer access written once for both types.
macro_rules! real {
    ($t:ty, $variant:ident, { $($conv:tt)* }) => {
        impl Real for $t {
            const DTYPE: DType = DType::$variant;
            $($conv)*
            fn slice(d: &CpuData) -> Option<&[$t]> {
                match d {
                    CpuData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(d: &mut CpuData) -> Option<&mut [$t]> {
                match d {
                    CpuData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap(v: Vec<$t>) -> CpuData {
                CpuData::$variant(v)
            }
        }
    };
}

real!(f32, F32, {
    fn of(x: f64) -> f32 {
        x as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn exp_nonpos(self) -> f32 {
        exp_f32(self)
    }
    #[inline(always)]
    fn erf_vec(self) -> f32 {
        erf_f32(self)
    }
});

real!(f64, F64, {
    fn of(x: f64) -> f64 {
        x
    }
    fn f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn exp_nonpos(self) -> f64 {
        self.exp()
    }
    #[inline(always)]
    fn erf_vec(self) -> f64 {
        libm::erf(self)
    }
});

/// Cephes' `expf`: x = n·ln2 + r with |r| ≤ ln2/2 (ln2 in two parts, so r is exact), a
/// degree-6 polynomial for e^r, and 2^n put into the exponent bits. Every step is a plain
/// float or integer operation with no branch, so a loop of it vectorises. Inputs are
/// clamped to [-88, 88] (2^n stays a normal number or 0); past 88 the result is e^88,
/// which the softmax's arguments (at most 0) never reach. NaN stays NaN.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2^23 rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-88.0, 88.0);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    let ni = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let scale = f32::from_bits(((ni + 127).max(0) as u32) << 23);
    if x.is_nan() {
        x
    } else {
        y * scale
    }
}

/// erf(x) ≈ x·P(x²)/Q(x²) on [-4, 4] (±1 beyond, as f32 rounds it), the rational
/// approximation Eigen and XLA use for f32 (`generic_fast_erf_float`): no branch, no
/// table, so a loop of it vectorises; within 5e-7 of `erf` (tested in simd.rs).
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_474e-2;
    x * p / q
}
