//! The encoder-decoder workloads of `bench`: T5, BART and Marian with a random
//! `[batch, seq] → [batch, tgt]` batch, built from a model directory or from a public
//! configuration with random weights (`models::presets`: t5-small ... flan-t5-large,
//! bart-base, bart-large-cnn, opus-mt-en-id).

use crate::error::{Error, Result};
use crate::models::bart::BartForConditionalGeneration;
use crate::models::seq2seq::Seq2SeqLm;
use crate::models::step::{ModelConfig, ModelSource};
use crate::models::t5::T5ForConditionalGeneration;
use crate::nn::Mode;
use crate::rng::Rng;
use crate::shape::{DType, Device};
use crate::tensor::Tensor;

use super::{random_ids, train_flops, BenchModel};

/// The sizes the FLOP count needs.
struct Dims {
    d: f64,
    ff: f64,
    /// heads × head size.
    inner: f64,
    /// Weight matrices per feed-forward (3 for a gated one).
    ff_mats: f64,
    enc_layers: f64,
    dec_layers: f64,
    vocab: f64,
    name: &'static str,
}

fn dims(cfg: &ModelConfig) -> Result<Dims> {
    Ok(match cfg {
        ModelConfig::T5(c) => Dims {
            d: c.d_model as f64,
            ff: c.d_ff as f64,
            inner: (c.num_heads * c.d_kv) as f64,
            ff_mats: if c.feed_forward_proj.contains("gated") {
                3.0
            } else {
                2.0
            },
            enc_layers: c.num_layers as f64,
            dec_layers: c.num_decoder_layers.unwrap_or(c.num_layers) as f64,
            vocab: c.vocab_size as f64,
            name: "T5",
        },
        ModelConfig::Bart(c) => Dims {
            d: c.d_model as f64,
            ff: c.encoder_ffn_dim as f64,
            inner: c.d_model as f64,
            ff_mats: 2.0,
            enc_layers: c.encoder_layers as f64,
            dec_layers: c.decoder_layers as f64,
            vocab: c.vocab_size as f64,
            name: c.family().class(),
        },
        other => {
            return Err(Error::msg(format!(
                "{}: not an encoder-decoder model",
                other.name()
            )))
        }
    })
}

/// An encoder-decoder LM with a fixed random batch.
pub struct Seq2SeqBench {
    model: Box<dyn Seq2SeqLm>,
    dims: Dims,
    ids: Tensor,
    mask: Tensor,
    labels: Tensor,
    batch: usize,
    seq: usize,
    tgt: usize,
}

impl Seq2SeqBench {
    /// `spec`: a model directory's checkpoint, or a configuration with random weights.
    pub fn new(
        spec: &ModelSource,
        (batch, seq, tgt): (usize, usize, usize),
        device: Device,
        dtype: DType,
    ) -> Result<Seq2SeqBench> {
        let model: Box<dyn Seq2SeqLm> = match (&spec.config, spec.checkpoint.as_deref()) {
            (_, Some(dir)) => crate::models::auto::load_seq2seq_lm(dir, device, dtype)?,
            (ModelConfig::T5(c), None) => Box::new(T5ForConditionalGeneration::new_random(
                c.clone(),
                device,
                dtype,
                0,
            )?),
            (ModelConfig::Bart(c), None) => Box::new(BartForConditionalGeneration::new_random(
                c.clone(),
                device,
                dtype,
                0,
            )?),
            (other, None) => {
                return Err(Error::msg(format!(
                    "{}: not an encoder-decoder model",
                    other.name()
                )))
            }
        };
        let dims = dims(&spec.config)?;
        let vocab = model.vocab_size();
        let mut rng = Rng::new(1);
        let lo = 1000.min(vocab / 2);
        let ids = random_ids(&mut rng, batch * seq, lo, vocab);
        let ids = Tensor::from_i32(ids, [batch, seq], device)?;
        let mask = Tensor::full([batch, seq], DType::I32, device, 1.0)?;
        let labels = random_ids(&mut rng, batch * tgt, 2, vocab);
        let labels = Tensor::from_i32(labels, [batch, tgt], device)?;
        Ok(Seq2SeqBench {
            model,
            dims,
            ids,
            mask,
            labels,
            batch,
            seq,
            tgt,
        })
    }
}

impl BenchModel for Seq2SeqBench {
    fn describe(&self) -> String {
        let c = &self.dims;
        format!(
            "{} d_model {} ff {} layers {}+{} vocab {} ({:.1} M params), batch {} x {} -> {}",
            c.name,
            c.d,
            c.ff,
            c.enc_layers,
            c.dec_layers,
            c.vocab,
            self.model.store().num_params() as f64 / 1e6,
            self.batch,
            self.seq,
            self.tgt
        )
    }
    fn params(&self) -> Vec<(String, Tensor)> {
        self.model.trainable()
    }
    fn train_loss(&self, seed: u64) -> Result<Tensor> {
        let mode = Mode::Train { seed };
        let (ids, mask) = (&self.ids, Some(&self.mask));
        Ok(self.model.loss(ids, mask, &self.labels, mode)?.0)
    }
    fn infer(&self) -> Result<()> {
        let _g = crate::autograd::no_grad();
        let (ids, mask) = (&self.ids, Some(&self.mask));
        self.model.loss(ids, mask, &self.labels, Mode::Eval)?;
        Ok(())
    }
    fn set_checkpointing(&mut self, on: bool) {
        self.model.set_checkpointing(on);
    }
    fn tokens_per_step(&self) -> usize {
        self.batch * (self.seq + self.tgt)
    }
    fn flops_per_step(&self, train: bool) -> f64 {
        let c = &self.dims;
        let enc_layer = 4.0 * c.d * c.inner + c.ff_mats * c.d * c.ff;
        let dec_layer = 8.0 * c.d * c.inner + c.ff_mats * c.d * c.ff;
        let (b, s, t) = (self.batch as f64, self.seq as f64, self.tgt as f64);
        let (le, ld) = (c.enc_layers, c.dec_layers);
        let dense = enc_layer * le * b * s + dec_layer * ld * b * t + c.d * c.vocab * b * t;
        let attn = 4.0 * c.inner * b * (le * s * s + ld * (t * t + t * s));
        train_flops(dense, attn, train)
    }
}
