//! The pieces BERT (Devlin et al. 2019, arXiv:1810.04805) and DistilBERT (Sanh et al.
//! 2019, arXiv:1910.01108) share: one post-LayerNorm transformer layer, the QA head and
//! loss of `BertForQuestionAnswering` / `DistilBertForQuestionAnswering`, and the
//! `QaModel` trait that lets training code drive either model the same way.
//!
//! The two HF implementations compute the same layer under different parameter names
//! (`attention.q_lin` vs `attention.self.query`, ...), so the layer is built from a
//! [`LayerNames`] table and loads either checkpoint with no renaming. Attention is the
//! fused `attention` op: key padding mask, scale 1/√d, and HF's dropout on the attention
//! probabilities fused into the kernel (its mask re-derived from the seed in backward).

use std::path::Path;

use super::separate_qkv;
use crate::error::{Error, Result};
use crate::nn::{packed_qkv, LayerNorm, Linear, ParamStore, VarBuilder};
use crate::ops::attention::AttnOptions;
use crate::ops::UnaryOp;
use crate::shape::{DType, Device};
use crate::tensor::Tensor;

/// HF's LayerNorm eps for DistilBERT (hard-coded there) and BERT's default.
pub const LAYER_NORM_EPS: f64 = 1e-12;

pub use crate::nn::Mode;

/// Activation of the feed-forward block (HF `ACT2FN` names we support).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact erf GELU: HF's "gelu".
    Gelu,
    /// Tanh approximation: HF's "gelu_new".
    GeluNew,
    Relu,
}

impl Activation {
    pub fn parse(name: &str, file: &Path, field: &str) -> Result<Activation> {
        match name {
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" => Ok(Activation::GeluNew),
            "relu" => Ok(Activation::Relu),
            other => Err(Error::msg(format!(
                "{}: {field} = {other:?} is not supported (expected \"gelu\", \"gelu_new\" or \"relu\")",
                file.display()
            ))),
        }
    }
    fn op(self) -> UnaryOp {
        match self {
            Activation::Gelu => UnaryOp::Gelu,
            Activation::GeluNew => UnaryOp::GeluNew,
            Activation::Relu => UnaryOp::Relu,
        }
    }
}

/// Where one layer's parameters live, relative to the layer's prefix.
pub struct LayerNames {
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub attn_out: &'static str,
    pub attn_norm: &'static str,
    pub ffn_in: &'static str,
    pub ffn_out: &'static str,
    pub out_norm: &'static str,
}

/// Sizes and rates of one layer.
#[derive(Clone, Copy, Debug)]
pub struct LayerDims {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub eps: f64,
    pub init_std: f64,
    /// Dropout after the FFN (both models) ...
    pub hidden_dropout: f32,
    /// ... and after the attention output projection (BERT only; 0 for DistilBERT,
    /// whose `TransformerBlock` has none there).
    pub attn_out_dropout: f32,
    /// On the attention probabilities (fused into the attention op).
    pub attention_dropout: f32,
    pub activation: Activation,
}

/// One post-LN transformer layer: `LN(x + Drop(Attn(x)))`, then `LN(h + Drop(FFN(h)))`.
/// Cloning shares the parameters (a checkpointed layer's recompute owns a clone).
#[derive(Clone)]
pub struct EncoderLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    out_norm: LayerNorm,
    dims: LayerDims,
}

impl EncoderLayer {
    pub fn new(vb: &VarBuilder, names: &LayerNames, dims: LayerDims) -> Result<EncoderLayer> {
        let (h, i, std) = (dims.hidden, dims.intermediate, dims.init_std);
        Ok(EncoderLayer {
            query: Linear::new(&vb.pp(names.query), h, h, true, std)?,
            key: Linear::new(&vb.pp(names.key), h, h, true, std)?,
            value: Linear::new(&vb.pp(names.value), h, h, true, std)?,
            attn_out: Linear::new(&vb.pp(names.attn_out), h, h, true, std)?,
            attn_norm: LayerNorm::new(&vb.pp(names.attn_norm), h, dims.eps)?,
            ffn_in: Linear::new(&vb.pp(names.ffn_in), h, i, true, std)?,
            ffn_out: Linear::new(&vb.pp(names.ffn_out), i, h, true, std)?,
            out_norm: LayerNorm::new(&vb.pp(names.out_norm), h, dims.eps)?,
            dims,
        })
    }

