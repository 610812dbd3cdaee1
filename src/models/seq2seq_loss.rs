//! Teacher forcing, as every encoder-decoder LM here trains (T5, BART, Marian): the
//! decoder reads the labels shifted one position to the right, and the loss is the mean
//! cross-entropy over the labels that are not -100.

use crate::error::Result;
use crate::ops::softmax::IGNORE_INDEX;
use crate::tensor::Tensor;

/// HF `shift_tokens_right` (T5's `_shift_right`): `decoder_start` at position 0,
/// `labels [B, L]` moved one to the right, -100 replaced by `pad`.
pub fn shift_tokens_right(labels: &Tensor, pad: i32, decoder_start: i32) -> Result<Tensor> {
    labels.expect_rank("shift_tokens_right (labels)", 2)?;
    let l = labels.dims()[1];
    let shifted: Vec<i32> = labels
        .to_vec_i32()?
        .chunks(l.max(1))
        .flat_map(|row| std::iter::once(decoder_start).chain(row[..l - 1].iter().copied()))
        .map(|t| if t == IGNORE_INDEX { pad } else { t })
        .collect();
    Tensor::from_i32(shifted, labels.dims(), labels.device())
}

/// Mean cross-entropy of `logits [B, L, vocab]` against `labels [B, L]`, -100 ignored
/// (HF `CrossEntropyLoss()` on the flattened logits).
pub fn lm_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (b, l, v) = (logits.dims()[0], logits.dims()[1], logits.dims()[2]);
    logits
        .reshape([b * l, v])?
        .cross_entropy(&labels.reshape([b * l])?, IGNORE_INDEX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::Device;

    #[test]
    fn shift_tokens_right_as_transformers() {
        let labels =
            Tensor::from_i32(vec![5, 6, 7, -100, 8, 9, -100, -100], [2, 4], Device::Cpu).unwrap();
        let out = shift_tokens_right(&labels, 1, 2).unwrap();
        assert_eq!(out.to_vec_i32().unwrap(), vec![2, 5, 6, 7, 2, 8, 9, 1]);
        assert_eq!(out.dims(), &[2, 4]);
    }
}
