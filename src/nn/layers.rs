//! Layers as plain structs holding their parameters, built from a `VarBuilder` under HF
//! names (`weight`, `bias`).

use crate::error::Result;
use crate::nn::params::{Init, VarBuilder};
use crate::tensor::Tensor;

/// `nn.Linear`: weight `[out, in]`, optional bias `[out]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Load, or initialise as HF does (normal(0, std), zero bias) when absent.
    pub fn new(vb: &VarBuilder, in_f: usize, out_f: usize, bias: bool, std: f64) -> Result<Linear> {
        let weight = vb.get_or_init("weight", &[out_f, in_f], Init::Normal(std))?;
        let bias = if bias {
            Some(vb.get_or_init("bias", &[out_f], Init::Zeros)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// `nn.LayerNorm` over the last dimension.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(vb: &VarBuilder, dim: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: vb.get_or_init("weight", &[dim], Init::Ones)?,
            bias: vb.get_or_init("bias", &[dim], Init::Zeros)?,
            eps,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm(&self.weight, &self.bias, self.eps)
    }
    /// `LayerNorm(dropout(a, p, seed) + residual)` as one op
    /// ([`Tensor::dropout_add_layer_norm`]).
    pub fn forward_residual(
        &self,
        a: &Tensor,
        residual: &Tensor,
        p: f32,
        seed: u64,
    ) -> Result<Tensor> {
        a.dropout_add_layer_norm(residual, p, seed, &self.weight, &self.bias, self.eps)
    }
}

/// T5's `T5LayerNorm` (RMS, no bias).
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(vb: &VarBuilder, dim: usize, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: vb.get_or_init("weight", &[dim], Init::Ones)?,
            eps,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.rms_norm(&self.weight, self.eps)
    }
}

/// `nn.Embedding`: table `[num, dim]`.
#[derive(Clone, Debug)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn new(vb: &VarBuilder, num: usize, dim: usize, std: f64) -> Result<Embedding> {
        Ok(Embedding {
            weight: vb.get_or_init("weight", &[num, dim], Init::Normal(std))?,
        })
    }
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.weight.embedding(ids)
    }
}