    /// Every parameter of the layer (what a checkpointed recompute differentiates).
    pub fn params(&self) -> Vec<Tensor> {
        let mut v = Vec::with_capacity(16);
        for l in [
            &self.query,
            &self.key,
            &self.value,
            &self.attn_out,
            &self.ffn_in,
            &self.ffn_out,
        ] {
            v.push(l.weight.clone());
            v.extend(l.bias.clone());
        }
        for n in [&self.attn_norm, &self.out_norm] {
            v.push(n.weight.clone());
            v.push(n.bias.clone());
        }
        v
    }

    /// The three projections' biases, all or none.
    fn qkv_biases(&self) -> Result<Option<[&Tensor; 3]>> {
        match (&self.query.bias, &self.key.bias, &self.value.bias) {
            (Some(bq), Some(bk), Some(bv)) => Ok(Some([bq, bk, bv])),
            (None, None, None) => Ok(None),
            _ => Err(Error::msg(
                "encoder layer: query, key and value must all have a bias or none",
            )),
        }
    }

    /// [`EncoderLayer::forward`] under activation checkpointing: only `x` is kept for
    /// backward, which recomputes the layer (same dropout masks: they hash the seed).
    pub fn forward_checkpointed(
        &self,
        x: &Tensor,
        mask: &Tensor,
        mode: Mode,
        site: u64,
    ) -> Result<Tensor> {
        let layer = self.clone();
        let params = layer.params();
        crate::autograd::checkpoint("encoder_layer", &[x, mask], &params, move |t| {
            layer.forward(&t[0], &t[1], mode, site)
        })
    }

    /// `x [B, L, hidden]`, `mask` I32 `[B, L]` (nonzero = real token). `site` numbers
    /// this layer's dropout sites so that every mask of a step is distinct.
    pub fn forward(&self, x: &Tensor, mask: &Tensor, mode: Mode, site: u64) -> Result<Tensor> {
        let d = &self.dims;
        let (b, l) = (x.dims()[0], x.dims()[1]);
        let head_dim = d.hidden / d.heads;
        let opt = AttnOptions {
            scale: 1.0 / (head_dim as f32).sqrt(),
            causal: false,
            key_mask: Some(mask),
            bias: None,
            dropout: mode.p(d.attention_dropout),
            seed: mode.seed_for(site * 8),
        };
        let ctx = if separate_qkv() {
            let split = |t: Tensor| t.reshape([b, l, d.heads, head_dim]);
            let q = split(self.query.forward(x)?)?;
            let k = split(self.key.forward(x)?)?;
            let v = split(self.value.forward(x)?)?;
            q.attention(&k, &v, opt)?
        } else {
            let w = [&self.query.weight, &self.key.weight, &self.value.weight];
            let qkv = packed_qkv(x, w, self.qkv_biases()?, d.heads, head_dim)?;
            qkv.attention_qkv(opt)?
        };
        let ctx = ctx.reshape([b, l, d.hidden])?;
        // LayerNorm(dropout(o(ctx)) + x) as one op (one kernel each way on CUDA).
        let a = self.attn_out.forward(&ctx)?;
        let h = self.attn_norm.forward_residual(
            &a,
            x,
            mode.p(d.attn_out_dropout),
            mode.seed_for(site * 8 + 1),
        )?;
        // act(lin1) · lin2 with only lin1's output kept for backward (Tensor::act_linear).
        let f = self.ffn_in.forward(&h)?.act_linear(
            d.activation.op(),
            &self.ffn_out.weight,
            self.ffn_out.bias.as_ref(),
        )?;
        self.out_norm.forward_residual(
            &f,
            &h,
            mode.p(d.hidden_dropout),
            mode.seed_for(site * 8 + 2),
        )
    }
}

/// `qa_outputs`: hidden → (start, end) logits, each `[B, L]`.
pub struct QaHead {
    pub linear: Linear,
}

impl QaHead {
    /// Load `qa_outputs`, or create it as HF does for a base checkpoint (normal(0, std)
    /// weight, zero bias), saying so.
    pub fn new(vb: &VarBuilder, hidden: usize, std: f64) -> Result<QaHead> {
        let vb = vb.pp("qa_outputs");
        // Only a loaded checkpoint can lack the head; a model built from scratch has
        // nothing to report.
        if let (Some(file), false) = (vb.store().source(), vb.contains("weight")) {
            eprintln!(
                "fusebox: {} has no QA head: qa_outputs (weight [2, {hidden}], bias [2]) \
                 initialised fresh (normal(0, {std}), zero bias), as transformers does",
                file.display()
            );
        }
        Ok(QaHead {
            linear: Linear::new(&vb, hidden, 2, true, std)?,
        })
    }

