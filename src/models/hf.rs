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
    let text = crate::text::read_text(&path)?;
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

/// A size config.json states that a checkpoint tensor's shape records too: axis `axis`
/// of `tensor` must be `value * per` (`per` > 1 for a product, e.g. T5's heads × d_kv).
pub struct SizeCheck<'a> {
    pub field: &'a str,
    pub value: usize,
    pub per: usize,
    pub tensor: String,
    pub axis: usize,
}

/// `field`'s value as config.json gives it, for errors: a field absent from the file
/// took transformers' default, which rarely fits a small checkpoint.
fn stated(raw: &serde_json::Value, field: &str, value: usize) -> String {
    if raw.get(field).is_some() {
        value.to_string()
    } else {
        format!("absent (so transformers' default, {value})")
    }
}

/// Compare config.json's sizes with the checkpoint's shapes before the model is built,
/// so a missing or wrong field is reported as that field rather than as a tensor whose
/// shape does not match. Tensors the checkpoint lacks are left to the loader.
pub fn check_sizes(
    raw: &serde_json::Value,
    config: &Path,
    store: &ParamStore,
    checks: &[SizeCheck<'_>],
) -> Result<()> {
    let weights = store
        .source()
        .map_or("the checkpoint".to_string(), |p| p.display().to_string());
    for c in checks {
        let Some(shape) = store.vb().shape_of(&c.tensor) else {
            continue;
        };
        let Some(&got) = shape.dims().get(c.axis) else {
            continue;
        };
        if got != c.value * c.per {
            let needs = if c.per > 1 && got.is_multiple_of(c.per) {
                format!(", which needs `{}` {}", c.field, got / c.per)
            } else if c.per == 1 {
                format!(", which needs `{}` {got}", c.field)
            } else {
                String::new()
            };
            return Err(Error::msg(format!(
                "{}: `{}` is {}, but {weights} holds {:?} with shape {}{needs}",
                config.display(),
                c.field,
                stated(raw, c.field, c.value),
                c.tensor,
                shape
            )));
        }
    }
    Ok(())
}

/// The layer count config.json states (`field`, `value`) against the layers the
/// checkpoint holds under `prefix` (`prefix0.`, `prefix1.`, ...). A config with fewer
/// layers would silently leave trained layers out; one with more would report every
/// tensor of the missing layers.
pub fn check_layer_count(
    raw: &serde_json::Value,
    config: &Path,
    store: &ParamStore,
    field: &str,
    value: usize,
    prefix: &str,
) -> Result<()> {
    let held = store
        .named()
        .iter()
        .filter_map(|(n, _)| {
            n.strip_prefix(prefix)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |i| i + 1);
    if held == 0 || held == value {
        return Ok(());
    }
    let weights = store
        .source()
        .map_or("the checkpoint".to_string(), |p| p.display().to_string());
    Err(Error::msg(format!(
        "{}: `{field}` is {}, but {weights} holds {held} layer{} ({prefix}0 .. {prefix}{})",
        config.display(),
        stated(raw, field, value),
        if held == 1 { "" } else { "s" },
        held - 1
    )))
}

/// Refuse a zero where the model needs a positive size; `file` and `field` are named.
pub fn check_positive(file: &Path, fields: &[(&str, usize)]) -> Result<()> {
    for &(field, v) in fields {
        if v == 0 {
            return Err(Error::msg(format!(
                "{}: field `{field}` is 0; expected a positive integer",
                file.display()
            )));
        }
    }
    Ok(())
}

/// The config.json a model writes: `raw` (the file it was loaded from, so fields the
/// model does not read survive a save) updated with `ours` (its config struct), for the
/// caller to set the fields it derives. `what` names the config in errors.
pub fn merged_config(
    raw: Option<&serde_json::Value>,
    ours: &impl serde::Serialize,
    what: &str,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut out = match raw {
        Some(serde_json::Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    };
    match serde_json::to_value(ours) {
        Ok(serde_json::Value::Object(m)) => out.extend(m),
        Ok(_) => return Err(Error::msg(format!("{what}: not a JSON object"))),
        Err(e) => return Err(Error::msg(format!("{what}: cannot serialise: {e}"))),
    }
    Ok(out)
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
