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

/// The tensor names in `path`'s header (no data is read).
pub fn tensor_names(path: &Path) -> Result<Vec<String>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only and dropped before returning, as in `read`.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let (_, meta) = SafeTensors::read_metadata(&mmap)
        .map_err(|e| st_err(path, diagnose(&mmap).unwrap_or_else(|| e.to_string())))?;
    Ok(meta.tensors().into_keys().collect())
}

/// [`load`] for model weights: a NaN or infinite value (a diverged run's checkpoint) is
/// refused, naming the tensor, instead of turning every output into NaN.
pub fn load_finite(
    path: &Path,
    float_dtype: DType,
    device: Device,
) -> Result<BTreeMap<String, Tensor>> {
    let (map, _) = read(path, float_dtype, device, true)?;
    Ok(map)
}

/// Like [`load`], also returning the file's `__metadata__`.
pub fn load_with_metadata(
    path: &Path,
    float_dtype: DType,
    device: Device,
) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
    read(path, float_dtype, device, false)
}

fn read(
    path: &Path,
    float_dtype: DType,
    device: Device,
    finite: bool,
) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the mapping is read-only and dropped before this function returns; a file
    // changed underneath us would at worst give wrong values, which the shape checks of
    // the models catch as clearly as they can.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&mmap)
        .map_err(|e| st_err(path, diagnose(&mmap).unwrap_or_else(|| e.to_string())))?;
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
        if finite {
            check_finite(path, &name, view.dtype(), data)?;
        }
        out.insert(name, t);
    }
    Ok((out, metadata))
}

/// The first non-finite value of a float tensor's bytes, as an error naming the tensor.
fn check_finite(path: &Path, name: &str, dt: StDtype, b: &[u8]) -> Result<()> {
    let bad = match dt {
        StDtype::F32 => chunks::<4>(b).position(|c| !f32::from_le_bytes(c).is_finite()),
        StDtype::F64 => chunks::<8>(b).position(|c| !f64::from_le_bytes(c).is_finite()),
        StDtype::F16 => chunks::<2>(b).position(|c| !f16::from_le_bytes(c).is_finite()),
        StDtype::BF16 => chunks::<2>(b).position(|c| !bf16::from_le_bytes(c).is_finite()),
        _ => None,
    };
    match bad {
        Some(i) => Err(st_err(
            path,
            format!(
                "tensor {name:?} holds a non-finite value (NaN or infinity) at flat index {i}; \
                 expected finite weights (a run that diverged saves such a checkpoint)"
            ),
        )),
        None => Ok(()),
    }
}

/// Why the safetensors parser refused `bytes`, naming the tensor at fault: its own
/// messages ("invalid shape, data type, or offset for tensor", "incomplete metadata")
/// name none. None when no reason is found here (the parser's message is used).
fn diagnose(bytes: &[u8]) -> Option<String> {
    let layout = "expected an 8-byte header length, a JSON header and the tensor data";
    let Some(len) = bytes.get(..8) else {
        return Some(format!(
            "only {} bytes: not a safetensors file ({layout})",
            bytes.len()
        ));
    };
    let n = u64::from_le_bytes(len.try_into().ok()?);
    let header = usize::try_from(n)
        .ok()
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?));
    let Some(header) = header else {
        return Some(format!(
            "the header length says {n} bytes but the file holds {}: not a safetensors file, \
             or a truncated one ({layout})",
            bytes.len()
        ));
    };
    let data_len = bytes.len() - 8 - header.len();
    let v: serde_json::Value = serde_json::from_slice(header).ok()?;
    let mut spans: Vec<(usize, usize, &str)> = Vec::new();
    for (name, t) in v.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t.get("dtype").and_then(|d| d.as_str()).unwrap_or("");
        let size: usize = match dtype {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
            other => {
                return Some(format!(
                    "tensor {name:?}: dtype {other:?} is not a safetensors dtype"
                ))
            }
        };
        let uints = |key: &str| -> Option<Vec<usize>> {
            t.get(key)?
                .as_array()?
                .iter()
                .map(|x| x.as_u64().and_then(|x| usize::try_from(x).ok()))
                .collect()
        };
        let Some(shape) = uints("shape") else {
            return Some(format!(
                "tensor {name:?}: `shape` is not a list of non-negative integers"
            ));
        };
        let (start, end) = match uints("data_offsets").as_deref() {
            Some(&[s, e]) if s <= e => (s, e),
            _ => {
                return Some(format!(
                    "tensor {name:?}: `data_offsets` is not [start, end] with start <= end"
                ))
            }
        };
        let want = shape.iter().try_fold(size, |acc, &d| acc.checked_mul(d));
        if want != Some(end - start) {
            return Some(format!(
                "tensor {name:?} ({dtype} {shape:?}) needs {} bytes but its data_offsets \
                 [{start}, {end}] hold {}",
                want.map_or("more than 2^64".to_string(), |w| w.to_string()),
                end - start
            ));
        }
        if end > data_len {
            return Some(format!(
                "tensor {name:?}'s data runs to byte {end} but the file holds {data_len} \
                 bytes of data after its header (a truncated file?)"
            ));
        }
        spans.push((start, end, name));
    }
    spans.sort();
    let mut at = 0;
    for &(start, end, name) in &spans {
        if start != at {
            return Some(format!(
                "tensor {name:?}'s data starts at byte {start}, expected {at} (the tensors' \
                 data must follow each other with no gap or overlap)"
            ));
        }
        at = end;
    }
    if at != data_len {
        let last = spans.last().map_or("(none)", |s| s.2);
        return Some(format!(
            "the tensors' data ends at byte {at} (after tensor {last:?}) but the file holds \
             {data_len} bytes of data: extra or missing bytes"
        ));
    }
    None
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
    // Floats wanted as f32 (every model's weights on load) are converted straight from
    // the mapped bytes, with the same values as through f64 (every source value is
    // exact in f64, and f64 -> f32 rounds once either way): no f64 copy of the model.
    if want == DType::F32 {
        let direct: Option<Vec<f32>> = match dt {
            StDtype::F32 => Some(chunks::<4>(b).map(f32::from_le_bytes).collect()),
            StDtype::F64 => Some(
                chunks::<8>(b)
                    .map(|c| f64::from_le_bytes(c) as f32)
                    .collect(),
            ),
            StDtype::F16 => Some(
                chunks::<2>(b)
                    .map(|c| f16::from_le_bytes(c).to_f32())
                    .collect(),
            ),
            StDtype::BF16 => Some(
                chunks::<2>(b)
                    .map(|c| bf16::from_le_bytes(c).to_f32())
                    .collect(),
            ),
            _ => None,
        };
        if let Some(v) = direct {
            return Tensor::from_f32(v, shape, device);
        }
    }
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
