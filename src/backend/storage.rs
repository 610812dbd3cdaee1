//! `Storage`, the buffer a `Tensor` holds: one variant per backend, and the dispatch of
//! each primitive to the backend both (or all) operands live on, with a typed error when
//! they do not. The data-movement, elementwise, layout and optimizer primitives are here;
//! the layer primitives (GEMM, norms, losses, attention, span search) in storage_nn.rs.

use super::cpu::CpuStorage;
use super::cuda::CudaStorage;
use super::meta::MetaStorage;
use super::{AdafactorState, AdafactorStep, AdamWState, AdamWStep, AttnArgs, AttnSaved};
use super::{BackendStorage, BinaryOp, MatmulSpec};
use super::{LinearDims, ResidualNorm, SpanCandidate, UnaryOp};
use crate::error::{Error, Result};
use crate::shape::{DType, Device};

/// A buffer on one backend. This is what `Tensor` holds.
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
    /// Shape and dtype only (the planner's device): see `backend::meta`.
    Meta(MetaStorage),
}

pub(super) fn mismatch(op: &'static str, a: Device, b: Device) -> Error {
    Error::DeviceMismatch { op, a, b }
}

/// The one dispatch of the crate: `$x` is the `CpuStorage`, `CudaStorage` or
/// `MetaStorage` in turn, so the body is written once against `Variant` and
/// `BackendStorage` (its other operands through [`same`] and friends, its results
/// through `wrap`).
macro_rules! per_backend {
    ($s:expr, |$x:ident| $body:expr) => {
        match $s {
            Storage::Cpu($x) => $body,
            Storage::Cuda($x) => $body,
            Storage::Meta($x) => $body,
        }
    };
}

pub(super) use per_backend;

/// A backend's buffer type as a variant of [`Storage`].
pub(super) trait Variant: BackendStorage + 'static {
    fn of(s: &Storage) -> Option<&Self>;
    fn of_mut(s: &mut Storage) -> Option<&mut Self>;
    fn wrap(self) -> Storage;
}

macro_rules! variant {
    ($ty:ty, $name:ident) => {
        impl Variant for $ty {
            fn of(s: &Storage) -> Option<&Self> {
                match s {
                    Storage::$name(x) => Some(x),
                    _ => None,
                }
            }
            fn of_mut(s: &mut Storage) -> Option<&mut Self> {
                match s {
                    Storage::$name(x) => Some(x),
                    _ => None,
                }
            }
            fn wrap(self) -> Storage {
                Storage::$name(self)
            }
        }
    };
}

variant!(CpuStorage, Cpu);
variant!(CudaStorage, Cuda);
variant!(MetaStorage, Meta);

/// Operand `s` of `op` on the backend of `x`, or the device-mismatch error.
pub(super) fn same<'a, B: Variant>(op: &'static str, x: &B, s: &'a Storage) -> Result<&'a B> {
    B::of(s).ok_or_else(|| mismatch(op, x.device(), s.device()))
}

/// [`same`] for an optional operand.
pub(super) fn same_opt<'a, B: Variant>(
    op: &'static str,
    x: &B,
    s: Option<&'a Storage>,
) -> Result<Option<&'a B>> {
    s.map(|s| same(op, x, s)).transpose()
}

/// [`same`] for an operand written in place.
pub(super) fn same_mut<'a, B: Variant>(
    op: &'static str,
    dev: Device,
    s: &'a mut Storage,
) -> Result<&'a mut B> {
    let got = s.device();
    B::of_mut(s).ok_or_else(|| mismatch(op, dev, got))
}

/// An argument of a `Storage` method as backend `B`'s method takes it: a `Storage`
/// operand (plain, optional or written in place) becomes `B`'s buffer, or the
/// device-mismatch error naming `op`; any other argument passes through as it is.
pub(super) trait Operand<'a, B> {
    type Out;
    fn on(self, op: &'static str, x: &B) -> Result<Self::Out>;
}

