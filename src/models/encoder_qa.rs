//! An encoder with a QA head — HF `BertForQuestionAnswering` and
//! `DistilBertForQuestionAnswering` — written once for both: load (adopting bare
//! base-model checkpoints), fresh init, save, and the `QaModel` implementation. What
//! differs between the two is their config.json, said by [`EncoderFamily`].

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::encoder::{Encoder, EncoderSpec, Part};
use super::hf::{
    check_complete, check_layer_count, check_sizes, config_text, save_hf, weights_path, SizeCheck,
};
use super::qa::{QaBatch, QaHead, QaModel};
use crate::error::{Error, Result};
use crate::nn::{Mode, ParamStore};
use crate::shape::{DType, Device};
use crate::tensor::Tensor;

/// config.json's names for the sizes a checkpoint's shapes record too (HF BERT's by
/// default).
#[derive(Clone, Copy, Debug)]
pub struct SizeFields {
    pub vocab: &'static str,
    pub hidden: &'static str,
    pub positions: &'static str,
    pub intermediate: &'static str,
    pub layers: &'static str,
    pub heads: &'static str,
    /// The activation's name.
    pub act: &'static str,
}

/// The size and activation checks every family shares, on the family's own field names
/// (`SIZE_FIELDS`), the values read through serde: each family names its fields once.
pub fn check_family<C: EncoderFamily>(config: &C, file: &Path) -> Result<()> {
    let v = serde_json::to_value(config)
        .map_err(|e| crate::error::Error::msg(format!("{}: {e}", file.display())))?;
    let f = C::SIZE_FIELDS;
    let size = |name: &'static str| {
        let n = v.get(name).and_then(|x| x.as_u64()).ok_or_else(|| {
            crate::error::Error::msg(format!("{}: {name} is not a size", file.display()))
        })?;
        Ok::<_, crate::error::Error>((name, n as usize))
    };
    let sizes = [
        size(f.vocab)?,
        size(f.positions)?,
        size(f.layers)?,
        size(f.heads)?,
        size(f.hidden)?,
        size(f.intermediate)?,
    ];
    let act = v.get(f.act).and_then(|x| x.as_str()).unwrap_or_default();
    super::encoder::validate_sizes(file, sizes, (f.act, act))
}

/// What a QA encoder family says about itself: its config.json and HF names.
pub trait EncoderFamily: Serialize + DeserializeOwned {
    /// HF `model_type`, also the prefix of the encoder's parameters ("bert").
    const MODEL_TYPE: &'static str;
    /// The HF class the QA model matches ("BertForQuestionAnswering").
    const QA_CLASS: &'static str;
    /// The root names of a bare base-model checkpoint (`embeddings`, `encoder`, ...),
    /// which gain the `MODEL_TYPE.` prefix on load.
    const BARE_ROOTS: &'static [&'static str];
    /// The config.json fields of the sizes checked against a checkpoint's shapes.
    const SIZE_FIELDS: SizeFields = SizeFields {
        vocab: "vocab_size",
        hidden: "hidden_size",
        positions: "max_position_embeddings",
        intermediate: "intermediate_size",
        layers: "num_hidden_layers",
        heads: "num_attention_heads",
        act: "hidden_act",
    };

    /// Refuse what fusebox does not implement; `file` names the config in errors.
    fn check(&self, file: &Path) -> Result<()>;
    /// The encoder this config describes.
    fn encoder_spec(&self) -> Result<EncoderSpec>;
    /// Dropout before `qa_outputs` (DistilBERT's `qa_dropout`; BERT has none).
    fn qa_dropout(&self) -> Option<f32>;
}

/// An encoder family with HF's QA head (`qa_outputs`).
pub struct EncoderForQa<C> {
    pub config: C,
    encoder: Encoder,
    head: QaHead,
    store: ParamStore,
}

impl<C: EncoderFamily> EncoderForQa<C> {
    /// Load an HF model directory (config.json + model.safetensors).
    pub fn load(dir: &Path, device: Device, dtype: DType, seed: u64) -> Result<Self> {
        let (cfg_path, text) = config_text(dir)?;
        let raw: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::msg(format!("{}: {e}", cfg_path.display())))?;
        let config: C = serde_json::from_value(raw.clone())
            .map_err(|e| Error::msg(format!("{}: {e}", cfg_path.display())))?;
        config.check(&cfg_path)?;
        let weights = weights_path(dir)?;
        let store = ParamStore::load(&weights, device, dtype, seed)?;
        adopt_checkpoint(&store, C::MODEL_TYPE, C::BARE_ROOTS)?;
        check_config_sizes(&config, &raw, &cfg_path, &store)?;
        let model = Self::build(config, store)?;
        // Only the QA head may be new (a base checkpoint has none).
        check_complete(&model.store, &weights, Some("qa_outputs"))?;
        Ok(model)
    }

    /// A freshly initialised model (HF `_init_weights`: normal(0, initializer_range),
    /// zero biases, unit LayerNorms).
    pub fn new(config: C, device: Device, dtype: DType, seed: u64) -> Result<Self> {
        config.check(Path::new("config"))?;
        Self::build(config, ParamStore::new(device, dtype, seed))
    }

    fn build(config: C, store: ParamStore) -> Result<Self> {
        let vb = store.vb();
        let spec = config.encoder_spec()?;
        let encoder = Encoder::new(&vb.pp(C::MODEL_TYPE), spec)?;
        let head = QaHead::new(&vb, spec.dims.hidden, spec.dims.init_std)?;
        Ok(EncoderForQa {
            config,
            encoder,
            head,
            store,
        })
    }

    /// The encoder (HF `model.bert` / `model.distilbert`): `encoder().forward(..)` gives
    /// the last hidden states.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// config.json as transformers reads it back.
    fn hf_config(&self) -> Result<serde_json::Value> {
        let mut v = serde_json::to_value(&self.config)
            .map_err(|e| Error::msg(format!("{} config: {e}", C::MODEL_TYPE)))?;
        if let Some(o) = v.as_object_mut() {
            o.insert("model_type".into(), C::MODEL_TYPE.into());
            o.insert("architectures".into(), serde_json::json!([C::QA_CLASS]));
        }
        Ok(v)
    }
}

