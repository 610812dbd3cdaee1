//! safetensors load (memory-mapped) and save. On disk: f32, f16, bf16 (and f64, i64,
//! i32 for fixtures); in memory floats become the requested dtype and integers I32.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use half::{bf16, f16};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, View};

use crate::error::{Error, Result};
use crate::shape::{DType, Device};
use crate::tensor::Tensor;

fn st_err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Safetensors {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

/// Every tensor in `path`, floats converted to `float_dtype`, integers to I32, on `device`.
pub fn load(path: &Path, float_dtype: DType, device: Device) -> Result<BTreeMap<String, Tensor>> {
    let (map, _) = load_with_metadata(path, float_dtype, device)?;
    Ok(map)
}

/// Like [`load`], also returning the file's `__metadata__`.
pub fn load_with_metadata(
    path: &Path,
    float_dtype: DType,
    device: Device,
) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the mapping is read-only and dropped before this function returns; a file
    // changed underneath us would at worst give wrong values, which the shape checks of
    // the models catch as clearly as they can.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| st_err(path, e))?;
    let (_, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| st_err(path, e))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        if let Device::Meta(_) = device {
            // The header's shapes and dtypes only: no weight is read. Decoding no bytes
            // (an empty CPU tensor) gives the dtype, and the refusal, the data would get.
            let none = decode(
                path,
                &name,
                view.dtype(),
                &[],
                float_dtype,
                vec![0],
                Device::Cpu,
            )?;
            out.insert(name, Tensor::zeros(shape, none.dtype(), device)?);
            continue;
        }
        let data = view.data();
        let t = decode(path, &name, view.dtype(), data, float_dtype, shape, device)?;
        out.insert(name, t);
    }
    Ok((out, metadata))
}

fn chunks<const N: usize>(b: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    b.chunks_exact(N).map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    })
}

/// One tensor's bytes as a tensor of dtype `want` (integers always I32) on `device`.
fn decode(
    path: &Path,
    name: &str,
    dt: StDtype,
    b: &[u8],
    want: DType,
    shape: Vec<usize>,
    device: Device,
) -> Result<Tensor> {
    let floats: Vec<f64> = match dt {
        StDtype::F32 => chunks::<4>(b)
            .map(|c| f32::from_le_bytes(c) as f64)
            .collect(),
        StDtype::F64 => chunks::<8>(b).map(f64::from_le_bytes).collect(),
        StDtype::F16 => chunks::<2>(b)
            .map(|c| f16::from_le_bytes(c).to_f64())
            .collect(),
        StDtype::BF16 => chunks::<2>(b)
            .map(|c| bf16::from_le_bytes(c).to_f64())
            .collect(),
        StDtype::I64 => {
            let v: Vec<i32> = chunks::<8>(b)
                .map(|c| i64::from_le_bytes(c).clamp(i32::MIN as i64, i32::MAX as i64) as i32)
                .collect();
            return Tensor::from_i32(v, shape, device);
        }
        StDtype::I32 => {
            let v = chunks::<4>(b).map(i32::from_le_bytes).collect();
            return Tensor::from_i32(v, shape, device);
        }
        StDtype::BOOL | StDtype::U8 => {
            return Tensor::from_i32(b.iter().map(|&x| x as i32).collect(), shape, device)
        }
        other => {
            return Err(st_err(
                path,
                format!(
                    "tensor {name:?} has dtype {other:?}; expected f32, f16, bf16, f64, i64, i32"
                ),
            ))
        }
    };
    match want {
        DType::F32 => Tensor::from_f32(
            floats.into_iter().map(|x| x as f32).collect(),
            shape,
            device,
        ),
        DType::F64 => Tensor::from_f64(floats, shape, device),
        DType::F16 => Tensor::from_f16(
            floats.into_iter().map(f16::from_f64).collect(),
            shape,
            device,
        ),
        DType::I32 => Tensor::from_i32(
            floats.into_iter().map(|x| x as i32).collect(),
            shape,
            device,
        ),
    }
}

struct Owned {
    dtype: StDtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Owned {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Write tensors (any device; copied to the host) keeping their dtypes; `metadata`
/// goes into `__metadata__`.
pub fn save(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let cpu = t.storage().to_cpu()?;
        let dtype = match t.dtype() {
            DType::F32 => StDtype::F32,
            DType::F16 => StDtype::F16,
            DType::F64 => StDtype::F64,
            DType::I32 => StDtype::I32,
        };
        owned.push((
            name.clone(),
            Owned {
                dtype,
                shape: t.dims().to_vec(),
                bytes: cpu.as_bytes().to_vec(),
            },
        ));
    }
    let views: Vec<(String, &Owned)> = owned.iter().map(|(n, o)| (n.clone(), o)).collect();
    safetensors::serialize_to_file(views, metadata, path).map_err(|e| st_err(path, e))
}
