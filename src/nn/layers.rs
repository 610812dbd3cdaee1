//! Layers as plain structs holding their parameters, built from a `VarBuilder` under HF
//! names (`weight`, `bias`).

use crate::error::Result;
use crate::nn::params::{Init, VarBuilder};
use crate::tensor::Tensor;

/// FUSEBOX_SEPARATE_QKV=1: self-attention projects q, k and v with three GEMMs and runs
/// attention on three tensors (the layout before [`packed_qkv`]), for A/B timing; the
/// default is one GEMM over `[Wq; Wk; Wv]` and the packed attention op. Read once per
/// process; the memory planner reads the same variable.
pub fn separate_qkv() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FUSEBOX_SEPARATE_QKV").is_ok_and(|v| v == "1"))
}

/// Self-attention's q, k and v from one GEMM: `x [B, L, in]` through `[Wq; Wk; Wv]`
/// (and the biases likewise), concatenated per call so the checkpoint keeps its three
/// layers. The result `[B, L, 3, heads, head_dim]` is what `Tensor::attention_qkv` reads
/// in place; its gradient comes back packed, so the input gradient is one GEMM too.
pub fn packed_qkv(
    x: &Tensor,
    weights: [&Tensor; 3],
    biases: Option<[&Tensor; 3]>,
    heads: usize,
    head_dim: usize,
) -> Result<Tensor> {
    let (b, l) = (x.dims()[0], x.dims()[1]);
    let w = Tensor::cat(&weights, 0)?;
    let bias = biases.map(|bs| Tensor::cat(&bs, 0)).transpose()?;
    x.linear(&w, bias.as_ref())?
        .reshape([b, l, 3, heads, head_dim])
}

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
