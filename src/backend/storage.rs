//! `Storage`, the buffer a `Tensor` holds: one variant per backend, and the dispatch of
//! each primitive to the backend both (or all) operands live on, with a typed error when
//! they do not. The data-movement, elementwise, layout and optimizer primitives are here;
//! the layer primitives (GEMM, norms, losses, attention, span search) in storage_nn.rs.

use super::cpu::CpuStorage;
use super::cuda::CudaStorage;
use super::{AdamWStep, BackendStorage, BinaryOp, UnaryOp};
use crate::error::{Error, Result};
use crate::shape::{DType, Device};

/// A buffer on one backend. This is what `Tensor` holds.
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

pub(super) fn mismatch(op: &'static str, a: Device, b: Device) -> Error {
    Error::DeviceMismatch { op, a, b }
}

/// Dispatch a method with storage arguments to the backend both sides live on.
macro_rules! dispatch2 {
    ($op:literal, $a:expr, $b:expr, |$x:ident, $y:ident| $body:expr) => {
        match ($a, $b) {
            (Storage::Cpu($x), Storage::Cpu($y)) => $body.map(Storage::Cpu),
            (Storage::Cuda($x), Storage::Cuda($y)) => $body.map(Storage::Cuda),
            (a, b) => Err(mismatch($op, a.device(), b.device())),
        }
    };
}

macro_rules! dispatch1 {
    ($a:expr, |$x:ident| $body:expr) => {
        match $a {
            Storage::Cpu($x) => $body.map(Storage::Cpu),
            Storage::Cuda($x) => $body.map(Storage::Cuda),
        }
    };
}

/// One body for both backends: `$x` is the `CpuStorage` in one arm and the
/// `CudaStorage` in the other, so the body is written once against `Variant` and
/// `BackendStorage` (its other operands through [`same`], its results through `wrap`).
macro_rules! per_backend {
    ($s:expr, |$x:ident| $body:expr) => {
        match $s {
            Storage::Cpu($x) => $body,
            Storage::Cuda($x) => $body,
        }
    };
}

/// A backend's buffer type as a variant of [`Storage`].
pub(super) trait Variant: BackendStorage {
    fn of(s: &Storage) -> Option<&Self>;
    fn wrap(self) -> Storage;
}

impl Variant for CpuStorage {
    fn of(s: &Storage) -> Option<&Self> {
        match s {
            Storage::Cpu(x) => Some(x),
            _ => None,
        }
    }
    fn wrap(self) -> Storage {
        Storage::Cpu(self)
    }
}

impl Variant for CudaStorage {
    fn of(s: &Storage) -> Option<&Self> {
        match s {
            Storage::Cuda(x) => Some(x),
            _ => None,
        }
    }
    fn wrap(self) -> Storage {
        Storage::Cuda(self)
    }
}

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

/// Unwrap an optional storage argument to the backend `$variant`, or fail.
macro_rules! opt_as {
    ($op:literal, $variant:ident, $opt:expr, $dev:expr) => {
        match $opt {
            None => None,
            Some(Storage::$variant(s)) => Some(s),
            Some(other) => return Err(mismatch($op, $dev, other.device())),
        }
    };
}

macro_rules! as_variant {
    ($op:literal, $variant:ident, $s:expr, $dev:expr) => {
        match $s {
            Storage::$variant(s) => s,
            other => return Err(mismatch($op, $dev, other.device())),
        }
    };
}