impl<'a, B: Variant> Operand<'a, B> for &'a Storage {
    type Out = &'a B;
    fn on(self, op: &'static str, x: &B) -> Result<&'a B> {
        same(op, x, self)
    }
}

impl<'a, B: Variant> Operand<'a, B> for Option<&'a Storage> {
    type Out = Option<&'a B>;
    fn on(self, op: &'static str, x: &B) -> Result<Option<&'a B>> {
        same_opt(op, x, self)
    }
}

impl<'a, B: Variant> Operand<'a, B> for &'a mut Storage {
    type Out = &'a mut B;
    fn on(self, op: &'static str, x: &B) -> Result<&'a mut B> {
        same_mut(op, x.device(), self)
    }
}

impl<'a, B: Variant> Operand<'a, B> for Option<&'a mut Storage> {
    type Out = Option<&'a mut B>;
    fn on(self, op: &'static str, x: &B) -> Result<Option<&'a mut B>> {
        self.map(|s| same_mut(op, x.device(), s)).transpose()
    }
}

impl<'a, B: Variant> Operand<'a, B> for AdamWState<'a, Storage> {
    type Out = AdamWState<'a, B>;
    fn on(self, op: &'static str, x: &B) -> Result<AdamWState<'a, B>> {
        let working = self
            .working
            .map(|w| same_mut(op, x.device(), w))
            .transpose()?;
        let (m, v) = (
            same_mut(op, x.device(), self.m)?,
            same_mut(op, x.device(), self.v)?,
        );
        Ok(AdamWState::new(m, v, working))
    }
}

/// An Adafactor state's buffers as backend `B`'s (all on `dev`).
pub(super) fn adafactor_state_on<'a, B: Variant>(
    op: &'static str,
    dev: Device,
    st: AdafactorState<'a, Storage>,
) -> Result<AdafactorState<'a, B>> {
    let opt = |s: Option<&'a mut Storage>| s.map(|s| same_mut(op, dev, s)).transpose();
    Ok(AdafactorState {
        row: same_mut(op, dev, st.row)?,
        col: opt(st.col)?,
        exp_avg: opt(st.exp_avg)?,
        working: opt(st.working)?,
        rows_cols: st.rows_cols,
        weight_decay: st.weight_decay,
    })
}

impl<'a, B: Variant> Operand<'a, B> for AdafactorState<'a, Storage> {
    type Out = AdafactorState<'a, B>;
    fn on(self, op: &'static str, x: &B) -> Result<AdafactorState<'a, B>> {
        adafactor_state_on(op, x.device(), self)
    }
}

impl<'a, B: Variant> Operand<'a, B> for AttnArgs<'a, Storage> {
    type Out = AttnArgs<'a, B>;
    fn on(self, op: &'static str, x: &B) -> Result<AttnArgs<'a, B>> {
        let (key_mask, bias) = (same_opt(op, x, self.key_mask)?, same_opt(op, x, self.bias)?);
        Ok(AttnArgs::new(key_mask, bias, self.spec))
    }
}

impl<'a, B: Variant> Operand<'a, B> for AttnSaved<'a, Storage> {
    type Out = AttnSaved<'a, B>;
    fn on(self, op: &'static str, x: &B) -> Result<AttnSaved<'a, B>> {
        let [out, lse, dout] = [self.out, self.lse, self.dout].map(|s| same(op, x, s));
        Ok(AttnSaved::new(out?, lse?, dout?))
    }
}

macro_rules! pass_through {
    ($($t:ty),*) => {$(
        impl<'a, B> Operand<'a, B> for $t {
            type Out = $t;
            fn on(self, _op: &'static str, _x: &B) -> Result<$t> {
                Ok(self)
            }
        }
    )*};
}

