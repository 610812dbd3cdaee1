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
    fn erf(self) -> Self;
    fn slice(d: &CpuData) -> Option<&[Self]>;
    fn slice_mut(d: &mut CpuData) -> Option<&mut [Self]>;
    fn wrap(v: Vec<Self>) -> CpuData;
}

/// `Real` for `$t`, held in `CpuData::$variant`: the conversions and `erf` given, the
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
    fn erf(self) -> f32 {
        libm::erff(self)
    }
});

real!(f64, F64, {
    fn of(x: f64) -> f64 {
        x
    }
    fn f64(self) -> f64 {
        self
    }
    fn erf(self) -> f64 {
        libm::erf(self)
    }
});
