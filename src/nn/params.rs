//! `ParamStore`: the model's parameters under their Hugging Face names, each a tracked
//! leaf tensor. A name bound twice (T5's tied `shared.weight` / `lm_head.weight`) is the
//! same tensor, so the tape sums its gradients.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::nn::safetensors_io;
use crate::rng::Rng;
use crate::shape::{DType, Device, Shape};
use crate::tensor::Tensor;

/// How a parameter missing from the checkpoint is initialised (HF `_init_weights`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// Normal(0, std).
    Normal(f64),
    /// The fixed sine/cosine table of a `[positions, dim]` embedding (HF
    /// `create_sinusoidal_embeddings`: sin on even columns, cos on odd ones, angle
    /// pos / 10000^(2*(j/2)/dim)).
    Sinusoidal,
}

fn sinusoidal(shape: &[usize]) -> Vec<f64> {
    let (n, dim) = (shape[0], shape.iter().skip(1).product::<usize>());
    let mut v = Vec::with_capacity(n * dim);
    for pos in 0..n {
        for j in 0..dim {
            let angle = pos as f64 / 10000f64.powf((2 * (j / 2)) as f64 / dim as f64);
            v.push(if j % 2 == 0 { angle.sin() } else { angle.cos() });
        }
    }
    v
}

struct StoreInner {
    params: BTreeMap<String, Tensor>,
    /// Names created by `get_or_init` rather than loaded.
    initialised: Vec<String>,
    rng: Rng,
}

/// Named parameters on one device, in one float dtype.
#[derive(Clone)]
pub struct ParamStore {
    inner: Arc<Mutex<StoreInner>>,
    device: Device,
    dtype: DType,
    source: Option<PathBuf>,
}

impl ParamStore {
    /// An empty store (parameters are created by `get_or_init`), seeded for init.
    pub fn new(device: Device, dtype: DType, seed: u64) -> ParamStore {
        ParamStore {
            inner: Arc::new(Mutex::new(StoreInner {
                params: BTreeMap::new(),
                initialised: Vec::new(),
                rng: Rng::new(seed),
            })),
            device: device.resolve(),
            dtype,
            source: None,
        }
    }

    /// Load every tensor of a safetensors file as a trainable parameter; a non-finite
    /// value is refused, naming its tensor.
    pub fn load(path: &Path, device: Device, dtype: DType, seed: u64) -> Result<ParamStore> {
        let device = device.resolve();
        let tensors = safetensors_io::load_finite(path, dtype, device)?;
        let store = ParamStore::new(device, dtype, seed);
        {
            let mut inner = store.lock();
            for (name, t) in tensors {
                let t = if t.dtype().is_float() {
                    Tensor::var(&t)
                } else {
                    t
                };
                inner.params.insert(name, t);
            }
        }
        Ok(ParamStore {
            source: Some(path.to_path_buf()),
            ..store
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn device(&self) -> Device {
        self.device
    }
    /// The checkpoint file the store was loaded from (None for a fresh model).
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn where_(&self) -> String {
        match &self.source {
            Some(p) => p.display().to_string(),
            None => "the parameter store".into(),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.lock().params.contains_key(name)
    }

    /// The parameter `name`, which must exist with `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.lock().params.get(name).cloned().ok_or_else(|| {
            Error::msg(format!(
                "{}: missing tensor {name:?} (expected shape {shape:?})",
                self.where_()
            ))
        })?;
        if t.dims() != shape {
            return Err(Error::msg(format!(
                "{}: tensor {name:?} has shape {}, expected {shape:?}",
                self.where_(),
                t.shape()
            )));
        }
        Ok(t)
    }

    /// The parameter `name`, created with `init` if absent.
    pub fn get_or_init(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        if self.contains(name) {
            return self.get(name, shape);
        }
        let n: usize = shape.iter().product();
        let mut inner = self.lock();
        if let Device::Meta(_) = self.device {
            // Shapes only (the planner): no values to draw.
            let t = Tensor::var(&Tensor::zeros(shape, self.dtype, self.device)?);
            inner.params.insert(name.to_string(), t.clone());
            inner.initialised.push(name.to_string());
            return Ok(t);
        }
        let vals: Vec<f64> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal(std) => (0..n).map(|_| inner.rng.normal() * std).collect(),
            Init::Sinusoidal if shape.len() == 2 => sinusoidal(shape),
            Init::Sinusoidal => {
                return Err(Error::msg(format!(
                    "{}: a sinusoidal table must be 2-D, {name:?} is {shape:?}",
                    self.where_()
                )))
            }
        };
        let t = match self.dtype {
            DType::F64 => Tensor::from_f64(vals, shape, self.device)?,
            DType::F32 => {
                Tensor::from_f32(vals.iter().map(|&x| x as f32).collect(), shape, self.device)?
            }
            DType::F16 => {
                Tensor::from_f32(vals.iter().map(|&x| x as f32).collect(), shape, self.device)?
                    .to_dtype(DType::F16)?
            }
            DType::I32 => return Err(Error::msg("ParamStore: parameters must be floats")),
        };
        let t = Tensor::var(&t);
        inner.params.insert(name.to_string(), t.clone());
        inner.initialised.push(name.to_string());
        Ok(t)
    }

    /// Stop training `name`: it stays in the store (and in saved checkpoints) but no
    /// longer tracks gradients, so the optimizer never sees it.
    pub fn freeze(&self, name: &str) -> Result<Tensor> {
        let mut inner = self.lock();
        let t = inner.params.get(name).cloned().ok_or_else(|| {
            Error::msg(format!("{}: cannot freeze missing {name:?}", self.where_()))
        })?;
        let frozen = t.detach();
        inner.params.insert(name.to_string(), frozen.clone());
        Ok(frozen)
    }