    pub fn forward(&self, hidden: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, l) = (hidden.dims()[0], hidden.dims()[1]);
        let logits = self.linear.forward(hidden)?; // [B, L, 2]
        let start = logits.narrow(2, 0, 1)?.reshape([b, l])?;
        let end = logits.narrow(2, 1, 1)?.reshape([b, l])?;
        Ok((start, end))
    }
}

/// The QA loss as HF computes it (BertForQuestionAnswering.forward,
/// DistilBertForQuestionAnswering.forward): positions clamped to [0, S] with S = the
/// sequence length, S ignored, loss = (CE(start) + CE(end)) / 2.
///
/// The clamp runs on the logits' device (`clamp_i32`: a kernel on CUDA), so the loss
/// never reads positions back from the device mid-step, and hand-built positions are
/// clamped the same way on every backend.
pub fn qa_loss(
    start_logits: &Tensor,
    end_logits: &Tensor,
    start_positions: &Tensor,
    end_positions: &Tensor,
) -> Result<Tensor> {
    start_logits.expect_rank("qa_loss (start logits)", 2)?;
    let s = start_logits.dims()[1];
    let dev = start_logits.device();
    let clamp = |p: &Tensor| p.to_device(dev)?.clamp_i32(0, s as i32);
    let ls = start_logits.cross_entropy(&clamp(start_positions)?, s as i32)?;
    let le = end_logits.cross_entropy(&clamp(end_positions)?, s as i32)?;
    ls.add(&le)?.scale(0.5)
}

/// One batch of QA windows on the model's device. All I32 `[B, L]`, positions I32 `[B]`.
#[derive(Clone, Debug)]
pub struct QaBatch {
    pub input_ids: Tensor,
    /// 1 = real token, 0 = padding.
    pub attention_mask: Tensor,
    /// Segment ids (BERT only; DistilBERT ignores them).
    pub token_type_ids: Option<Tensor>,
    pub start_positions: Option<Tensor>,
    pub end_positions: Option<Tensor>,
}

impl QaBatch {
    /// Build from host rows (each `len` long), as produced by `tasks::qa` features.
    pub fn from_rows(
        input_ids: &[Vec<u32>],
        attention_mask: &[Vec<u32>],
        token_type_ids: Option<&[Vec<u32>]>,
        positions: Option<(&[usize], &[usize])>,
        device: Device,
    ) -> Result<QaBatch> {
        let b = input_ids.len();
        let l = input_ids.first().map(|r| r.len()).unwrap_or(0);
        let flat = |rows: &[Vec<u32>], what: &str| -> Result<Tensor> {
            if rows.len() != b || rows.iter().any(|r| r.len() != l) {
                return Err(Error::msg(format!(
                    "QaBatch: {what} must be {b} rows of {l} tokens (pad the windows first)"
                )));
            }
            let v: Vec<i32> = rows.iter().flatten().map(|&x| x as i32).collect();
            Tensor::from_i32(v, [b, l], device)
        };
        // HF's clamp to [0, L] (L = this batch's length, the ignored class); positions
        // past i32 would not fit the tensor. `qa_loss` clamps again on the device (a
        // no-op for these), which covers batches built by hand.
        let pos = |p: &[usize]| -> Result<Tensor> {
            if p.len() != b {
                return Err(Error::msg(format!(
                    "QaBatch: {} positions for {b} windows",
                    p.len()
                )));
            }
            let v = p.iter().map(|&x| x.min(l).min(i32::MAX as usize) as i32);
            Tensor::from_i32(v.collect(), [b], device)
        };
        Ok(QaBatch {
            input_ids: flat(input_ids, "input_ids")?,
            attention_mask: flat(attention_mask, "attention_mask")?,
            token_type_ids: token_type_ids
                .map(|t| flat(t, "token_type_ids"))
                .transpose()?,
            start_positions: positions.map(|(s, _)| pos(s)).transpose()?,
            end_positions: positions.map(|(_, e)| pos(e)).transpose()?,
        })
    }
}

/// What training and evaluation need from an extractive QA model.
pub trait QaModel {
    /// Start and end logits, each `[B, L]`.
    fn forward(&self, batch: &QaBatch, mode: Mode) -> Result<(Tensor, Tensor)>;

    /// HF's QA loss of these logits against the batch's positions.
    fn loss(&self, start: &Tensor, end: &Tensor, batch: &QaBatch) -> Result<Tensor> {
        match (&batch.start_positions, &batch.end_positions) {
            (Some(s), Some(e)) => qa_loss(start, end, s, e),
            _ => Err(Error::msg(
                "QA loss: the batch has no start/end positions (validation features?)",
            )),
        }
    }

