//! Pick the model class from a checkpoint's config.json, as transformers' `Auto*`
//! classes do.

use std::path::Path;

use super::bert::BertForQa;
use super::distilbert::DistilBertForQa;
use super::hf::read_config;
use super::qa::QaModel;
use crate::error::{Error, Result};
use crate::shape::{DType, Device};

/// Load a BERT or DistilBERT QA model from an HF model directory, by the `model_type` of
/// its config.json.
pub fn load_qa_model(
    dir: &Path,
    device: Device,
    dtype: DType,
    seed: u64,
) -> Result<Box<dyn QaModel>> {
    let v: serde_json::Value = read_config(dir)?;
    match v.get("model_type").and_then(|m| m.as_str()) {
        Some("distilbert") => Ok(Box::new(DistilBertForQa::load(dir, device, dtype, seed)?)),
        Some("bert") => Ok(Box::new(BertForQa::load(dir, device, dtype, seed)?)),
        other => Err(Error::msg(format!(
            "{}: model_type {other:?} is not a QA encoder fusebox supports (expected \"distilbert\" or \"bert\")",
            dir.join("config.json").display()
        ))),
    }
}
