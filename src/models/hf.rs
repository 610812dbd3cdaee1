//! The Hugging Face model directory every family reads and writes: `config.json` and a
//! single `model.safetensors` (what `save_pretrained(safe_serialization=True)` writes).
//! Every error names the file.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::shape::DType;

/// `dir/config.json`'s path and text.
pub fn config_text(dir: &Path) -> Result<(PathBuf, String)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    Ok((path, text))
}

/// `dir/config.json` parsed into `T`.
pub fn read_config<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<T> {
    let (path, text) = config_text(dir)?;
    serde_json::from_str(&text).map_err(|e| Error::msg(format!("{}: {e}", path.display())))
}

/// The weights file of a model directory (single-file safetensors only).
pub fn weights_path(dir: &Path) -> Result<PathBuf> {
    let p = dir.join("model.safetensors");
    if p.exists() {
        return Ok(p);
    }
    Err(Error::msg(format!(
        "{}: no model.safetensors (sharded checkpoints and pytorch_model.bin are not supported; \
         convert with transformers' save_pretrained(safe_serialization=True))",
        dir.display()
    )))
}

/// Fail when building the model from a checkpoint created a parameter (other than those
/// under `may_be_fresh.`, e.g. a QA head new to a base checkpoint): a missing weight
/// means the names did not match, and a half-random model would be silent garbage.
pub fn check_complete(
    store: &ParamStore,
    weights: &Path,
    may_be_fresh: Option<&str>,
) -> Result<()> {
    let missing: Vec<String> = store
        .initialised()
        .into_iter()
        .filter(|n| may_be_fresh.is_none_or(|p| !n.starts_with(&format!("{p}."))))
        .collect();
    if let Some(first) = missing.first() {
        return Err(Error::msg(format!(
            "{}: missing tensor {first:?} ({} missing in all: {})",
            weights.display(),
            missing.len(),
            missing.join(", ")
        )));
    }
    Ok(())
}

/// Write `value` as pretty JSON to `dir/name`.
pub fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> Result<()> {
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))
}

/// Write `config` as config.json and the store as model.safetensors (f32) in `dir`.
pub fn save_hf(dir: &Path, config: &serde_json::Value, store: &ParamStore) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_json(dir, "config.json", config)?;
    store.save(&dir.join("model.safetensors"), &[], DType::F32)
}
