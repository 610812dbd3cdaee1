//! T5 — Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
//! Text-to-Text Transformer" (arXiv:1910.10683) — matching Hugging Face's
//! `T5ForConditionalGeneration` (transformers 5.24 `modeling_t5.py`), for both
//! T5 v1.0 (t5-small: ReLU feed-forward, LM head tied to `shared`, decoder output scaled by
//! d_model^-0.5) and v1.1 / flan-t5 (gated gelu_new, own `lm_head`, no scaling).
//!
//! Parameters keep their HF names in a `ParamStore`, so a checkpoint loads with no
//! renaming table and saves back in the layout transformers reads. The encoder and the
//! decoder embed with `shared.weight` directly (HF's `embed_tokens` aliases are never
//! materialised), so a tied model holds exactly one embedding tensor and the tape sums
//! its three gradients. Incremental decoding for generation is in `t5/incremental.rs`.
//! In fp16 the residual stream stays f32 (`t5/fp16.rs`): T5 overflows fp16 otherwise.

mod config;
mod fp16;
mod incremental;
mod layers;

use std::path::Path;

use crate::error::{Error, Result};
use crate::nn::{Init, ParamStore};
use crate::ops::softmax::IGNORE_INDEX;
use crate::shape::{DType, Device};
use crate::tensor::Tensor;

pub use crate::nn::Mode;
pub use config::{EosTokenId, FeedForward, T5Config};
pub use fp16::Fp16Safety;
pub use incremental::{DecoderCache, EncoderState};
pub use layers::{bucket_ids, relative_position_bucket, Dropout};
use layers::{BlockInputs, CrossInput, T5Attention, T5Block, T5FeedForward, T5Stack};

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
    shared: Tensor,
    encoder: T5Stack,
    decoder: T5Stack,
    lm_head: Tensor,
    tied_lm_head: bool,
    /// config.json as read, so a save keeps the fields we do not model.
    raw_config: Option<serde_json::Value>,
    /// Drop attention probabilities in training, as HF does (default; fused into the
    /// attention op). `false` skips that dropout.
    pub attention_dropout: bool,
    /// The fp16 overflow guard (f32 residual stream); ignored for f32 weights.
    pub fp16_safety: Fp16Safety,
}

impl T5ForConditionalGeneration {
    /// Load `dir/config.json` and `dir/model.safetensors` (an HF `save_pretrained`
    /// directory) in `dtype` on `device`.
    pub fn load(dir: &Path, device: Device, dtype: DType) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let origin = cfg_path.display().to_string();
        let config = T5Config::from_json_str(&text, &origin)?;
        let raw: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::msg(format!("{origin}: invalid JSON: {e}")))?;
        let weights = dir.join("model.safetensors");
        if !weights.exists() {
            return Err(Error::msg(format!(
                "{}: missing; expected the model's weights as a single safetensors file \
                 (HF save_pretrained layout)",
                weights.display()
            )));
        }
        let store = ParamStore::load(&weights, device, dtype, 0)?;
        for k in IGNORED_KEYS {
            store.remove(k);
        }
        let model = Self::build(config, store, Some(raw), false)?;
        let fresh = model.store.initialised();
        if !fresh.is_empty() {
            return Err(Error::msg(format!(
                "{}: missing tensors for this config ({origin}): {}",
                weights.display(),
                fresh.join(", ")
            )));
        }
        Ok(model)
    }

    /// A randomly initialised model (HF `_init_weights`), seeded.
    pub fn new_random(config: T5Config, device: Device, dtype: DType, seed: u64) -> Result<Self> {
        config.validate("the T5 config")?;
        let tie = config.tie_word_embeddings.unwrap_or(true);
        Self::build(config, ParamStore::new(device, dtype, seed), None, !tie)
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
        match mode {
            Mode::Eval => Dropout::off(),
            Mode::Train { seed } => {
                let d = Dropout::new(self.config.dropout_rate, Some(seed));
                if self.attention_dropout {
                    d
                } else {
                    d.without_attention_dropout()
                }
            }
        }
    }

    /// Embedded tokens → the residual stream's dtype (f32 for f16 weights under
    /// `Fp16Safety::Fp32Residual`; otherwise unchanged).
    fn residual(&self, x: Tensor) -> Result<Tensor> {
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
    fn lm_logits(&self, h: &Tensor) -> Result<Tensor> {
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

    /// Write an HF checkpoint directory: config.json, generation_config.json and
    /// model.safetensors (f32, without the tied aliases) that `from_pretrained` loads.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let write = |name: &str, v: &serde_json::Value| -> Result<()> {
            let p = dir.join(name);
            let s = serde_json::to_string_pretty(v)
                .map_err(|e| Error::msg(format!("{}: {e}", p.display())))?;
            std::fs::write(&p, s + "\n").map_err(|e| Error::io(&p, e))
        };
        write("config.json", &self.config_json()?)?;
        let gen = serde_json::json!({
            "decoder_start_token_id": self.config.decoder_start_id(),
            "eos_token_id": self.config.eos_token_id,
            "pad_token_id": self.config.pad_id(),
        });
        write("generation_config.json", &gen)?;
        self.store
            .save(&dir.join("model.safetensors"), &[], DType::F32)
    }
}

