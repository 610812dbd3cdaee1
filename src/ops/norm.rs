//! LayerNorm (BERT/DistilBERT) and T5's RMSNorm over the last dimension. The saved
//! statistics (mean, rstd) are f32 buffers, as the kernels keep them.

use crate::autograd::{needs_grad, record};
use crate::error::Result;
use crate::ops::fresh;
use crate::tensor::Tensor;

impl Tensor {
    pub fn layer_norm(&self, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
        let _span = crate::profile::Span::new("layer_norm", self.device());
        let cols = self.shape().last();
        gamma.expect_shape("layer_norm (weight)", &[cols])?;
        beta.expect_shape("layer_norm (bias)", &[cols])?;
        let (y, mean, rstd) =
            self.storage()
                .layer_norm(&gamma.storage(), &beta.storage(), cols, eps)?;
        let out = fresh(y, self.shape().clone());
        if !needs_grad(&[self, gamma, beta]) {
            return Ok(out);
        }
        let rows = self.shape().rows();
        let (x, g_) = (self.detach(), gamma.detach());
        let (mean, rstd) = (fresh(mean, [rows]), fresh(rstd, [rows]));
        let t = [self.tracks(), gamma.tracks(), beta.tracks()];
        Ok(record(
            "layer_norm",
            &[self, gamma, beta],
            out,
            Box::new(move |g| {
                let (dx, dg, db) = x.storage().layer_norm_backward(
                    &g_.storage(),
                    &mean.storage(),
                    &rstd.storage(),
                    &g.storage(),
                    cols,
                )?;
                Ok(vec![
                    t[0].then(|| fresh(dx, x.shape().clone())),
                    t[1].then(|| fresh(dg, [cols])),
                    t[2].then(|| fresh(db, [cols])),
                ])
            }),
        ))
    }

    /// T5LayerNorm: `x / sqrt(mean(x²) + eps) * gamma`, no mean, no bias.
    pub fn rms_norm(&self, gamma: &Tensor, eps: f64) -> Result<Tensor> {
        let _span = crate::profile::Span::new("rms_norm", self.device());
        let cols = self.shape().last();
        gamma.expect_shape("rms_norm (weight)", &[cols])?;
        let (y, rstd) = self.storage().rms_norm(&gamma.storage(), cols, eps)?;
        let out = fresh(y, self.shape().clone());
        if !needs_grad(&[self, gamma]) {
            return Ok(out);
        }
        let rows = self.shape().rows();
        let (x, g_) = (self.detach(), gamma.detach());
        let rstd = fresh(rstd, [rows]);
        let t = [self.tracks(), gamma.tracks()];
        Ok(record(
            "rms_norm",
            &[self, gamma],
            out,
            Box::new(move |g| {
                let (dx, dg) = x.storage().rms_norm_backward(
                    &g_.storage(),
                    &rstd.storage(),
                    &g.storage(),
                    cols,
                )?;
                Ok(vec![
                    t[0].then(|| fresh(dx, x.shape().clone())),
                    t[1].then(|| fresh(dg, [cols])),
                ])
            }),
        ))
    }
}