    /// Bind `alias` to the same tensor as `name` (weight tying). Refuses when `alias`
    /// already names another tensor: replacing it would silently drop one of two values.
    pub fn alias(&self, alias: &str, name: &str) -> Result<()> {
        let mut inner = self.lock();
        let t = inner.params.get(name).cloned().ok_or_else(|| {
            Error::msg(format!(
                "{}: cannot tie {alias:?} to missing {name:?}",
                self.where_()
            ))
        })?;
        if let Some(other) = inner.params.get(alias) {
            if other.id() != t.id() {
                return Err(self.both_names(name, alias));
            }
        }
        inner.params.insert(alias.to_string(), t);
        Ok(())
    }

    /// Move the tensor `from` to the name `to` (an old checkpoint's name for a
    /// parameter, e.g. `LayerNorm.gamma` for `LayerNorm.weight`). Refuses when `to` is
    /// taken: a file holding one parameter under both names has two candidate values,
    /// and keeping whichever came last would be a silent guess.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        let mut inner = self.lock();
        if inner.params.contains_key(to) {
            return Err(self.both_names(from, to));
        }
        let t = inner.params.remove(from).ok_or_else(|| {
            Error::msg(format!(
                "{}: cannot rename missing {from:?} to {to:?}",
                self.where_()
            ))
        })?;
        inner.params.insert(to.to_string(), t);
        Ok(())
    }

    /// The error for one parameter found under two names.
    pub fn both_names(&self, a: &str, b: &str) -> Error {
        Error::msg(format!(
            "{}: holds both {a:?} and {b:?}, two names of the same parameter; keep only one \
             of them",
            self.where_()
        ))
    }

    /// Remove a name (e.g. a key HF ignores, or a tied alias before saving).
    pub fn remove(&self, name: &str) -> Option<Tensor> {
        self.lock().params.remove(name)
    }

    /// Names that were initialised fresh instead of loaded.
    pub fn initialised(&self) -> Vec<String> {
        self.lock().initialised.clone()
    }

    /// All (name, tensor) pairs in name order. Tied names appear once each.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        self.lock()
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Unique trainable tensors (tied names collapsed, first name kept), in name order.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        let mut seen = std::collections::HashSet::new();
        self.named()
            .into_iter()
            .filter(|(_, t)| t.tracks() && seen.insert(t.id()))
            .collect()
    }

    pub fn num_params(&self) -> usize {
        self.trainable().iter().map(|(_, t)| t.elem_count()).sum()
    }

    /// Save to safetensors, skipping `skip` names (e.g. tied aliases HF does not store),
    /// converting floats to `dtype`.
    pub fn save(&self, path: &Path, skip: &[&str], dtype: DType) -> Result<()> {
        let mut out = BTreeMap::new();
        for (name, t) in self.named() {
            if skip.contains(&name.as_str()) {
                continue;
            }
            let t = if t.dtype().is_float() && t.dtype() != dtype {
                t.to_dtype(dtype)?
            } else {
                t
            };
            out.insert(name, t);
        }
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        safetensors_io::save(path, &out, Some(meta))
    }

    /// A view that prefixes names.
    pub fn vb(&self) -> VarBuilder {
        VarBuilder {
            store: self.clone(),
            prefix: String::new(),
        }
    }
}

/// A name-prefixed view of a `ParamStore`.
#[derive(Clone)]
pub struct VarBuilder {
    store: ParamStore,
    prefix: String,
}

impl VarBuilder {
    /// `vb.pp("encoder").pp("layer.0")` names `encoder.layer.0.*`.
    pub fn pp(&self, s: impl std::fmt::Display) -> VarBuilder {
        let prefix = if self.prefix.is_empty() {
            s.to_string()
        } else {
            format!("{}.{s}", self.prefix)
        };
        VarBuilder {
            store: self.store.clone(),
            prefix,
        }
    }
    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }
    pub fn get(&self, leaf: &str, shape: &[usize]) -> Result<Tensor> {
        self.store.get(&self.name(leaf), shape)
    }
    pub fn get_or_init(&self, leaf: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        self.store.get_or_init(&self.name(leaf), shape, init)
    }
    pub fn freeze(&self, leaf: &str) -> Result<Tensor> {
        self.store.freeze(&self.name(leaf))
    }
    pub fn contains(&self, leaf: &str) -> bool {
        self.store.contains(&self.name(leaf))
    }
    pub fn store(&self) -> &ParamStore {
        &self.store
    }
    pub fn shape_of(&self, leaf: &str) -> Option<Shape> {
        self.store
            .lock()
            .params
            .get(&self.name(leaf))
            .map(|t| t.shape().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_and_alias_refuse_a_taken_name() -> Result<()> {
        let store = ParamStore::new(Device::Cpu, DType::F32, 0);
        let a = store.get_or_init("ln.gamma", &[2], Init::Ones)?;
        store.get_or_init("ln.weight", &[2], Init::Zeros)?;
        let err = store
            .rename("ln.gamma", "ln.weight")
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(
            err.contains("\"ln.gamma\"") && err.contains("\"ln.weight\""),
            "{err}"
        );
        assert!(store.alias("ln.weight", "ln.gamma").is_err());
        // Nothing moved: both names keep their own tensors.
        assert_eq!(store.get("ln.gamma", &[2])?.id(), a.id());
        assert_eq!(store.get("ln.weight", &[2])?.to_vec_f32()?, vec![0.0, 0.0]);
        // A free name: moved; tying a name to the tensor it already has is fine.
        store.rename("ln.gamma", "ln.g")?;
        assert!(!store.contains("ln.gamma") && store.contains("ln.g"));
        store.alias("tied", "ln.g")?;
        store.alias("tied", "ln.g")?;
        Ok(())
    }
}
