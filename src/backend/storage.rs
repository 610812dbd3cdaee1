//! `Storage`, the buffer a `Tensor` holds: one variant per backend, and the dispatch of
//! each primitive to the backend both (or all) operands live on, with a typed error when
//! they do not. The data-movement, elementwise, layout and optimizer primitives are here;
//! the layer primitives (GEMM, norms, losses, attention, span search) in storage_nn.rs.

use super::cpu::CpuStorage;
use super::cuda::CudaStorage;
use super::meta::MetaStorage;
use super::{AdamWStep, BackendStorage, BinaryOp, UnaryOp};
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
pub(super) trait Variant: BackendStorage {
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

    pub fn zeros_like_dev(&self, len: usize, dtype: DType) -> Result<Storage> {
        per_backend!(self, |s| s.zeros_like_dev(len, dtype).map(Variant::wrap))
    }
    pub fn full_like_dev(&self, len: usize, dtype: DType, value: f64) -> Result<Storage> {
        per_backend!(self, |s| s
            .full_like_dev(len, dtype, value)
            .map(Variant::wrap))
    }
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        per_backend!(self, |s| s.to_vec_f32())
    }
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        per_backend!(self, |s| s.to_vec_f64())
    }
    pub fn to_vec_i32(&self) -> Result<Vec<i32>> {
        per_backend!(self, |s| s.to_vec_i32())
    }
    pub fn to_cpu(&self) -> Result<CpuStorage> {
        per_backend!(self, |s| s.to_cpu())
    }
    pub fn cast(&self, dtype: DType) -> Result<Storage> {
        per_backend!(self, |s| s.cast(dtype).map(Variant::wrap))
    }
    pub fn duplicate(&self) -> Result<Storage> {
        per_backend!(self, |s| s.duplicate().map(Variant::wrap))
    }
    pub fn binary(&self, rhs: &Storage, op: BinaryOp) -> Result<Storage> {
        per_backend!(self, |a| a
            .binary(same("binary", a, rhs)?, op)
            .map(Variant::wrap))
    }
    pub fn affine(&self, mul: f64, add: f64) -> Result<Storage> {
        per_backend!(self, |s| s.affine(mul, add).map(Variant::wrap))
    }
    pub fn unary(&self, op: UnaryOp) -> Result<Storage> {
        per_backend!(self, |s| s.unary(op).map(Variant::wrap))
    }
    pub fn unary_backward(&self, dy: &Storage, op: UnaryOp) -> Result<Storage> {
        per_backend!(self, |x| x
            .unary_backward(same("unary_backward", x, dy)?, op)
            .map(Variant::wrap))
    }
    pub fn gated(&self, lin: &Storage, act: UnaryOp) -> Result<Storage> {
        per_backend!(self, |g| g
            .gated(same("gated", g, lin)?, act)
            .map(Variant::wrap))
    }
    pub fn gated_backward(
        &self,
        lin: &Storage,
        dy: &Storage,
        act: UnaryOp,
    ) -> Result<(Storage, Storage)> {
        per_backend!(self, |g| {
            const OP: &str = "gated_backward";
            let (a, b) = g.gated_backward(same(OP, g, lin)?, same(OP, g, dy)?, act)?;
            Ok((a.wrap(), b.wrap()))
        })
    }
    pub fn dropout(&self, p: f32, seed: u64) -> Result<Storage> {
        per_backend!(self, |s| s.dropout(p, seed).map(Variant::wrap))
    }
    pub fn add_bias(&self, bias: &Storage, cols: usize) -> Result<Storage> {
        per_backend!(self, |x| x
            .add_bias(same("add_bias", x, bias)?, cols)
            .map(Variant::wrap))
    }
    pub fn sum_rows(&self, cols: usize) -> Result<Storage> {
        per_backend!(self, |s| s.sum_rows(cols).map(Variant::wrap))
    }
    pub fn sum_all(&self) -> Result<Storage> {
        per_backend!(self, |s| s.sum_all().map(Variant::wrap))
    }
    pub fn sum_sq(&self) -> Result<Storage> {
        per_backend!(self, |s| s.sum_sq().map(Variant::wrap))
    }
    pub fn permute(&self, dims: &[usize], perm: &[usize]) -> Result<Storage> {
        per_backend!(self, |s| s.permute(dims, perm).map(Variant::wrap))
    }
    pub fn narrow(&self, dims: &[usize], dim: usize, start: usize, len: usize) -> Result<Storage> {
        per_backend!(self, |s| s.narrow(dims, dim, start, len).map(Variant::wrap))
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
    pub fn index_select(&self, ids: &Storage, cols: usize) -> Result<Storage> {
        per_backend!(self, |t| t
            .index_select(same("index_select", t, ids)?, cols)
            .map(Variant::wrap))
    }
    pub fn index_add(
        &self,
        ids: &Storage,
        n: usize,
        cols: usize,
        skip: Option<usize>,
    ) -> Result<Storage> {
        per_backend!(self, |d| d
            .index_add(same("index_add", d, ids)?, n, cols, skip)
            .map(Variant::wrap))
    }
    pub fn axpy_(&mut self, x: &Storage, alpha: f64) -> Result<()> {
        per_backend!(self, |s| s.axpy_(same("axpy_", s, x)?, alpha))
    }
    pub fn scale_(&mut self, alpha: f64) -> Result<()> {
        per_backend!(self, |s| s.scale_(alpha))
    }
    pub fn copy_from_(&mut self, src: &Storage) -> Result<()> {
        per_backend!(self, |s| s.copy_from_(same("copy_from_", s, src)?))
    }
    pub fn adamw_(
        &mut self,
        grad: &Storage,
        m: &mut Storage,
        v: &mut Storage,
        working: Option<&mut Storage>,
        hp: &AdamWStep,
    ) -> Result<bool> {
        const OP: &str = "adamw_";
        let dev = self.device();
        per_backend!(self, |p| {
            let w = match working {
                Some(w) => Some(same_mut(OP, dev, w)?),
                None => None,
            };
            p.adamw_(
                same(OP, p, grad)?,
                same_mut(OP, dev, m)?,
                same_mut(OP, dev, v)?,
                w,
                hp,
            )
        })
    }
    pub fn has_non_finite(&self) -> Result<bool> {
        per_backend!(self, |s| s.has_non_finite())
    }
    pub fn clamp_i32(&self, lo: i32, hi: i32) -> Result<Storage> {
        per_backend!(self, |s| s.clamp_i32(lo, hi).map(Variant::wrap))
    }
}
