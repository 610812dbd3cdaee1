//! `T5ForConditionalGeneration`: the shared embedding, the encoder and decoder stacks
//! and the LM head, under HF's names; load, teacher-forced forward and loss, save.

use std::path::Path;

use crate::error::{Error, Result};
use crate::models::generation_config::GenerateConfig;
use crate::models::hf::{
    check_complete, check_layer_count, check_sizes, config_text, save_hf, weights_path, write_json,
    SizeCheck,
};
use crate::nn::{Init, Mode, ParamStore};
use crate::ops::softmax::IGNORE_INDEX;
use crate::shape::{DType, Device};
use crate::tensor::Tensor;

use super::config::T5Config;
use super::dropout::Dropout;
use super::fp16::Fp16Safety;
use super::layers::{CrossInput, T5Stack};

/// Keys HF skips on load (`_keys_to_ignore_on_load_unexpected`) or re-ties to
/// `shared.weight` (`_tied_weights_keys`): dropped so they neither train nor get saved.
const IGNORED_KEYS: [&str; 3] = [
    "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
];

pub struct T5ForConditionalGeneration {
    pub config: T5Config,
    store: ParamStore,
    pub(super) shared: Tensor,
    encoder: T5Stack,
    pub(super) decoder: T5Stack,
    lm_head: Tensor,
    tied_lm_head: bool,
    /// config.json as read, so a save keeps the fields we do not model.
    raw_config: Option<serde_json::Value>,
    /// Its generation settings (generation_config.json, else config.json), as
    /// transformers' `model.generation_config`; `save` writes them back.
    pub(super) generation: GenerateConfig,
    /// Drop attention probabilities in training, as HF does (default; fused into the
    /// attention op). `false` skips that dropout.
    pub attention_dropout: bool,
    /// The fp16 overflow guard (f32 residual stream); ignored for f32 weights.
    pub fp16_safety: Fp16Safety,
}

/// config.json's sizes against the checkpoint's shapes, naming the field (a field
/// absent from config.json takes t5-small's size, which a smaller checkpoint contradicts
/// in every tensor).
fn check_config_sizes(
    config: &T5Config,
    raw: &serde_json::Value,
    cfg_path: &Path,
    store: &ParamStore,
) -> Result<()> {
    let check = |field, value, per, tensor: &str, axis| SizeCheck {
        field,
        value,
        per,
        tensor: tensor.to_string(),
        axis,
    };
    let attn = "encoder.block.0.layer.0.SelfAttention";
    let ff = "encoder.block.0.layer.1.DenseReluDense";
    let h = config.num_heads;
    check_sizes(
        raw,
        cfg_path,
        store,
        &[
            check("d_model", config.d_model, 1, "shared.weight", 1),
            check("vocab_size", config.vocab_size, 1, "shared.weight", 0),
            check("d_model", config.d_model, 1, &format!("{attn}.q.weight"), 1),
            check(
                "num_heads",
                h,
                1,
                &format!("{attn}.relative_attention_bias.weight"),
                1,
            ),
            check(
                "relative_attention_num_buckets",
                config.relative_attention_num_buckets,
                1,
                &format!("{attn}.relative_attention_bias.weight"),
                0,
            ),
            check("d_kv", config.d_kv, h, &format!("{attn}.q.weight"), 0),
            check("d_ff", config.d_ff, 1, &format!("{ff}.wi.weight"), 0),
            check("d_ff", config.d_ff, 1, &format!("{ff}.wi_0.weight"), 0),
        ],
    )?;
    check_layer_count(
        raw,
        cfg_path,
        store,
        "num_layers",
        config.num_layers,
        "encoder.block.",
    )?;
    let dec_field = if raw.get("num_decoder_layers").is_some() {
        "num_decoder_layers"
    } else {
        "num_layers"
    };
    check_layer_count(
        raw,
        cfg_path,
        store,
        dec_field,
        config.decoder_layers(),
        "decoder.block.",
    )
}