pass_through!(
    usize,
    i32,
    f32,
    f64,
    u64,
    Option<usize>,
    DType,
    BinaryOp,
    UnaryOp
);
pass_through!(
    &'a [usize],
    &'a MatmulSpec,
    &'a AdamWStep,
    &'a AdafactorStep,
    LinearDims,
    ResidualNorm
);

/// A backend method's result as `Storage`'s: each buffer wrapped in its variant.
pub(super) trait Lift {
    type Out;
    fn lift(self) -> Self::Out;
}

impl<B: Variant> Lift for B {
    type Out = Storage;
    fn lift(self) -> Storage {
        self.wrap()
    }
}

impl<T: Lift> Lift for Option<T> {
    type Out = Option<T::Out>;
    fn lift(self) -> Self::Out {
        self.map(Lift::lift)
    }
}

impl<A: Lift, C: Lift> Lift for (A, C) {
    type Out = (A::Out, C::Out);
    fn lift(self) -> Self::Out {
        (self.0.lift(), self.1.lift())
    }
}

impl<A: Lift, C: Lift, D: Lift> Lift for (A, C, D) {
    type Out = (A::Out, C::Out, D::Out);
    fn lift(self) -> Self::Out {
        (self.0.lift(), self.1.lift(), self.2.lift())
    }
}

impl<A: Lift, C: Lift, D: Lift, E: Lift> Lift for (A, C, D, E) {
    type Out = (A::Out, C::Out, D::Out, E::Out);
    fn lift(self) -> Self::Out {
        (self.0.lift(), self.1.lift(), self.2.lift(), self.3.lift())
    }
}

macro_rules! lift_as_is {
    ($($t:ty),*) => {$(
        impl Lift for $t {
            type Out = $t;
            fn lift(self) -> $t {
                self
            }
        }
    )*};
}

lift_as_is!(
    (),
    bool,
    f64,
    Vec<f32>,
    Vec<f64>,
    Vec<i32>,
    Vec<SpanCandidate>
);

