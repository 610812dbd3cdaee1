//! Pick the model class from a checkpoint's config.json, as transformers' `Auto*`
//! classes do.

use std::path::Path;

use super::bart::BartForConditionalGeneration;
use super::bert::BertForQa;
use super::distilbert::DistilBertForQa;
use super::hf::{read_config, weights_path};
use super::qa::QaModel;
use super::seq2seq::Seq2SeqLm;
use super::t5::T5ForConditionalGeneration;
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
        Some(other @ ("t5" | "bart" | "marian")) => Err(Error::msg(format!(
            "{}: model_type \"{other}\": this is an encoder-decoder LM, not a QA encoder; \
             train qa and infer qa need a BERT or DistilBERT checkpoint (summarize and \
             translate take this one)",
            dir.join("config.json").display()
        ))),
        other => Err(Error::msg(format!(
            "{}: model_type {} is not a QA encoder fusebox supports (expected \"distilbert\" or \"bert\")",
            dir.join("config.json").display(),
            other.map_or("missing".to_string(), |o| format!("{o:?}"))
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

/// Load an encoder-decoder LM (summarize, translate, generate) from an HF model
/// directory, picking the family by config.json's `model_type`, as
/// `AutoModelForSeq2SeqLM` does (T5, BART, Marian). A config without `model_type` is
/// read as T5 (early fusebox and hand-written T5 configs omit it).
pub fn load_seq2seq_lm(dir: &Path, device: Device, dtype: DType) -> Result<Box<dyn Seq2SeqLm>> {
    let v: serde_json::Value = read_config(dir)?;
    let origin = dir.join("config.json").display().to_string();
    let model_type = match v.get("model_type") {
        None | Some(serde_json::Value::Null) => "t5",
        Some(serde_json::Value::String(t)) => t.as_str(),
        Some(x) => {
            return Err(Error::msg(format!(
                "{origin}: model_type {x}: expected a string such as \"t5\""
            )))
        }
    };
    match model_type {
        "t5" => Ok(Box::new(T5ForConditionalGeneration::load(
            dir, device, dtype,
        )?)),
        "bart" | "marian" => Ok(Box::new(BartForConditionalGeneration::load(
            dir, device, dtype,
        )?)),
        other => Err(Error::msg(format!(
            "{origin}: model_type {other:?}: this is a {other} model, not an encoder-decoder \
             LM; summarize, translate and generate each needs a T5, BART or Marian checkpoint \
             (model_type \"t5\", \"bart\" or \"marian\")"
        ))),
    }
}
