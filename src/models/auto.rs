//! Pick the model class from a checkpoint's config.json, as transformers' `Auto*`
//! classes do.

use std::path::Path;

use super::bert::BertForQa;
use super::distilbert::DistilBertForQa;
use super::hf::{read_config, weights_path};
use super::qa::QaModel;
use crate::error::{Error, Result};
use crate::nn::safetensors_io;
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

/// [`load_qa_model`] for inference: the checkpoint must hold the trained QA head. A
/// base-model checkpoint (no `qa_outputs`) would get a random head and answer at random,
/// so it is refused, naming the tensor; training is what initialises a fresh head.
pub fn load_trained_qa_model(dir: &Path, device: Device, dtype: DType) -> Result<Box<dyn QaModel>> {
    // config.json first, as `load_qa_model` reads it: a wrong directory is named by it.
    read_config::<serde_json::Value>(dir)?;
    let weights = weights_path(dir)?;
    let names = safetensors_io::tensor_names(&weights)?;
    for t in ["qa_outputs.weight", "qa_outputs.bias"] {
        if !names.iter().any(|n| n == t) {
            return Err(Error::msg(format!(
                "{}: no tensor {t:?}: the checkpoint has no trained QA head (a base model?); \
                 answering needs one: fine-tune it first (`train qa --model {}`)",
                weights.display(),
                dir.display()
            )));
        }
    }
    load_qa_model(dir, device, dtype, 0)
}
