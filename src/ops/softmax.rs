//! Softmax over the last dimension and the fused softmax + cross-entropy loss
//! (ignore_index -100, mean over kept targets, as `torch.nn.CrossEntropyLoss`).

use crate::autograd::{needs_grad, record};
use crate::error::{Error, Result};
use crate::ops::{fresh, record_pointwise};
use crate::profile::cost;
use crate::shape::DType;
use crate::tensor::Tensor;

/// PyTorch's and HF's label value for "no loss here".
pub const IGNORE_INDEX: i32 = -100;

impl Tensor {
    pub fn softmax(&self) -> Result<Tensor> {
        let _span = crate::profile::Span::new("softmax", self.device())
            .cost(|| cost::softmax(self.elem_count(), self.dtype()));
        let cols = self.shape().last();
        let out = fresh(self.storage().softmax(cols)?, self.shape().clone());
        // The backward reads the output y (dropped at once when nothing tracks).
        let y = out.detach();
        Ok(record_pointwise("softmax", self, out, move |g| {
            y.storage().softmax_backward(g, cols)
        }))
    }

    /// Log-softmax for scoring during generation. Inference only: it records no backward,
    /// and refuses a tracked input rather than silently cutting the graph.
    pub fn log_softmax_infer(&self) -> Result<Tensor> {
        let _span = crate::profile::Span::new("log_softmax_infer", self.device())
            .cost(|| cost::softmax(self.elem_count(), self.dtype()));
        if needs_grad(&[self]) {
            return Err(Error::msg(
                "log_softmax_infer is inference-only: call it under autograd::no_grad()",
            ));
        }
        let cols = self.shape().last();
        Ok(fresh(
            self.storage().log_softmax(cols)?,
            self.shape().clone(),
        ))
    }

    /// Index of each row's maximum (inference only), I32 of shape `dims[..-1]`.
    pub fn argmax_last(&self) -> Result<Tensor> {
        let _span = crate::profile::Span::new("argmax_last", self.device())
            .cost(|| cost::argmax_last(self.shape().rows(), self.shape().last(), self.dtype()));
        let cols = self.shape().last();
        let dims = self.dims();
        let out_dims = dims[..dims.len().saturating_sub(1)].to_vec();
        Ok(fresh(self.storage().argmax_last(cols)?, out_dims))
    }

    /// Mean cross-entropy of `self [.., V]` logits against I32 `targets [..]`, skipping
    /// `ignore_index`. Returns a `[1]` loss (0 when every target is ignored).
    pub fn cross_entropy(&self, targets: &Tensor, ignore_index: i32) -> Result<Tensor> {
        let _span = crate::profile::Span::new("cross_entropy", self.device())
            .cost(|| cost::cross_entropy(self.shape().rows(), self.shape().last(), self.dtype()));
        let cols = self.shape().last();
        let rows = self.shape().rows();
        if targets.dtype() != DType::I32 {
            return Err(Error::DType {
                op: "cross_entropy (targets)",
                expected: "i32",
                got: targets.dtype(),
            });
        }
        if targets.elem_count() != rows {
            return Err(Error::Shape {
                op: "cross_entropy (targets)",
                expected: format!("{rows} targets, one per row of logits {}", self.shape()),
                got: targets.shape().clone(),
            });
        }
        let (loss, lse) = self
            .storage()
            .cross_entropy(&targets.storage(), cols, ignore_index)?;
        let out = fresh(loss, [1]);
        if !needs_grad(&[self]) {
            return Ok(out);
        }
        let (x, t) = (self.detach(), targets.detach());
        let lse = fresh(lse, [rows]);
        Ok(record(
            "cross_entropy",
            &[self, targets],
            out,
            Box::new(move |g| {
                let d = x.storage().cross_entropy_backward(
                    &t.storage(),
                    &lse.storage(),
                    &g.storage(),
                    cols,
                    ignore_index,
                )?;
                Ok(vec![Some(fresh(d, x.shape().clone())), None])
            }),
        ))
    }
}
