//! LayerNorm (BERT/DistilBERT) and T5's RMSNorm over the last dimension, and the fused
//! `LayerNorm(dropout(a) + residual)` of a post-norm encoder layer. The saved statistics
//! (mean, rstd) are f32 buffers, as the kernels keep them.

use crate::autograd::{needs_grad, record};
use crate::backend::{ResidualNorm, Storage};
use crate::error::{Error, Result};
use crate::ops::{fresh, tracking};
use crate::profile::cost::{self, NormKind};
use crate::tensor::Tensor;

/// A norm's gradients for the inputs that track: `dx` shaped as `x`, then each
/// parameter's (`[cols]`: gamma, and beta where there is one).
fn norm_grads<const N: usize>(
    tracks: &[bool],
    x: &Tensor,
    dx: Storage,
    params: [Storage; N],
) -> Vec<Option<Tensor>> {
    let cols = x.shape().last();
    let dx = tracks[0].then(|| fresh(dx, x.shape().clone()));
    let dp = params.into_iter().zip(&tracks[1..]);
    std::iter::once(dx)
        .chain(dp.map(|(d, &t)| t.then(|| fresh(d, [cols]))))
        .collect()
}

impl Tensor {
    /// The profiler's cost of a norm over this tensor's last dimension.
    fn norm_cost(&self, kind: NormKind) -> cost::OpCost {
        let (rows, cols) = (self.shape().rows(), self.shape().last());
        cost::norm(kind, rows, cols, self.dtype(), tracking(self))
    }

    pub fn layer_norm(&self, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
        let _span = crate::profile::Span::new("layer_norm", self.device())
            .cost(|| self.norm_cost(NormKind::Layer));
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
                let (gamma, mean, rstd) = (g_.storage(), mean.storage(), rstd.storage());
                let (dx, dg, db) =
                    x.storage()
                        .layer_norm_backward(&gamma, &mean, &rstd, &g.storage(), cols)?;
                Ok(norm_grads(&t, &x, dx, [dg, db]))
            }),
        ))
    }

    /// `LayerNorm(dropout(self, p, seed) + residual)`: the residual block of BERT and
    /// DistilBERT layers as one op. Values and gradients equal `dropout`, `add` and
    /// `layer_norm` in sequence (tests/autograd.rs, tests/gpu_kernels); on CUDA it is one
    /// kernel each way instead of three, and it keeps what `layer_norm` kept (the sum).
    #[allow(clippy::too_many_arguments)]
    pub fn dropout_add_layer_norm(
        &self,
        residual: &Tensor,
        p: f32,
        seed: u64,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        let _span = crate::profile::Span::new("dropout_add_layer_norm", self.device())
            .cost(|| self.norm_cost(NormKind::DropoutAddLayer { dropout: p > 0.0 }));
        let op = "dropout_add_layer_norm";
        if !(0.0..1.0).contains(&p) {
            return Err(Error::msg(format!("{op}: p must be in [0, 1), got {p}")));
        }
        residual.expect_shape("dropout_add_layer_norm (residual)", self.dims())?;
        let cols = self.shape().last();
        gamma.expect_shape("dropout_add_layer_norm (weight)", &[cols])?;
        beta.expect_shape("dropout_add_layer_norm (bias)", &[cols])?;
        let rn = ResidualNorm { cols, eps, p, seed };
        let (y, sum, mean, rstd) = self.storage().dropout_add_layer_norm(
            &residual.storage(),
            &gamma.storage(),
            &beta.storage(),
            rn,
        )?;
        let out = fresh(y, self.shape().clone());
        if !needs_grad(&[self, residual, gamma, beta]) {
            return Ok(out);
        }
        let rows = self.shape().rows();
        let shape = self.shape().clone();
        let sum = fresh(sum, shape.clone());
        let g_ = gamma.detach();
        let (mean, rstd) = (fresh(mean, [rows]), fresh(rstd, [rows]));
        let t = [
            self.tracks(),
            residual.tracks(),
            gamma.tracks(),
            beta.tracks(),
        ];
        Ok(record(
            "dropout_add_layer_norm",
            &[self, residual, gamma, beta],
            out,
            Box::new(move |g| {
                let (ds, da, dg, db) = sum.storage().dropout_add_layer_norm_backward(
                    &g_.storage(),
                    &mean.storage(),
                    &rstd.storage(),
                    &g.storage(),
                    rn,
                )?;
                let ds = fresh(ds, shape.clone());
                // Without dropout both inputs get ds itself (one buffer, as `add` does).
                let da = match da {
                    Some(da) => fresh(da, shape.clone()),
                    None => ds.clone(),
                };
                Ok(vec![
                    t[0].then_some(da),
                    t[1].then_some(ds),
                    t[2].then(|| fresh(dg, [cols])),
                    t[3].then(|| fresh(db, [cols])),
                ])
            }),
        ))
    }

    /// T5LayerNorm: `x / sqrt(mean(x²) + eps) * gamma`, no mean, no bias.
    pub fn rms_norm(&self, gamma: &Tensor, eps: f64) -> Result<Tensor> {
        let _span = crate::profile::Span::new("rms_norm", self.device())
            .cost(|| self.norm_cost(NormKind::Rms));
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
                let (gamma, rstd) = (g_.storage(), rstd.storage());
                let (dx, dg) = x
                    .storage()
                    .rms_norm_backward(&gamma, &rstd, &g.storage(), cols)?;
                Ok(norm_grads(&t, &x, dx, [dg]))
            }),
        ))
    }
}