    /// The parameters under their HF names (what the optimizer and `save` see).
    fn params(&self) -> &ParamStore;

    /// Recompute each layer's forward in backward instead of keeping its activations
    /// (activation checkpointing; `memory::budget` turns it on when a budget needs it).
    fn set_checkpointing(&mut self, on: bool);
    fn checkpointing(&self) -> bool;

    /// Write `config.json` + `model.safetensors` (f32) that transformers loads back.
    fn save(&self, dir: &Path) -> Result<()>;

    /// The HF class this model matches, e.g. "DistilBertForQuestionAnswering".
    fn hf_class(&self) -> &'static str;
    fn vocab_size(&self) -> usize;
    fn max_positions(&self) -> usize;
    fn pad_token_id(&self) -> u32;
    /// Whether the model reads `token_type_ids` (BERT does, DistilBERT does not).
    fn uses_token_type_ids(&self) -> bool;
}

/// Load a BERT or DistilBERT QA model from an HF model directory, by the `model_type` of
/// its config.json.
pub fn load_qa_model(
    dir: &Path,
    device: Device,
    dtype: DType,
    seed: u64,
) -> Result<Box<dyn QaModel>> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::msg(format!("{}: {e}", cfg_path.display())))?;
    match v.get("model_type").and_then(|m| m.as_str()) {
        Some("distilbert") => Ok(Box::new(crate::models::distilbert::DistilBertForQa::load(
            dir, device, dtype, seed,
        )?)),
        Some("bert") => Ok(Box::new(crate::models::bert::BertForQa::load(
            dir, device, dtype, seed,
        )?)),
        other => Err(Error::msg(format!(
            "{}: model_type {other:?} is not a QA encoder fusebox supports (expected \"distilbert\" or \"bert\")",
            cfg_path.display()
        ))),
    }
}

/// Bring a checkpoint's names to the QA model's layout: bare base-model names
/// (`embeddings.*`, `encoder.*`/`transformer.*`) gain `prefix.`, `LayerNorm.gamma/beta`
/// become `weight/bias`; tensors the QA model
/// does not use (pooler, pre-training heads, integer buffers such as `position_ids`) are
/// dropped with one log line, as transformers reports unused weights.
pub(crate) fn adopt_checkpoint(store: &ParamStore, prefix: &str, bare_roots: &[&str]) {
    let mut dropped = Vec::new();
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
        // Old TF-converted BERT checkpoints name LayerNorm parameters gamma/beta;
        // transformers renames them on load, and so do we.
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
        } else if target != name {
            // `alias` cannot fail here: `name` was just listed.
            if store.alias(&target, &name).is_ok() {
                store.remove(&name);
            }
        }
    }
    if !dropped.is_empty() {
        eprintln!(
            "fusebox: {} checkpoint tensors unused by the QA model were dropped: {}",
            dropped.len(),
            dropped.join(", ")
        );
    }
}

/// Read and parse a config.json into `T`, naming the file on error.
pub(crate) fn read_config<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<T> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::msg(format!("{}: {e}", path.display())))
}

/// The weights file of an HF model directory (single-file safetensors only).
pub(crate) fn weights_path(dir: &Path) -> Result<std::path::PathBuf> {
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

/// Fail when loading a checkpoint created any parameter other than the QA head: a
/// missing encoder weight means the names did not match, and a half-random model would
/// be silent garbage.
pub(crate) fn check_complete(store: &ParamStore, path: &Path) -> Result<()> {
    let missing: Vec<String> = store
        .initialised()
        .into_iter()
        .filter(|n| !n.starts_with("qa_outputs."))
        .collect();
    if let Some(first) = missing.first() {
        return Err(Error::msg(format!(
            "{}: missing tensor {first:?} ({} missing in all: {})",
            path.display(),
            missing.len(),
            missing.join(", ")
        )));
    }
    Ok(())
}

/// Write `config` as config.json and the store as model.safetensors (f32) in `dir`.
pub(crate) fn save_hf(dir: &Path, config: &serde_json::Value, store: &ParamStore) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let cfg_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(config)
        .map_err(|e| Error::msg(format!("{}: {e}", cfg_path.display())))?;
    std::fs::write(&cfg_path, text + "\n").map_err(|e| Error::io(&cfg_path, e))?;
    store.save(&dir.join("model.safetensors"), &[], DType::F32)
}