/// One block under activation checkpointing: its inputs (hidden states, position bias,
/// masks, encoder states) are kept, its activations are not. The forward and the
/// recompute in backward each run on a fork of `drop` taken at the block's start, so
/// both draw the same dropout masks; `drop` then continues after the block's sites.
fn checkpoint_block(
    blk: &T5Block,
    h: &Tensor,
    ctx: &BlockInputs<'_>,
    drop: &Dropout,
) -> Result<Tensor> {
    let mut inputs: Vec<&Tensor> = vec![h, ctx.bias];
    let self_mask = ctx.self_mask.map(|m| {
        inputs.push(m);
        inputs.len() - 1
    });
    let cross_hidden = ctx.cross.map(|c| {
        inputs.push(c.hidden);
        inputs.len() - 1
    });
    let cross_mask = ctx.cross.and_then(|c| c.mask).map(|m| {
        inputs.push(m);
        inputs.len() - 1
    });
    let is_decoder = ctx.is_decoder;
    let blk = blk.clone();
    let params = block_params(&blk);
    let start = drop.fork();
    let drawn = std::rc::Rc::new(std::cell::Cell::new(start.sites_drawn()));
    let drawn_in = drawn.clone();
    let out = crate::autograd::checkpoint("t5_block", &inputs, &params, move |t| {
        let d = start.fork();
        let cross = cross_hidden.map(|i| CrossInput {
            hidden: &t[i],
            mask: cross_mask.map(|j| &t[j]),
        });
        let ctx = BlockInputs {
            is_decoder,
            self_mask: self_mask.map(|i| &t[i]),
            bias: &t[1],
            cross: cross.as_ref(),
        };
        let y = blk.forward(&t[0], &ctx, &d)?;
        drawn_in.set(d.sites_drawn());
        Ok(y)
    })?;
    drop.resume_at(drawn.get());
    Ok(out)
}

/// Every parameter of a block (what its checkpointed recompute differentiates).
fn block_params(blk: &T5Block) -> Vec<Tensor> {
    let mut v = Vec::with_capacity(16);
    let attn = |a: &T5Attention, v: &mut Vec<Tensor>| {
        v.extend([a.q.clone(), a.k.clone(), a.v.clone(), a.o.clone()]);
    };
    attn(&blk.self_attn, &mut v);
    v.push(blk.self_norm.weight.clone());
    if let Some((a, n)) = &blk.cross {
        attn(a, &mut v);
        v.push(n.weight.clone());
    }
    match &blk.ff {
        T5FeedForward::Relu { wi, wo } => v.extend([wi.clone(), wo.clone()]),
        T5FeedForward::GatedGelu { wi_0, wi_1, wo } => {
            v.extend([wi_0.clone(), wi_1.clone(), wo.clone()])
        }
    }
    v.push(blk.ff_norm.weight.clone());
    v
}