impl T5ForConditionalGeneration {
    /// Load `dir/config.json` and `dir/model.safetensors` (an HF `save_pretrained`
    /// directory) in `dtype` on `device`.
    pub fn load(dir: &Path, device: Device, dtype: DType) -> Result<Self> {
        let (cfg_path, text) = config_text(dir)?;
        let origin = cfg_path.display().to_string();
        let raw: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::msg(format!("{origin}: invalid JSON: {e}")))?;
        // Another family's directory: say so, before its weights are searched for T5's.
        match raw.get("model_type").and_then(|m| m.as_str()) {
            Some("t5") | None => {}
            Some(other) => {
                return Err(Error::msg(format!(
                    "{origin}: model_type {other:?}: this is a {other} model; \
                     T5ForConditionalGeneration (summarize, translate, generate) needs a T5 \
                     checkpoint (model_type \"t5\")"
                )))
            }
        }
        let config = T5Config::from_json_str(&text, &origin)?;
        let weights = weights_path(dir)?;
        let store = ParamStore::load(&weights, device, dtype, 0)?;
        for k in IGNORED_KEYS {
            store.remove(k);
        }
        check_config_sizes(&config, &raw, &cfg_path, &store)?;
        let generation = GenerateConfig::from_model_dir(Self::special_tokens(&config), dir, &raw)?;
        let mut model = Self::build(config, store, Some(raw), false)?;
        model.generation = generation;
        check_complete(&model.store, &weights, None)?;
        Ok(model)
    }

    /// A randomly initialised model (HF `_init_weights`), seeded.
    pub fn new_random(config: T5Config, device: Device, dtype: DType, seed: u64) -> Result<Self> {
        config.validate("the T5 config")?;
        let tie = config.tie_word_embeddings.unwrap_or(true);
        Self::build(config, ParamStore::new(device, dtype, seed), None, !tie)
    }

    /// transformers' generation defaults with this config's special ids.
    fn special_tokens(config: &T5Config) -> GenerateConfig {
        GenerateConfig::with_special_tokens(
            config.decoder_start_id(),
            config.eos_ids(),
            config.pad_token_id,
        )
    }

    /// Wire the modules to the parameters in `store`. The LM head is `lm_head.weight`
    /// when the store has it (or `untied_init` asks for one), else `shared.weight`.
    fn build(
        config: T5Config,
        store: ParamStore,
        raw_config: Option<serde_json::Value>,
        untied_init: bool,
    ) -> Result<Self> {
        let vb = store.vb();
        let (v, dm) = (config.vocab_size, config.d_model);
        let shared = vb
            .pp("shared")
            .get_or_init("weight", &[v, dm], Init::Normal(1.0))?;
        let encoder = T5Stack::new(&vb.pp("encoder"), &config, false)?;
        let decoder = T5Stack::new(&vb.pp("decoder"), &config, true)?;
        let mut tied_lm_head = !(store.contains("lm_head.weight") || untied_init);
        let mut lm_head = if tied_lm_head {
            shared.clone()
        } else {
            vb.pp("lm_head")
                .get_or_init("weight", &[v, dm], Init::Normal(1.0))?
        };
        // A tied checkpoint saved with its alias: keep it tied, as transformers does
        // when both tensors are present and equal.
        if !tied_lm_head && raw_config.is_some() && lm_head.to_vec_f64()? == shared.to_vec_f64()? {
            store.remove("lm_head.weight");
            lm_head = shared.clone();
            tied_lm_head = true;
        }
        Ok(T5ForConditionalGeneration {
            generation: Self::special_tokens(&config),
            config,
            store,
            shared,
            encoder,
            decoder,
            lm_head,
            tied_lm_head,
            raw_config,
            attention_dropout: true,
            fp16_safety: Fp16Safety::default(),
        })
    }

    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// Recompute each encoder and decoder block's forward in backward instead of keeping
    /// its activations (activation checkpointing).
    pub fn set_checkpointing(&mut self, on: bool) {
        self.encoder.checkpointing = on;
        self.decoder.checkpointing = on;
    }
    pub fn checkpointing(&self) -> bool {
        self.encoder.checkpointing
    }

    /// Is the LM head the shared embedding?
    pub fn lm_head_is_tied(&self) -> bool {
        self.tied_lm_head
    }

    /// Unique trainable parameters under their HF names (for the optimizer).
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        self.store.trainable()
    }

    fn dropout(&self, mode: Mode) -> Dropout {
        let d = Dropout::for_mode(self.config.dropout_rate, mode);
        if self.attention_dropout {
            d
        } else {
            d.without_attention_dropout()
        }
    }

    /// Embedded tokens → the residual stream's dtype (f32 for f16 weights under
    /// `Fp16Safety::Fp32Residual`; otherwise unchanged).
    pub(super) fn residual(&self, x: Tensor) -> Result<Tensor> {
        x.to_dtype(self.fp16_safety.residual_dtype(x.dtype()))
    }

    /// Encoder hidden states `[B, Ls, d_model]` for I32 `input_ids [B, Ls]` and an
    /// optional I32 `attention_mask [B, Ls]` (1 = token, 0 = padding).
    pub fn encode(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        drop: &Dropout,
    ) -> Result<Tensor> {
        input_ids.expect_rank("T5 encoder (input_ids)", 2)?;
        let x = self.residual(self.shared.embedding(input_ids)?)?;
        self.encoder
            .forward(&self.config, &x, attention_mask, None, drop)
    }

    /// LM logits `[B, Lt, vocab]` for `decoder_input_ids [B, Lt]` over encoder states.
    pub fn decode(
        &self,
        decoder_input_ids: &Tensor,
        encoder_hidden: &Tensor,
        encoder_mask: Option<&Tensor>,
        drop: &Dropout,
    ) -> Result<Tensor> {
        decoder_input_ids.expect_rank("T5 decoder (decoder_input_ids)", 2)?;
        let x = self.residual(self.shared.embedding(decoder_input_ids)?)?;
        let cross = CrossInput {
            hidden: encoder_hidden,
            mask: encoder_mask,
        };
        let h = self
            .decoder
            .forward(&self.config, &x, None, Some(&cross), drop)?;
        self.lm_logits(&h)
    }

    /// Decoder output → logits, with T5 v1.0's rescale (HF T5ForConditionalGeneration.forward:
    /// `sequence_output * self.model_dim**-0.5` when `scale_decoder_outputs`).
    pub(super) fn lm_logits(&self, h: &Tensor) -> Result<Tensor> {
        let h = if self.config.scales_decoder_outputs() {
            h.scale((self.config.d_model as f64).powf(-0.5))?
        } else {
            h.clone()
        };
        h.linear(&self.lm_head, None)
    }

    /// Logits `[B, Lt, vocab]` for a full teacher-forced pass.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        decoder_input_ids: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        let drop = self.dropout(mode);
        let enc = self.encode(input_ids, attention_mask, &drop)?;
        self.decode(decoder_input_ids, &enc, attention_mask, &drop)
    }

    /// `(loss, logits)` for `labels [B, Lt]` (-100 = ignored): the decoder reads the
    /// labels shifted right (HF `_shift_right`), the loss is the mean cross-entropy over
    /// kept tokens.
    pub fn loss(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        labels: &Tensor,
        mode: Mode,
    ) -> Result<(Tensor, Tensor)> {
        let dec_in = self.shift_right(labels)?;
        let logits = self.forward(input_ids, attention_mask, &dec_in, mode)?;
        let (b, lt, v) = (logits.dims()[0], logits.dims()[1], logits.dims()[2]);
        let loss = logits
            .reshape([b * lt, v])?
            .cross_entropy(&labels.reshape([b * lt])?, IGNORE_INDEX)?;
        Ok((loss, logits))
    }

    /// HF `_shift_right`: decoder_start at position 0, labels moved one right, -100 → pad.
    pub fn shift_right(&self, labels: &Tensor) -> Result<Tensor> {
        labels.expect_rank("T5 shift_right (labels)", 2)?;
        let (b, l) = (labels.dims()[0], labels.dims()[1]);
        let src = labels.to_vec_i32()?;
        let (start, pad) = (self.config.decoder_start_id(), self.config.pad_id());
        let mut out = Vec::with_capacity(b * l);
        for row in 0..b {
            for j in 0..l {
                let t = if j == 0 { start } else { src[row * l + j - 1] };
                out.push(if t == IGNORE_INDEX { pad } else { t });
            }
        }
        Tensor::from_i32(out, [b, l], labels.device())
    }

    /// The config.json this model writes: the one it was loaded with (unknown fields
    /// kept) updated with ours. `tie_word_embeddings` carries the scaling choice as
    /// transformers 4.x reads it; 5.x reads `scale_decoder_outputs` and unties the head
    /// because both tensors are in the file.
    pub fn config_json(&self) -> Result<serde_json::Value> {
        let mut out = match &self.raw_config {
            Some(serde_json::Value::Object(m)) => m.clone(),
            _ => serde_json::Map::new(),
        };
        let ours = serde_json::to_value(&self.config)
            .map_err(|e| Error::msg(format!("T5 config: cannot serialise: {e}")))?;
        if let serde_json::Value::Object(m) = ours {
            out.extend(m);
        }
        let scale = self.config.scales_decoder_outputs();
        let num_decoder_layers = self.config.decoder_layers();
        let set = |out: &mut serde_json::Map<_, _>, k: &str, v: serde_json::Value| {
            out.insert(k.to_string(), v);
        };
        set(&mut out, "tie_word_embeddings", scale.into());
        set(&mut out, "scale_decoder_outputs", scale.into());
        set(&mut out, "num_decoder_layers", num_decoder_layers.into());
        set(&mut out, "model_type", "t5".into());
        set(&mut out, "is_encoder_decoder", true.into());
        set(
            &mut out,
            "decoder_start_token_id",
            self.config.decoder_start_id().into(),
        );
        set(
            &mut out,
            "architectures",
            serde_json::json!(["T5ForConditionalGeneration"]),
        );
        Ok(serde_json::Value::Object(out))
    }

    /// Write an HF checkpoint directory: config.json, generation_config.json (the
    /// model's generation settings) and model.safetensors (f32, without the tied
    /// aliases) that `from_pretrained` loads.
    pub fn save(&self, dir: &Path) -> Result<()> {
        save_hf(dir, &self.config_json()?, &self.store)?;
        write_json(dir, "generation_config.json", &self.generation.to_json())
    }
}
