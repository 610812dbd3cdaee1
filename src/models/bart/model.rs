//! `BartForConditionalGeneration` / `MarianMTModel`: the shared embedding, the encoder and
//! decoder stacks, the tied LM head and `final_logits_bias`, under HF's names; load,
//! teacher-forced forward and loss, save.

use std::path::Path;

use crate::error::{Error, Result};
use crate::models::generation_config::GenerateConfig;
use crate::models::hf::{
    check_complete, config_text, merged_config, save_hf, weights_path, write_json,
};
use crate::models::t5::EosTokenId;
use crate::nn::{Init, LayerNorm, Mode, ParamStore, VarBuilder};
use crate::shape::{DType, Device};
use crate::tensor::Tensor;

use super::checkpoint::{
    check_all_used, check_config_sizes, normalize, FINAL_LOGITS_BIAS, LM_HEAD,
};
use super::config::{BartConfig, Family};
use super::layers::{
    sinusoidal_positions, BartLayer, BartStack, Context, Cross, LayerSpec, Positions,
    LAYER_NORM_EPS,
};

pub struct BartForConditionalGeneration {
    pub config: BartConfig,
    pub(super) store: ParamStore,
    /// `model.shared.weight` `[vocab, d_model]`: both stacks' token embedding and, tied,
    /// the LM head.
    pub(super) shared: Tensor,
    pub(super) encoder: BartStack,
    pub(super) decoder: BartStack,
    lm_head: Tensor,
    tied_lm_head: bool,
    /// `final_logits_bias` `[1, vocab]`: a buffer in HF, loaded and saved, never trained.
    final_logits_bias: Tensor,
    /// config.json as read, so a save keeps the fields we do not model.
    raw_config: Option<serde_json::Value>,
    /// Its generation settings (generation_config.json, else config.json), as
    /// transformers' `model.generation_config`; `save` writes them back.
    pub(super) generation: GenerateConfig,
}

