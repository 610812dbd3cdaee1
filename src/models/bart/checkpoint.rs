//! A BART / Marian checkpoint's names brought to the ones the model builds from, and its
//! shapes checked against config.json, before the model is wired.
//!
//! transformers stores the shared embedding once (`model.shared.weight`) and re-ties its
//! aliases at load (`_tied_weights_keys`): `model.encoder.embed_tokens.weight`,
//! `model.decoder.embed_tokens.weight` and `lm_head.weight`. Older or hand-made files
//! hold any of them, once or several times; a base-model file (`BartModel`, e.g.
//! bart-base) has no `model.` prefix and no `final_logits_bias`. Marian files may hold
//! the fixed sinusoidal tables (`_keys_to_ignore_on_save` drops them today).

use std::path::Path;

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::models::hf::{check_layer_count, check_sizes, SizeCheck};
use crate::nn::ParamStore;
use crate::ops::UnaryOp;
use crate::shape::{DType, Device};
use crate::tensor::Tensor;

use super::config::{BartConfig, Family};
use super::layers::sinusoidal_positions;

pub const SHARED: &str = "model.shared.weight";
pub const LM_HEAD: &str = "lm_head.weight";
pub const FINAL_LOGITS_BIAS: &str = "final_logits_bias";
const EMBED_ALIASES: [&str; 2] = [
    "model.encoder.embed_tokens.weight",
    "model.decoder.embed_tokens.weight",
];
const MARIAN_POSITIONS: [&str; 2] = [
    "model.encoder.embed_positions.weight",
    "model.decoder.embed_positions.weight",
];
/// HF's `_keys_to_ignore_on_load_unexpected` (fairseq's version counters).
const IGNORED: [&str; 2] = ["model.encoder.version", "model.decoder.version"];

fn source(store: &ParamStore) -> String {
    store
        .source()
        .map_or("the checkpoint".to_string(), |p| p.display().to_string())
}

/// Do two tensors hold the same values? On the meta device (no values) this is the
/// configuration's answer, `assume`.
fn same_values(a: &Tensor, b: &Tensor, assume: bool) -> Result<bool> {
    if a.dims() != b.dims() {
        return Ok(false);
    }
    if let Device::Meta(_) = a.device() {
        return Ok(assume);
    }
    let _g = no_grad();
    let d = a.sub(b)?.unary(UnaryOp::Sqr)?.sum_all()?.to_scalar()?;
    Ok(d == 0.0)
}

/// Rename, drop and check the tied and fixed tensors of a loaded `store` so that it holds
/// exactly what [`super::BartForConditionalGeneration`] builds from.
pub fn normalize(store: &ParamStore, cfg: &BartConfig) -> Result<()> {
    let names: Vec<String> = store.named().into_iter().map(|(n, _)| n).collect();
    // A base-model checkpoint (`BartModel`, `MarianModel`): HF adds the prefix at load.
    if !names.iter().any(|n| n.starts_with("model.")) {
        for n in &names {
            if n != FINAL_LOGITS_BIAS && n != LM_HEAD {
                store.rename(n, &format!("model.{n}"))?;
            }
        }
    }
    for k in IGNORED {
        store.remove(k);
    }
    if !store.contains(SHARED) {
        let from = EMBED_ALIASES
            .iter()
            .chain(cfg.tie_word_embeddings.then_some(&LM_HEAD))
            .find(|k| store.contains(k));
        if let Some(k) = from {
            store.rename(k, SHARED)?;
        }
    }
    let Some(shared) = store
        .named()
        .into_iter()
        .find(|(n, _)| n == SHARED)
        .map(|(_, t)| t)
    else {
        return Ok(()); // reported as missing when the model is built
    };
    for k in EMBED_ALIASES {
        let Some(t) = store.remove(k) else { continue };
        if !same_values(&t, &shared, true)? {
            return Err(Error::msg(format!(
                "{}: {k:?} differs from {SHARED:?}: separate encoder / decoder embeddings \
                 are not supported (transformers ties them to the shared embedding)",
                source(store)
            )));
        }
    }
    // An lm_head equal to the embedding is the tied alias; a different one is the model's
    // own head (transformers unties it at load then, whatever tie_word_embeddings says).
    if let Some(head) = store
        .named()
        .into_iter()
        .find(|(n, _)| n == LM_HEAD)
        .map(|(_, t)| t)
    {
        if same_values(&head, &shared, cfg.tie_word_embeddings)? {
            store.remove(LM_HEAD);
        }
    }
    if cfg.family() == Family::Marian {
        check_marian_positions(store, cfg)?;
    }
    Ok(())
}

