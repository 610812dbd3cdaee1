//! Extractive QA on an encoder, as `BertForQuestionAnswering` and
//! `DistilBertForQuestionAnswering` do it: the `qa_outputs` head, HF's QA loss, one
//! batch of windows, and the `QaModel` trait that lets training code drive either model
//! the same way.

use std::path::Path;

use crate::error::{Error, Result};
use crate::nn::{Linear, Mode, ParamStore, VarBuilder};
use crate::shape::Device;
use crate::tensor::Tensor;

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
    /// (activation checkpointing; the planner turns it on when a budget needs it).
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
        // The loss for these start positions (end positions 2 and 0).
        let loss = |starts: [i32; 2]| {
            qa_loss(&logits, &logits, &pos(starts.to_vec()), &pos(vec![2, 0]))
                .expect("loss")
                .to_scalar()
                .expect("v")
        };
        let (clamped, wide) = (loss([1, 3]), loss([1, 7]));
        assert_eq!(clamped, wide);
        let ce = |row: [f64; 3], t: usize| {
            let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
            lse - row[t]
        };
        let (r0, r1) = ([0.1, 0.7, -0.3], [1.0, 0.2, 0.4]);
        let want = (ce(r0, 1) + (ce(r0, 2) + ce(r1, 0)) / 2.0) / 2.0;
        assert!((clamped - want).abs() < 1e-5, "{clamped} vs {want}");
        // Below zero clamps to 0 (a real class), as torch's clamp does.
        assert_eq!(loss([-4, 3]), loss([0, 3]));
        assert!(
            logits.clamp_i32(0, 3).is_err(),
            "clamp_i32 of floats is a dtype error"
        );
    }
}