impl BartForConditionalGeneration {
    /// Load `dir/config.json` and `dir/model.safetensors` (an HF `save_pretrained`
    /// directory of either family) in `dtype` on `device`.
    pub fn load(dir: &Path, device: Device, dtype: DType) -> Result<Self> {
        let (cfg_path, text) = config_text(dir)?;
        let origin = cfg_path.display().to_string();
        let raw: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::msg(format!("{origin}: invalid JSON: {e}")))?;
        match raw.get("model_type").and_then(|m| m.as_str()) {
            Some("bart" | "marian") => {}
            other => {
                return Err(Error::msg(format!(
                    "{origin}: model_type {other:?}: BartForConditionalGeneration / \
                     MarianMTModel need a BART or Marian checkpoint (model_type \"bart\" or \
                     \"marian\")"
                )))
            }
        }
        let config = BartConfig::from_value(&raw, &origin)?;
        let weights = weights_path(dir)?;
        let store = ParamStore::load(&weights, device, dtype, 0)?;
        normalize(&store, &config)?;
        check_config_sizes(&config, &raw, &cfg_path, &store)?;
        let generation = GenerateConfig::from_model_dir(Self::special_tokens(&config), dir, &raw)?;
        let mut model = Self::build(config, store, Some(raw), false)?;
        model.generation = generation;
        check_all_used(&model.store, &model.params())?;
        Ok(model)
    }

    /// A randomly initialised model (HF `_init_weights`: normal(0, init_std), zero
    /// biases, unit LayerNorms, the padding row of the embedding zeroed), seeded.
    pub fn new_random(config: BartConfig, device: Device, dtype: DType, seed: u64) -> Result<Self> {
        config.validate("the BART / Marian config")?;
        let untied = !config.tie_word_embeddings;
        let model = Self::build(config, ParamStore::new(device, dtype, seed), None, untied)?;
        if !matches!(model.shared.device(), Device::Meta(_)) {
            let (v, d) = (model.config.vocab_size, model.config.d_model);
            let pad = model.config.pad_id() as usize;
            let mut w = model.shared.to_vec_f32()?;
            w[pad * d..(pad + 1) * d].iter_mut().for_each(|x| *x = 0.0);
            let t = Tensor::from_f32(w, [v, d], model.shared.device())?.to_dtype(dtype)?;
            model.shared.storage_mut().copy_from_(&t.storage())?;
        }
        Ok(model)
    }

    /// Wire the modules to the parameters in `store` (created when absent).
    fn build(
        config: BartConfig,
        store: ParamStore,
        raw_config: Option<serde_json::Value>,
        untied_init: bool,
    ) -> Result<Self> {
        let vb = store.vb();
        let m = vb.pp("model");
        let (v, d, std) = (config.vocab_size, config.d_model, config.init_std);
        let shared = m
            .pp("shared")
            .get_or_init("weight", &[v, d], Init::Normal(std))?;
        let fixed = match config.family() {
            Family::Marian => Some(sinusoidal_positions(
                config.max_position_embeddings,
                d,
                store.device(),
                store.dtype(),
            )?),
            Family::Bart => None,
        };
        let activation = config.activation(Path::new("config.json"))?;
        let spec = |heads: usize| LayerSpec {
            heads,
            activation,
            dropout: config.dropout as f32,
            attention_dropout: config.attention_dropout as f32,
            activation_dropout: config.activation_dropout as f32,
        };
        let stack = |name: &str, decoder: bool| -> Result<BartStack> {
            let svb = m.pp(name);
            let (n, ffn, heads, first) = if decoder {
                let (n, f, h) = (
                    config.decoder_layers,
                    config.decoder_ffn_dim,
                    config.decoder_attention_heads,
                );
                (n, f, h, 2 + config.encoder_layers)
            } else {
                (
                    config.encoder_layers,
                    config.encoder_ffn_dim,
                    config.encoder_attention_heads,
                    2,
                )
            };
            let layers = (0..n)
                .map(|i| {
                    let lvb = svb.pp(format!("layers.{i}"));
                    BartLayer::new(&lvb, d, ffn, decoder, spec(heads), (first + i) as u64, std)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(BartStack {
                layers,
                positions: stack_positions(&svb, &config, fixed.as_ref())?,
                emb_norm: match config.family() {
                    Family::Bart => Some(LayerNorm::new(
                        &svb.pp("layernorm_embedding"),
                        d,
                        LAYER_NORM_EPS,
                    )?),
                    Family::Marian => None,
                },
                emb_site: u64::from(decoder),
                checkpointing: false,
                name: if decoder { "decoder" } else { "encoder" },
            })
        };
        let encoder = stack("encoder", false)?;
        let decoder = stack("decoder", true)?;
        // A loaded checkpoint must have held every tensor built so far; a missing
        // final_logits_bias is zeros, as HF's `_keys_to_ignore_on_load_missing` has it.
        if let Some(weights) = store.source() {
            check_complete(&store, weights, None)?;
        }
        vb.get_or_init(FINAL_LOGITS_BIAS, &[1, v], Init::Zeros)?;
        let final_logits_bias = store.freeze(FINAL_LOGITS_BIAS)?;
        let tied_lm_head = !(store.contains(LM_HEAD) || untied_init);
        let lm_head = if tied_lm_head {
            shared.clone()
        } else {
            vb.get_or_init(LM_HEAD, &[v, d], Init::Normal(std))?
        };
        // A fresh model's generation settings, as `GenerationConfig.from_model_config`
        // takes them from its config (a load replaces them with the directory's).
        let generation = GenerateConfig {
            forced_bos_token_id: config.forced_bos_token_id,
            forced_eos_token_id: config.forced_eos_token_id.as_ref().map(EosTokenId::ids),
            ..Self::special_tokens(&config)
        };
        Ok(BartForConditionalGeneration {
            generation,
            config,
            store,
            shared,
            encoder,
            decoder,
            lm_head,
            tied_lm_head,
            final_logits_bias,
            raw_config,
        })
    }

    /// Every tensor the model computes with (trained or not), for the check that a
    /// checkpoint holds nothing else.
    fn params(&self) -> Vec<Tensor> {
        let mut v = vec![
            self.shared.clone(),
            self.lm_head.clone(),
            self.final_logits_bias.clone(),
        ];
        for stack in [&self.encoder, &self.decoder] {
            if let Positions::Learned(t) = &stack.positions {
                v.push(t.clone());
            }
            if let Some(n) = &stack.emb_norm {
                v.extend([n.weight.clone(), n.bias.clone()]);
            }
            v.extend(stack.layers.iter().flat_map(|l| l.params()));
        }
        v
    }

    pub fn family(&self) -> Family {
        self.config.family()
    }

    /// Is activation checkpointing on (`Seq2SeqLm::set_checkpointing`)?
    pub fn checkpointing(&self) -> bool {
        self.encoder.checkpointing
    }

    /// Is the LM head the shared embedding?
    pub fn lm_head_is_tied(&self) -> bool {
        self.tied_lm_head
    }

    /// `shared(ids) · embed_scale` (HF `BartScaledWordEmbedding`; Marian scales after
    /// the lookup too). The padding row gets no gradient from the lookup
    /// (`nn.Embedding(padding_idx=pad)`).
    pub(super) fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        let x = self
            .shared
            .embedding_padded(ids, self.config.pad_id() as usize)?;
        let s = self.config.embed_scale();
        if s == 1.0 {
            Ok(x)
        } else {
            x.scale(s)
        }
    }

    /// A stack's input for I32 `ids [B, L]` from position 0: token embeddings, positions
    /// (and BART's embedding LayerNorm), dropout. `what` names the ids in errors.
    fn embedded(
        &self,
        stack: &BartStack,
        ids: &Tensor,
        what: &'static str,
        mode: Mode,
    ) -> Result<Tensor> {
        ids.expect_rank(what, 2)?;
        let x = self.embed_tokens(ids)?;
        stack.embed(&x, 0, mode, self.config.dropout as f32)
    }

    /// Encoder hidden states `[B, Ls, d_model]` for I32 `input_ids [B, Ls]` and an
    /// optional I32 `attention_mask [B, Ls]` (1 = token, 0 = padding).
    pub fn encode(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mode: Mode,
    ) -> Result<Tensor> {
        let h = self.embedded(&self.encoder, input_ids, "BART encoder (input_ids)", mode)?;
        let ctx = Context {
            self_mask: attention_mask,
            cross: None,
        };
        self.encoder.forward(&h, ctx, mode)
    }

    /// LM logits `[B, Lt, vocab]` for `decoder_input_ids [B, Lt]` over encoder states.
    pub fn decode(
        &self,
        decoder_input_ids: &Tensor,
        encoder_hidden: &Tensor,
        encoder_mask: Option<&Tensor>,
        mode: Mode,
    ) -> Result<Tensor> {
        let what = "BART decoder (decoder_input_ids)";
        let h = self.embedded(&self.decoder, decoder_input_ids, what, mode)?;
        let cross = Cross {
            hidden: encoder_hidden,
            mask: encoder_mask,
        };
        let ctx = Context {
            self_mask: None,
            cross: Some(cross),
        };
        let h = self.decoder.forward(&h, ctx, mode)?;
        self.lm_logits(&h)
    }

    /// `lm_head(h) + final_logits_bias` (HF BartForConditionalGeneration.forward).
    pub(super) fn lm_logits(&self, h: &Tensor) -> Result<Tensor> {
        let bias = self.final_logits_bias.reshape([self.config.vocab_size])?;
        h.linear(&self.lm_head, Some(&bias))
    }

    /// Logits `[B, Lt, vocab]` for a full teacher-forced pass.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        decoder_input_ids: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        let enc = self.encode(input_ids, attention_mask, mode)?;
        self.decode(decoder_input_ids, &enc, attention_mask, mode)
    }

    /// The config.json this model writes: the one it was loaded with (unknown fields
    /// kept) updated with ours.
    pub fn config_json(&self) -> Result<serde_json::Value> {
        let mut out = merged_config(self.raw_config.as_ref(), &self.config, "BART config")?;
        let family = self.family();
        let mut set = |k: &str, v: serde_json::Value| {
            out.insert(k.to_string(), v);
        };
        set("model_type", family.model_type().into());
        set("architectures", serde_json::json!([family.class()]));
        set("is_encoder_decoder", true.into());
        set("tie_word_embeddings", self.tied_lm_head.into());
        if family == Family::Marian {
            set("decoder_vocab_size", self.config.vocab_size.into());
            set("share_encoder_decoder_embeddings", true.into());
        }
        Ok(serde_json::Value::Object(out))
    }

    /// transformers' generation defaults with this config's special ids.
    fn special_tokens(config: &BartConfig) -> GenerateConfig {
        GenerateConfig::with_special_tokens(
            config.decoder_start_id(),
            config.eos_ids(),
            Some(config.pad_id()),
        )
    }

    /// Write an HF checkpoint directory that `from_pretrained` loads: config.json,
    /// generation_config.json and model.safetensors (f32) as `save_pretrained` writes it
    /// (`model.shared.weight` once, no tied aliases, `final_logits_bias`, no Marian
    /// position tables).
    pub fn save(&self, dir: &Path) -> Result<()> {
        save_hf(dir, &self.config_json()?, &self.store)?;
        write_json(dir, "generation_config.json", &self.generation.to_json())
    }
}