/// Refuse ids outside `[0, limit)` (e.g. a tokenizer whose vocab does not match the
/// embedding table) instead of reading past the table.
///
/// On CUDA this reads nothing back: copying the ids to the host would wait for the
/// device at every forward (with gradient accumulation, for the previous micro-batch's
/// backward). The embedding kernels check every id themselves and record a bad one in
/// the device error record, reported (op, id, valid range) at the next read from the
/// device, e.g. the optimizer's gradient-norm read (backend/cuda/embedding.rs).
pub(crate) fn check_ids(ids: &Tensor, limit: usize, what: &str) -> Result<()> {
    if ids.device().is_cuda() {
        return Ok(());
    }
    let v = ids.to_vec_i32()?;
    if let Some(bad) = v.iter().find(|&&x| x < 0 || x as usize >= limit) {
        return Err(Error::msg(format!(
            "{what} {bad} is outside the embedding table of {limit} rows \
             (does the tokenizer match the model?)"
        )));
    }
    Ok(())
}

/// `nn.Embedding(padding_idx=pad)` lookup: the `pad` row is read like any other but
/// receives no gradient (BERT's and DistilBERT's word embeddings are built that way).
pub(crate) fn embed_padding_idx(table: &Tensor, ids: &Tensor, pad: u32) -> Result<Tensor> {
    table.embedding_padded(ids, pad as usize)
}

/// Position ids `0..L` for every row, I32 `[B, L]`, after checking L fits the table.
pub(crate) fn position_ids(b: usize, l: usize, max: usize, device: Device) -> Result<Tensor> {
    if l > max {
        return Err(Error::msg(format!(
            "sequence length {l} exceeds max_position_embeddings {max}"
        )));
    }
    let v: Vec<i32> = (0..b).flat_map(|_| 0..l as i32).collect();
    Tensor::from_i32(v, [b, l], device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(b: usize, l: usize) -> Vec<Vec<u32>> {
        (0..b)
            .map(|i| (0..l).map(|j| (i * l + j) as u32).collect())
            .collect()
    }

    #[test]
    fn batch_positions_are_clamped_to_the_batch_length() {
        let (ids, mask) = (rows(4, 6), rows(4, 6));
        let (s, e) = ([0usize, 5, 6, 900], [6usize, 7, 2, usize::MAX]);
        let b = QaBatch::from_rows(&ids, &mask, None, Some((&s, &e)), Device::Cpu).expect("batch");
        let got = |t: &Option<Tensor>| t.as_ref().expect("positions").to_vec_i32().expect("v");
        assert_eq!(got(&b.start_positions), vec![0, 5, 6, 6]);
        assert_eq!(got(&b.end_positions), vec![6, 6, 2, 6]);
    }

    #[test]
    fn qa_loss_clamps_hand_built_positions() {
        // Logits [2, 3]; position 3 (= S) and 7 (clamped to S) are both ignored, so the
        // loss of the second row's start is left out either way.
        let logits = Tensor::from_f32(vec![0.1, 0.7, -0.3, 1.0, 0.2, 0.4], [2, 3], Device::Cpu)
            .expect("logits");
        let pos = |v: Vec<i32>| Tensor::from_i32(v, [2], Device::Cpu).expect("pos");
        let clamped = qa_loss(&logits, &logits, &pos(vec![1, 3]), &pos(vec![2, 0]))
            .expect("loss")
            .to_scalar()
            .expect("v");
        let wide = qa_loss(&logits, &logits, &pos(vec![1, 7]), &pos(vec![2, 0]))
            .expect("loss")
            .to_scalar()
            .expect("v");
        assert_eq!(clamped, wide);
        let ce = |row: [f64; 3], t: usize| {
            let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
            lse - row[t]
        };
        let (r0, r1) = ([0.1, 0.7, -0.3], [1.0, 0.2, 0.4]);
        let want = (ce(r0, 1) + (ce(r0, 2) + ce(r1, 0)) / 2.0) / 2.0;
        assert!((clamped - want).abs() < 1e-5, "{clamped} vs {want}");
        // Below zero clamps to 0 (a real class), as torch's clamp does.
        let neg = qa_loss(&logits, &logits, &pos(vec![-4, 3]), &pos(vec![2, 0]))
            .expect("loss")
            .to_scalar()
            .expect("v");
        let zero = qa_loss(&logits, &logits, &pos(vec![0, 3]), &pos(vec![2, 0]))
            .expect("loss")
            .to_scalar()
            .expect("v");
        assert_eq!(neg, zero);
        assert!(
            logits.clamp_i32(0, 3).is_err(),
            "clamp_i32 of floats is a dtype error"
        );
    }
}