/// `Storage` methods, each written once as its signature: `self` and every `Storage`
/// operand go to the backend `self` lives on (an operand elsewhere is the
/// device-mismatch error naming the method), and the buffers that come back are wrapped
/// in its variant.
macro_rules! dispatch {
    () => {};
    ($(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $t:ty)* $(,)?) -> $ret:ty; $($rest:tt)*) => {
        impl Storage {
            $(#[$doc])*
            #[allow(clippy::too_many_arguments)]
            pub fn $name(&self $(, $arg: $t)*) -> Result<$ret> {
                per_backend!(self, |s| s
                    .$name($(Operand::on($arg, stringify!($name), s)?),*)
                    .map(Lift::lift))
            }
        }
        dispatch!($($rest)*);
    };
    ($(#[$doc:meta])* fn $name:ident(&mut self $(, $arg:ident: $t:ty)* $(,)?) -> $ret:ty; $($rest:tt)*) => {
        impl Storage {
            $(#[$doc])*
            pub fn $name(&mut self $(, $arg: $t)*) -> Result<$ret> {
                per_backend!(self, |s| s
                    .$name($(Operand::on($arg, stringify!($name), &*s)?),*)
                    .map(Lift::lift))
            }
        }
        dispatch!($($rest)*);
    };
}

pub(super) use dispatch;

impl Storage {
    pub fn device(&self) -> Device {
        per_backend!(self, |s| s.device())
    }
    pub fn dtype(&self) -> DType {
        per_backend!(self, |s| s.dtype())
    }
    pub fn len(&self) -> usize {
        per_backend!(self, |s| s.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Move or copy to `device` (`Auto` resolved first). Any buffer goes to a meta
    /// device (as its shape and dtype); a meta buffer has no data to go anywhere else.
    pub fn to_device(&self, device: Device) -> Result<Storage> {
        let device = device.resolve();
        match (self, device) {
            (s, Device::Meta(t)) => Ok(Storage::Meta(MetaStorage::new(s.len(), s.dtype(), t))),
            (Storage::Meta(s), d) => Err(Error::msg(format!(
                "to_device: a {} tensor holds no data to copy to {d}",
                s.device()
            ))),
            (Storage::Cpu(s), Device::Cpu) => Ok(Storage::Cpu(s.duplicate()?)),
            (Storage::Cuda(s), Device::Cpu) => Ok(Storage::Cpu(s.to_cpu()?)),
            (Storage::Cpu(s), Device::Cuda(n)) => Ok(Storage::Cuda(CudaStorage::from_cpu(s, n)?)),
            (Storage::Cuda(s), Device::Cuda(n)) => {
                if s.device() == Device::Cuda(n) {
                    Ok(Storage::Cuda(s.duplicate()?))
                } else {
                    Ok(Storage::Cuda(CudaStorage::from_cpu(&s.to_cpu()?, n)?))
                }
            }
            (_, Device::Auto) => unreachable!("resolved above"),
        }
    }

    pub fn to_cpu(&self) -> Result<CpuStorage> {
        per_backend!(self, |s| s.to_cpu())
    }

    pub fn cat(parts: &[&Storage], dims: &[Vec<usize>], dim: usize) -> Result<Storage> {
        let first = parts
            .first()
            .ok_or_else(|| Error::msg("cat: no tensors to concatenate"))?;
        per_backend!(first, |f| {
            let v = parts
                .iter()
                .map(|p| same("cat", f, p))
                .collect::<Result<Vec<_>>>()?;
            BackendStorage::cat(&v, dims, dim).map(Variant::wrap)
        })
    }
}

dispatch! {
    fn zeros_like_dev(&self, len: usize, dtype: DType) -> Storage;
    fn full_like_dev(&self, len: usize, dtype: DType, value: f64) -> Storage;
    fn to_vec_f32(&self) -> Vec<f32>;
    fn to_vec_f64(&self) -> Vec<f64>;
    fn to_vec_i32(&self) -> Vec<i32>;
    fn cast(&self, dtype: DType) -> Storage;
    fn duplicate(&self) -> Storage;
    fn binary(&self, rhs: &Storage, op: BinaryOp) -> Storage;
    fn affine(&self, mul: f64, add: f64) -> Storage;
    fn unary(&self, op: UnaryOp) -> Storage;
    fn unary_backward(&self, dy: &Storage, op: UnaryOp) -> Storage;
    fn gated(&self, lin: &Storage, act: UnaryOp) -> Storage;
    fn gated_backward(&self, lin: &Storage, dy: &Storage, act: UnaryOp) -> (Storage, Storage);
    fn dropout(&self, p: f32, seed: u64) -> Storage;
    fn add_bias(&self, bias: &Storage, cols: usize) -> Storage;
    fn sum_rows(&self, cols: usize) -> Storage;
    fn sum_all(&self) -> Storage;
    fn sum_sq(&self) -> Storage;
    fn permute(&self, dims: &[usize], perm: &[usize]) -> Storage;
    fn narrow(&self, dims: &[usize], dim: usize, start: usize, len: usize) -> Storage;
    fn index_select(&self, ids: &Storage, cols: usize) -> Storage;
    fn index_add(&self, ids: &Storage, n: usize, cols: usize, skip: Option<usize>) -> Storage;
    fn axpy_(&mut self, x: &Storage, alpha: f64) -> ();
    fn scale_(&mut self, alpha: f64) -> ();
    fn copy_from_(&mut self, src: &Storage) -> ();
    fn adamw_(&mut self, grad: &Storage, st: AdamWState<'_, Storage>, hp: &AdamWStep) -> bool;
    fn adafactor_(&mut self, grad: &Storage, st: AdafactorState<'_, Storage>, hp: &AdafactorStep)
        -> Option<f64>;
    fn has_non_finite(&self) -> bool;
    fn clamp_i32(&self, lo: i32, hi: i32) -> Storage;
}