impl<C: EncoderFamily> QaModel for EncoderForQa<C> {
    fn forward(&self, batch: &QaBatch, mode: Mode) -> Result<(Tensor, Tensor)> {
        let tt = batch.token_type_ids.as_ref();
        let mut h = (self.encoder).forward(&batch.input_ids, &batch.attention_mask, tt, mode)?;
        if let Some(p) = self.config.qa_dropout() {
            h = h.dropout(mode.p(p), mode.seed_for(0))?;
        }
        self.head.forward(&h)
    }
    fn params(&self) -> &ParamStore {
        &self.store
    }
    fn set_checkpointing(&mut self, on: bool) {
        self.encoder.checkpointing = on;
    }
    fn checkpointing(&self) -> bool {
        self.encoder.checkpointing
    }
    fn save(&self, dir: &Path) -> Result<()> {
        save_hf(dir, &self.hf_config()?, &self.store)
    }
    fn hf_class(&self) -> &'static str {
        C::QA_CLASS
    }
    fn vocab_size(&self) -> usize {
        self.encoder.spec().vocab
    }
    fn max_positions(&self) -> usize {
        self.encoder.spec().max_positions
    }
    fn pad_token_id(&self) -> u32 {
        self.encoder.spec().pad_token_id
    }
    fn uses_token_type_ids(&self) -> bool {
        self.encoder.has_token_types()
    }
}

/// config.json's sizes against the (adopted) checkpoint's shapes, naming the field.
fn check_config_sizes<C: EncoderFamily>(
    config: &C,
    raw: &serde_json::Value,
    cfg_path: &Path,
    store: &ParamStore,
) -> Result<()> {
    let (spec, f, mt) = (config.encoder_spec()?, C::SIZE_FIELDS, C::MODEL_TYPE);
    let word = format!("{mt}.embeddings.word_embeddings.weight");
    let position = format!("{mt}.embeddings.position_embeddings.weight");
    let ffn_in = format!(
        "{mt}.{}.0.{}.weight",
        spec.layer_prefix,
        spec.names.of(Part::FfnIn)
    );
    let check = |field, value, tensor: &String, axis| SizeCheck {
        field,
        value,
        per: 1,
        tensor: tensor.clone(),
        axis,
    };
    check_sizes(
        raw,
        cfg_path,
        store,
        &[
            check(f.hidden, spec.dims.hidden, &word, 1),
            check(f.vocab, spec.vocab, &word, 0),
            check(f.positions, spec.max_positions, &position, 0),
            check(f.intermediate, spec.dims.intermediate, &ffn_in, 0),
        ],
    )?;
    let layers = format!("{mt}.{}.", spec.layer_prefix);
    check_layer_count(raw, cfg_path, store, f.layers, spec.layers, &layers)
}

/// Bring a checkpoint's names to the QA model's layout: bare base-model names
/// (`embeddings.*`, `encoder.*`/`transformer.*`) gain `prefix.`, and old TF-converted
/// BERT checkpoints' `LayerNorm.gamma/beta` become `weight/bias` (transformers renames
/// them on load, and so do we). Tensors the QA model does not use (pooler, pre-training
/// heads, integer buffers such as `position_ids`) are dropped with one log line, as
/// transformers reports unused weights.
///
/// A file holding one parameter under two names (`gamma` and `weight`, or bare and
/// prefixed) is refused, naming both: keeping either would be a silent guess.
fn adopt_checkpoint(store: &ParamStore, prefix: &str, bare_roots: &[&str]) -> Result<()> {
    let mut dropped = Vec::new();
    // Current name -> the file's name for it, to name both sides of a clash.
    let mut adopted = std::collections::BTreeMap::new();
    for (name, t) in store.named() {
        let root = name.split('.').next().unwrap_or("");
        let target = if name.starts_with(&format!("{prefix}.")) || root == "qa_outputs" {
            name.clone()
        } else if bare_roots.contains(&root) {
            format!("{prefix}.{name}")
        } else {
            dropped.push(name.clone());
            store.remove(&name);
            continue;
        };
        let target = match target.strip_suffix(".gamma") {
            Some(base) => format!("{base}.weight"),
            None => match target.strip_suffix(".beta") {
                Some(base) => format!("{base}.bias"),
                None => target,
            },
        };
        let unused = !t.dtype().is_float() || target.starts_with(&format!("{prefix}.pooler."));
        if unused {
            dropped.push(name.clone());
            store.remove(&name);
            continue;
        }
        if let Some(first) = adopted.insert(target.clone(), name.clone()) {
            return Err(store.both_names(&first, &name));
        }
        if target != name {
            store.rename(&name, &target)?;
        }
    }
    if !dropped.is_empty() {
        eprintln!(
            "fusebox: {} checkpoint tensors unused by the QA model were dropped: {}",
            dropped.len(),
            dropped.join(", ")
        );
    }
    Ok(())
}