pub(super) use {as_variant, dispatch1, dispatch2, opt_as, per_backend};

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(s) => s.device(),
            Storage::Cuda(s) => s.device(),
        }
    }
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype(),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            Storage::Cuda(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Move or copy to `device` (`Auto` resolved first).
    pub fn to_device(&self, device: Device) -> Result<Storage> {
        let device = device.resolve();
        match (self, device) {
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
        dispatch1!(self, |s| s.zeros_like_dev(len, dtype))
    }
    pub fn full_like_dev(&self, len: usize, dtype: DType, value: f64) -> Result<Storage> {
        dispatch1!(self, |s| s.full_like_dev(len, dtype, value))
    }
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        match self {
            Storage::Cpu(s) => s.to_vec_f32(),
            Storage::Cuda(s) => s.to_vec_f32(),
        }
    }
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        match self {
            Storage::Cpu(s) => s.to_vec_f64(),
            Storage::Cuda(s) => s.to_vec_f64(),
        }
    }
    pub fn to_vec_i32(&self) -> Result<Vec<i32>> {
        match self {
            Storage::Cpu(s) => s.to_vec_i32(),
            Storage::Cuda(s) => s.to_vec_i32(),
        }
    }
    pub fn to_cpu(&self) -> Result<CpuStorage> {
        match self {
            Storage::Cpu(s) => s.to_cpu(),
            Storage::Cuda(s) => s.to_cpu(),
        }
    }
    pub fn cast(&self, dtype: DType) -> Result<Storage> {
        dispatch1!(self, |s| s.cast(dtype))
    }
    pub fn duplicate(&self) -> Result<Storage> {
        dispatch1!(self, |s| s.duplicate())
    }
    pub fn binary(&self, rhs: &Storage, op: BinaryOp) -> Result<Storage> {
        dispatch2!("binary", self, rhs, |a, b| a.binary(b, op))
    }
    pub fn affine(&self, mul: f64, add: f64) -> Result<Storage> {
        dispatch1!(self, |s| s.affine(mul, add))
    }
    pub fn unary(&self, op: UnaryOp) -> Result<Storage> {
        dispatch1!(self, |s| s.unary(op))
    }
    pub fn unary_backward(&self, dy: &Storage, op: UnaryOp) -> Result<Storage> {
        dispatch2!("unary_backward", self, dy, |x, g| x.unary_backward(g, op))
    }
    pub fn gated(&self, lin: &Storage, act: UnaryOp) -> Result<Storage> {
        dispatch2!("gated", self, lin, |g, l| g.gated(l, act))
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
        dispatch1!(self, |s| s.dropout(p, seed))
    }
    pub fn add_bias(&self, bias: &Storage, cols: usize) -> Result<Storage> {
        dispatch2!("add_bias", self, bias, |x, b| x.add_bias(b, cols))
    }
    pub fn sum_rows(&self, cols: usize) -> Result<Storage> {
        dispatch1!(self, |s| s.sum_rows(cols))
    }
    pub fn sum_all(&self) -> Result<Storage> {
        dispatch1!(self, |s| s.sum_all())
    }
    pub fn sum_sq(&self) -> Result<Storage> {
        dispatch1!(self, |s| s.sum_sq())
    }
    pub fn permute(&self, dims: &[usize], perm: &[usize]) -> Result<Storage> {
        dispatch1!(self, |s| s.permute(dims, perm))
    }
    pub fn narrow(&self, dims: &[usize], dim: usize, start: usize, len: usize) -> Result<Storage> {
        dispatch1!(self, |s| s.narrow(dims, dim, start, len))
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
        dispatch2!("index_select", self, ids, |t, i| t.index_select(i, cols))
    }
    pub fn index_add(
        &self,
        ids: &Storage,
        n: usize,
        cols: usize,
        skip: Option<usize>,
    ) -> Result<Storage> {
        dispatch2!("index_add", self, ids, |d, i| d.index_add(i, n, cols, skip))
    }
    pub fn axpy_(&mut self, x: &Storage, alpha: f64) -> Result<()> {
        per_backend!(self, |s| s.axpy_(same("axpy_", s, x)?, alpha))
    }
    pub fn scale_(&mut self, alpha: f64) -> Result<()> {
        match self {
            Storage::Cpu(s) => s.scale_(alpha),
            Storage::Cuda(s) => s.scale_(alpha),
        }
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
        let dev = self.device();
        match self {
            Storage::Cpu(p) => {
                let g = as_variant!("adamw_", Cpu, grad, dev);
                let m = as_variant!("adamw_", Cpu, m, dev);
                let v = as_variant!("adamw_", Cpu, v, dev);
                let w = opt_as!("adamw_", Cpu, working, dev);
                p.adamw_(g, m, v, w, hp)
            }
            Storage::Cuda(p) => {
                let g = as_variant!("adamw_", Cuda, grad, dev);
                let m = as_variant!("adamw_", Cuda, m, dev);
                let v = as_variant!("adamw_", Cuda, v, dev);
                let w = opt_as!("adamw_", Cuda, working, dev);
                p.adamw_(g, m, v, w, hp)
            }
        }
    }
    pub fn has_non_finite(&self) -> Result<bool> {
        match self {
            Storage::Cpu(s) => s.has_non_finite(),
            Storage::Cuda(s) => s.has_non_finite(),
        }
    }
    pub fn clamp_i32(&self, lo: i32, hi: i32) -> Result<Storage> {
        dispatch1!(self, |s| s.clamp_i32(lo, hi))
    }
}