/// Marian's position tables are fixed: a checkpoint that holds them must hold the
/// sinusoidal formula (they are dropped; the model computes its own).
fn check_marian_positions(store: &ParamStore, cfg: &BartConfig) -> Result<()> {
    let (n, d) = (cfg.max_position_embeddings, cfg.d_model);
    for k in MARIAN_POSITIONS {
        let Some(t) = store.remove(k) else { continue };
        if t.dims() != [n, d] {
            return Err(Error::msg(format!(
                "{}: {k:?} has shape {}, but config.json's max_position_embeddings {n} and \
                 d_model {d} make Marian's sinusoidal table [{n}, {d}]",
                source(store),
                t.shape()
            )));
        }
        if let Device::Meta(_) = t.device() {
            continue;
        }
        let want = sinusoidal_positions(n, d, Device::Cpu, DType::F32)?.to_vec_f64()?;
        let tol = if t.dtype() == DType::F16 { 1e-3 } else { 1e-6 };
        let got = t.to_vec_f64()?;
        if let Some(i) = (0..got.len()).find(|&i| (got[i] - want[i]).abs() > tol) {
            return Err(Error::msg(format!(
                "{}: {k:?} is not Marian's sinusoidal position table (row {}, column {}: \
                 {} where the formula gives {}); fusebox computes that table and does not \
                 train it",
                source(store),
                i / d,
                i % d,
                got[i],
                want[i]
            )));
        }
    }
    Ok(())
}

/// config.json's sizes against the checkpoint's shapes, naming the field.
pub fn check_config_sizes(
    cfg: &BartConfig,
    raw: &serde_json::Value,
    cfg_path: &Path,
    store: &ParamStore,
) -> Result<()> {
    let check = |field, value, tensor: &str, axis| SizeCheck {
        field,
        value,
        per: 1,
        tensor: tensor.to_string(),
        axis,
    };
    let (enc, dec) = ("model.encoder.layers.0", "model.decoder.layers.0");
    check_sizes(
        raw,
        cfg_path,
        store,
        &[
            check("d_model", cfg.d_model, SHARED, 1),
            check("vocab_size", cfg.vocab_size, SHARED, 0),
            check("vocab_size", cfg.vocab_size, LM_HEAD, 0),
            check("vocab_size", cfg.vocab_size, FINAL_LOGITS_BIAS, 1),
            check(
                "d_model",
                cfg.d_model,
                &format!("{enc}.self_attn.q_proj.weight"),
                1,
            ),
            check(
                "encoder_ffn_dim",
                cfg.encoder_ffn_dim,
                &format!("{enc}.fc1.weight"),
                0,
            ),
            check(
                "decoder_ffn_dim",
                cfg.decoder_ffn_dim,
                &format!("{dec}.fc1.weight"),
                0,
            ),
        ],
    )?;
    if cfg.family() == Family::Bart {
        for stack in ["encoder", "decoder"] {
            let name = format!("model.{stack}.embed_positions.weight");
            let Some(shape) = store.vb().shape_of(&name) else {
                continue;
            };
            let rows = shape.dims()[0];
            if rows != cfg.max_position_embeddings + 2 {
                return Err(Error::msg(format!(
                    "{}: `max_position_embeddings` is {}, but {} holds {name:?} with shape \
                     {shape} (BART's table has max_position_embeddings + 2 rows), which needs \
                     `max_position_embeddings` {}",
                    cfg_path.display(),
                    cfg.max_position_embeddings,
                    source(store),
                    rows.saturating_sub(2)
                )));
            }
        }
    }
    check_layer_count(
        raw,
        cfg_path,
        store,
        "encoder_layers",
        cfg.encoder_layers,
        "model.encoder.layers.",
    )?;
    check_layer_count(
        raw,
        cfg_path,
        store,
        "decoder_layers",
        cfg.decoder_layers,
        "model.decoder.layers.",
    )
}

/// Fail when the store holds a tensor the model does not use (`used`: the ids of every
/// tensor it built from): an unexpected name means a checkpoint of another shape, whose
/// tensor would otherwise be saved and trained without taking part in the model.
pub fn check_all_used(store: &ParamStore, used: &[Tensor]) -> Result<()> {
    let ids: std::collections::HashSet<_> = used.iter().map(|t| t.id()).collect();
    let extra: Vec<String> = store
        .named()
        .into_iter()
        .filter(|(_, t)| !ids.contains(&t.id()))
        .map(|(n, _)| n)
        .collect();
    if let Some(first) = extra.first() {
        return Err(Error::msg(format!(
            "{}: unexpected tensor {first:?}, not part of a BART / Marian model with this \
             config.json ({} unexpected in all: {})",
            source(store),
            extra.len(),
            extra.join(", ")
        )));
    }
    Ok(())
}
