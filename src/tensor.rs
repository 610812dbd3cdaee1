//! `Tensor`: shared storage + shape + an identity the tape can refer to.
//!
//! A tensor is cheap to clone (two `Arc`s). Storage sits behind an `RwLock` so the
//! optimizer can update parameters in place while models keep holding them. A tensor
//! "tracks" gradients when it is a leaf created with [`Tensor::var`] or the output of an
//! op recorded on the tape (see `autograd`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use half::f16;

use crate::backend::cpu::CpuData;
use crate::backend::{CpuStorage, Storage};
use crate::error::{Error, Result};
use crate::shape::{DType, Device, Shape};

/// Identity of a tensor value on the tape. Clones share it; new values get a fresh one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    pub(crate) fn fresh() -> TensorId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

struct Inner {
    id: TensorId,
    storage: Arc<RwLock<Storage>>,
    shape: Shape,
    dtype: DType,
    device: Device,
    track: bool,
}

#[derive(Clone)]
pub struct Tensor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({:?}, {}, {}, {}{})",
            self.inner.id,
            self.inner.shape,
            self.inner.dtype,
            self.inner.device,
            if self.inner.track { ", tracked" } else { "" }
        )
    }
}

impl Tensor {
    /// Wrap a storage. The element count must match the shape.
    pub fn from_storage(storage: Storage, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if storage.len() != shape.elem_count() {
            return Err(Error::Shape {
                op: "from_storage",
                expected: format!("{} elements", storage.len()),
                got: shape,
            });
        }
        Ok(Tensor::wrap(storage, shape, false))
    }

    pub(crate) fn wrap(storage: Storage, shape: Shape, track: bool) -> Tensor {
        let dtype = storage.dtype();
        let device = storage.device();
        Tensor {
            inner: Arc::new(Inner {
                id: TensorId::fresh(),
                storage: Arc::new(RwLock::new(storage)),
                shape,
                dtype,
                device,
                track,
            }),
        }
    }

    /// Same storage under a new shape/identity (reshape, detach).
    pub(crate) fn share(&self, shape: Shape, track: bool) -> Tensor {
        Tensor {
            inner: Arc::new(Inner {
                id: TensorId::fresh(),
                storage: self.inner.storage.clone(),
                shape,
                dtype: self.inner.dtype,
                device: self.inner.device,
                track,
            }),
        }
    }

    /// A leaf that gradients flow to (a parameter, or an input under gradcheck).
    pub fn var(t: &Tensor) -> Tensor {
        t.share(t.shape().clone(), true)
    }

    /// The same values, cut from the tape.
    pub fn detach(&self) -> Tensor {
        self.share(self.shape().clone(), false)
    }

    pub fn from_f32(data: Vec<f32>, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        Tensor::from_host(CpuData::F32(data), shape, device)
    }
    pub fn from_f64(data: Vec<f64>, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        Tensor::from_host(CpuData::F64(data), shape, device)
    }
    pub fn from_f16(data: Vec<f16>, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        Tensor::from_host(CpuData::F16(data), shape, device)
    }
    pub fn from_i32(data: Vec<i32>, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        Tensor::from_host(CpuData::I32(data), shape, device)
    }
    /// Host values onto `device`; a meta device takes their length and dtype only (no
    /// host buffer is counted on the CPU, so planning beside a CPU measurement does not
    /// disturb it).
    fn from_host(data: CpuData, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        match device {
            Device::Meta(t) => {
                let meta = crate::backend::MetaStorage::new(data.len(), data.dtype(), t);
                Tensor::from_storage(Storage::Meta(meta), shape)
            }
            _ => Tensor::from_cpu(CpuStorage::new(data), shape, device),
        }
    }
    pub fn from_cpu(cpu: CpuStorage, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        let storage = match device.resolve() {
            Device::Cpu => Storage::Cpu(cpu),
            d => Storage::Cpu(cpu).to_device(d)?,
        };
        Tensor::from_storage(storage, shape)
    }

    pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(shape, dtype, device, 0.0)
    }

    pub fn full(
        shape: impl Into<Shape>,
        dtype: DType,
        device: Device,
        value: f64,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let n = shape.elem_count();
        if let Device::Meta(target) = device {
            // Shapes only: no host buffer of n values to throw away.
            let meta = crate::backend::MetaStorage::new(n, dtype, target);
            return Tensor::from_storage(Storage::Meta(meta), shape);
        }
        let cpu = match dtype {
            DType::F32 => CpuData::F32(vec![value as f32; n]),
            DType::F64 => CpuData::F64(vec![value; n]),
            DType::F16 => CpuData::F16(vec![f16::from_f64(value); n]),
            DType::I32 => CpuData::I32(vec![value as i32; n]),
        };
        Tensor::from_cpu(CpuStorage::new(cpu), shape, device)
    }

    /// A new tensor of zeros with this tensor's device (any shape/dtype).
    pub fn zeros_on_same(&self, shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
        let shape = shape.into();
        let s = self.storage().zeros_like_dev(shape.elem_count(), dtype)?;
        Ok(Tensor::wrap(s, shape, false))
    }

    pub fn full_on_same(
        &self,
        shape: impl Into<Shape>,
        dtype: DType,
        value: f64,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let s = self
            .storage()
            .full_like_dev(shape.elem_count(), dtype, value)?;
        Ok(Tensor::wrap(s, shape, false))
    }

    pub fn id(&self) -> TensorId {
        self.inner.id
    }
    pub fn shape(&self) -> &Shape {
        &self.inner.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.inner.shape.dims()
    }
    pub fn dtype(&self) -> DType {
        self.inner.dtype
    }
    pub fn device(&self) -> Device {
        self.inner.device
    }
    pub fn elem_count(&self) -> usize {
        self.inner.shape.elem_count()
    }
    /// Does this value take part in gradient computation?
    pub fn tracks(&self) -> bool {
        self.inner.track
    }

    /// Read access to the storage (held briefly: ops take it, run, release).
    pub fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        // A poisoned lock only means another thread panicked mid-op; the data is a plain
        // buffer, so reading it stays sound.
        self.inner.storage.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Write access, for in-place updates (optimizer, gradient accumulation).
    pub fn storage_mut(&self) -> RwLockWriteGuard<'_, Storage> {
        self.inner
            .storage
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Is this the only handle on its storage buffer (safe to update in place)?
    pub fn is_exclusive(&self) -> bool {
        Arc::strong_count(&self.inner) == 1 && Arc::strong_count(&self.inner.storage) == 1
    }

    /// Do two tensors share one storage buffer?
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.inner.storage, &other.inner.storage)
    }

    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        self.storage().to_vec_f32()
    }
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        self.storage().to_vec_f64()
    }
    pub fn to_vec_i32(&self) -> Result<Vec<i32>> {
        self.storage().to_vec_i32()
    }
    /// The single value of a one-element tensor.
    pub fn to_scalar(&self) -> Result<f64> {
        if self.elem_count() != 1 {
            return Err(Error::Shape {
                op: "to_scalar",
                expected: "one element".into(),
                got: self.shape().clone(),
            });
        }
        Ok(self.to_vec_f64()?[0])
    }

    /// A copy on `device` (not tracked).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        let s = self.storage().to_device(device)?;
        Ok(Tensor::wrap(s, self.shape().clone(), false))
    }

    /// A deep copy (not tracked).
    pub fn deep_clone(&self) -> Result<Tensor> {
        let s = self.storage().duplicate()?;
        Ok(Tensor::wrap(s, self.shape().clone(), false))
    }

    /// Check the shape, naming the op and what was expected.
    pub fn expect_shape(&self, op: &'static str, dims: &[usize]) -> Result<()> {
        if self.dims() != dims {
            return Err(Error::Shape {
                op,
                expected: format!("{dims:?}"),
                got: self.shape().clone(),
            });
        }
        Ok(())
    }

    pub fn expect_rank(&self, op: &'static str, rank: usize) -> Result<()> {
        if self.shape().rank() != rank {
            return Err(Error::Shape {
                op,
                expected: format!("rank {rank}"),
                got: self.shape().clone(),
            });
        }
        Ok(())
    }
}