/// A stack's positions: BART's learned table `{stack}.embed_positions.weight`
/// `[max_positions + 2, d]`, or Marian's fixed table (shared by both stacks).
fn stack_positions(
    svb: &VarBuilder,
    cfg: &BartConfig,
    fixed: Option<&Tensor>,
) -> Result<Positions> {
    Ok(match fixed {
        Some(t) => Positions::Fixed(t.clone()),
        None => Positions::Learned(svb.pp("embed_positions").get_or_init(
            "weight",
            &[cfg.max_position_embeddings + 2, cfg.d_model],
            Init::Normal(cfg.init_std),
        )?),
    })
}

#[cfg(test)]
mod tests {
    use super::super::checkpoint::SHARED;
    use super::*;
    use crate::models::seq2seq::Seq2SeqLm;

    #[test]
    fn shared_is_used_for_the_head_and_pad_row_is_zero() {
        let cfg = BartConfig::from_json_str(
            r#"{"model_type": "bart", "vocab_size": 20, "d_model": 8, "encoder_layers": 1,
                "decoder_layers": 1, "encoder_attention_heads": 2, "decoder_attention_heads": 2,
                "encoder_ffn_dim": 12, "decoder_ffn_dim": 12, "max_position_embeddings": 16}"#,
            "t",
        )
        .unwrap();
        let m = BartForConditionalGeneration::new_random(cfg, Device::Cpu, DType::F32, 1).unwrap();
        assert!(m.lm_head_is_tied());
        let w = m.shared.to_vec_f32().unwrap();
        assert!(w[8..16].iter().all(|&x| x == 0.0), "pad row 1");
        assert!(w[..8].iter().any(|&x| x != 0.0));
        let names: Vec<String> = m.trainable().into_iter().map(|(n, _)| n).collect();
        assert!(!names.iter().any(|n| n == FINAL_LOGITS_BIAS || n == LM_HEAD));
        assert!(names.iter().any(|n| n == SHARED));
    }
}
