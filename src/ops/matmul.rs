//! Matrix products: `linear` (x·Wᵀ + b, the shape of every HF projection), its
//! variants `act_linear` and `linear_into`, and batched `matmul`. Both backward products are GEMMs too, so on CUDA all three go to cuBLAS.
//! On CUDA a linear layer with a bias adds it in the GEMM's epilogue and gets its bias
//! gradient from the weight-gradient GEMM's epilogue (cuBLASLt, backend/cuda/blaslt.rs);
//! where that path declines, and on the CPU, it is GEMM + `add_bias` / `sum_rows`.

use crate::autograd::{needs_grad, record};
use crate::backend::{LinearDims, MatmulSpec, UnaryOp};
use crate::error::{Error, Result};
use crate::ops::{fresh, record_two, tracking, when};
use crate::profile::cost;
use crate::shape::DType;
use crate::tensor::Tensor;

impl Tensor {
    /// `self [.., in] · weightᵀ [in, out] + bias [out]` with `weight` stored `[out, in]`
    /// as in PyTorch's `nn.Linear`.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let _span = crate::profile::Span::new("linear", self.device()).cost(|| {
            let dt = self.dtype();
            cost::linear(
                linear_cost_dims(self, weight),
                bias.is_some(),
                dt,
                dt,
                tracks(self, weight, bias),
            )
        });
        let (dims, out_dims) = linear_dims(["linear", "linear (weight)"], self, weight)?;
        let [rows, out_f, in_f] = dims;
        let y = match bias {
            Some(b) => {
                b.expect_shape("linear (bias)", &[out_f])?;
                // CUDA: the bias added by the GEMM's epilogue (cuBLASLt), when it can.
                let (xs, ws, bs) = (self.storage(), weight.storage(), b.storage());
                xs.linear_bias(&ws, &bs, LinearDims { rows, out_f, in_f })?
            }
            None => self
                .storage()
                .matmul(&weight.storage(), &MatmulSpec::linear(rows, out_f, in_f))?,
        };
        let out = fresh(y, out_dims);
        let inputs = linear_inputs(self, weight, bias);
        if !needs_grad(&inputs) {
            return Ok(out);
        }
        let flags = LinearFlags::of(self, weight, bias);
        let x = self.detach();
        let w = weight.detach();
        Ok(record(
            "linear",
            &inputs,
            out,
            Box::new(move |g| linear_grads(g, &x, &w, dims, flags)),
        ))
    }

    /// `self [.., in] · weightᵀ` (no bias) with the product stored in `out`: f16
    /// operands and an f32 result (cuBLAS GemmEx, f32 accumulation) for T5's output
    /// projections, whose values overflow f16 (models/t5/fp16.rs). `out` equal to the
    /// operands' dtype is `linear`.
    pub fn linear_into(&self, weight: &Tensor, out: DType) -> Result<Tensor> {
        if out == self.dtype() {
            return self.linear(weight, None);
        }
        let _span = crate::profile::Span::new("linear_into", self.device()).cost(|| {
            let dims = linear_cost_dims(self, weight);
            cost::linear(dims, false, self.dtype(), out, tracks(self, weight, None))
        });
        let (dims, out_dims) = linear_dims(["linear_into", "linear_into (weight)"], self, weight)?;
        let [rows, out_f, in_f] = dims;
        let spec = MatmulSpec::linear(rows, out_f, in_f);
        let s = self.storage().matmul_out(&weight.storage(), &spec, out)?;
        let y = fresh(s, out_dims);
        if !needs_grad(&[self, weight]) {
            return Ok(y);
        }
        let flags = LinearFlags::of(self, weight, None);
        let (x, w) = (self.detach(), weight.detach());
        let compute = self.dtype();
        Ok(record(
            "linear_into",
            &[self, weight],
            y,
            Box::new(move |g| {
                // Both backward GEMMs run in the operands' dtype, as `linear`'s do.
                let g = fresh(g.storage().cast(compute)?, g.shape().clone());
                linear_grads(&g, &x, &w, dims, flags)
            }),
        ))
    }

    /// `act(self).linear(weight, bias)` that keeps only `self` (the pre-activation) for
    /// backward and recomputes `act(self)` there: the FFN's hidden activation (4× the
    /// model width, the largest tensor a BERT layer saves) is not held from forward to
    /// backward, for one more elementwise pass in backward; the GEMMs are unchanged.
    pub fn act_linear(
        &self,
        act: UnaryOp,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let _span = crate::profile::Span::new("act_linear", self.device()).cost(|| {
            let dims = linear_cost_dims(self, weight);
            cost::act_linear(
                act,
                dims,
                bias.is_some(),
                self.dtype(),
                tracks(self, weight, bias),
            )
        });
        let out = {
            let _g = crate::autograd::no_grad();
            self.unary(act)?.linear(weight, bias)?
        };
        let inputs = linear_inputs(self, weight, bias);
        if !needs_grad(&inputs) {
            return Ok(out);
        }
        let dims = [self.shape().rows(), weight.dims()[0], weight.dims()[1]];
        let flags = LinearFlags::of(self, weight, bias);
        let x = self.detach();
        let w = weight.detach();
        Ok(record(
            "act_linear",
            &inputs,
            out,
            Box::new(move |g| {
                let h = fresh(x.storage().unary(act)?, x.shape().clone());
                let mut grads = linear_grads(g, &h, &w, dims, flags)?;
                drop(h);
                if let Some(dh) = grads[0].take() {
                    let dx = x.storage().unary_backward(&dh.storage(), act)?;
                    drop(dh);
                    grads[0] = Some(fresh(dx, x.shape().clone()));
                }
                Ok(grads)
            }),
        ))
    }

    /// Batched `self [.., m, k] · rhs [.., k, n]`; `rhs` of rank 2 is broadcast over the
    /// batch. Leading dimensions must otherwise be equal.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        let _span = crate::profile::Span::new("matmul", self.device()).cost(|| {
            let (ad, bd) = (self.dims(), rhs.dims());
            let at = |d: &[usize], i: usize| d.len().checked_sub(i).map_or(0, |j| d[j]);
            let batch: usize = ad[..ad.len().saturating_sub(2)].iter().product();
            let dims = [batch, at(ad, 2), at(bd, 1), at(ad, 1)];
            cost::matmul(
                dims,
                bd.len() == 2,
                self.dtype(),
                [tracking(self), tracking(rhs)],
            )
        });
        let (ad, bd) = (self.dims(), rhs.dims());
        if ad.len() < 2 || bd.len() < 2 {
            return Err(Error::msg(format!(
                "matmul: both operands need rank >= 2, got {} and {}",
                self.shape(),
                rhs.shape()
            )));
        }
        let (m, k) = (ad[ad.len() - 2], ad[ad.len() - 1]);
        let (k2, n) = (bd[bd.len() - 2], bd[bd.len() - 1]);
        let batch: usize = ad[..ad.len() - 2].iter().product();
        let b_batch: usize = bd[..bd.len() - 2].iter().product();
        let broadcast = bd.len() == 2;
        if k != k2 || (!broadcast && (ad[..ad.len() - 2] != bd[..bd.len() - 2])) {
            return Err(Error::Shape {
                op: "matmul",
                expected: format!("[.., {k}, n] with the batch of {}", self.shape()),
                got: rhs.shape().clone(),
            });
        }
        debug_assert!(broadcast || b_batch == batch);
        let spec = MatmulSpec::batched(batch, m, k, n, broadcast);
        let mut out_dims = ad[..ad.len() - 2].to_vec();
        out_dims.extend([m, n]);
        let out = fresh(self.storage().matmul(&rhs.storage(), &spec)?, out_dims);
        Ok(record_two(
            "matmul",
            (self, rhs),
            out,
            move |g, a, b, [ta, tb]| {
                let gs = g.storage();
                // dA [b, m, k] = dC [b, m, n] · Bᵀ
                let da = when(ta, || {
                    let spec = MatmulSpec {
                        trans_b: true,
                        ..MatmulSpec::batched(batch, m, n, k, broadcast)
                    };
                    Ok(fresh(gs.matmul(&b.storage(), &spec)?, a.shape().clone()))
                })?;
                // dB = Aᵀ · dC, summed over the batch when B was broadcast.
                let db = when(tb, || {
                    let spec = if broadcast {
                        MatmulSpec {
                            batch: 1,
                            m: k,
                            n,
                            k: batch * m,
                            trans_a: true,
                            trans_b: false,
                            stride_a: 0,
                            stride_b: 0,
                        }
                    } else {
                        MatmulSpec {
                            trans_a: true,
                            ..MatmulSpec::batched(batch, k, m, n, false)
                        }
                    };
                    Ok(fresh(a.storage().matmul(&gs, &spec)?, b.shape().clone()))
                })?;
                Ok([da, db])
            },
        ))
    }
}

/// `[rows, out, in]` of `x [.., in] · weightᵀ` and the output's dims `[.., out]`, after
/// checking that `weight` is `[out, in]`; `[op, weight_op]` name the op in errors.
fn linear_dims(
    [op, weight_op]: [&'static str; 2],
    x: &Tensor,
    weight: &Tensor,
) -> Result<([usize; 3], Vec<usize>)> {
    weight.expect_rank(weight_op, 2)?;
    let (out_f, in_f) = (weight.dims()[0], weight.dims()[1]);
    if x.shape().last() != in_f {
        return Err(Error::Shape {
            op,
            expected: format!("[.., {in_f}] to match weight {}", weight.shape()),
            got: x.shape().clone(),
        });
    }
    let mut out_dims = x.dims().to_vec();
    if let Some(l) = out_dims.last_mut() {
        *l = out_f;
    }
    Ok(([x.shape().rows(), out_f, in_f], out_dims))
}

/// `[rows, out, in]` of `x · weightᵀ` for the profiler's cost (before the shapes are
/// checked: zeros where a dimension is missing).
fn linear_cost_dims(x: &Tensor, weight: &Tensor) -> [usize; 3] {
    let w = weight.dims();
    [
        x.shape().rows(),
        w.first().copied().unwrap_or(0),
        w.get(1).copied().unwrap_or(0),
    ]
}

/// Which of x, weight and bias track gradients (recording on), for the profiler's cost.
fn tracks(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> [bool; 3] {
    [tracking(x), tracking(w), b.is_some_and(tracking)]
}

/// Which of a linear's inputs want gradients.
#[derive(Clone, Copy)]
struct LinearFlags {
    tx: bool,
    tw: bool,
    tb: bool,
    has_bias: bool,
}

impl LinearFlags {
    fn of(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> LinearFlags {
        LinearFlags {
            tx: x.tracks(),
            tw: w.tracks(),
            tb: b.is_some_and(|b| b.tracks()),
            has_bias: b.is_some(),
        }
    }
}

/// A linear's inputs in tape order: x, weight, (bias).
fn linear_inputs<'a>(x: &'a Tensor, w: &'a Tensor, b: Option<&'a Tensor>) -> Vec<&'a Tensor> {
    let mut v = vec![x, w];
    v.extend(b);
    v
}

/// The gradients of `x · wᵀ + b` for output gradient `g`: [dx, dW, (db)].
fn linear_grads(
    g: &Tensor,
    x: &Tensor,
    w: &Tensor,
    [rows, out_f, in_f]: [usize; 3],
    flags: LinearFlags,
) -> Result<Vec<Option<Tensor>>> {
    let LinearFlags {
        tx,
        tw,
        tb,
        has_bias,
    } = flags;
    let gs = g.storage();
    // dx [rows, in] = dy [rows, out] · W [out, in]
    let dx = when(tx, || {
        let s = gs.matmul(&w.storage(), &MatmulSpec::plain(rows, out_f, in_f))?;
        Ok(fresh(s, x.shape().clone()))
    })?;
    // CUDA: dW and db from one GEMM whose epilogue sums dy's rows (cuBLASLt).
    if has_bias && tw && tb {
        let dims = LinearDims { rows, out_f, in_f };
        let (dw, db) = gs.linear_wgrad_bgrad(&x.storage(), dims)?;
        return Ok(vec![
            dx,
            Some(fresh(dw, [out_f, in_f])),
            Some(fresh(db, [out_f])),
        ]);
    }
    // dW [out, in] = dyᵀ [out, rows] · x [rows, in]
    let dw = when(tw, || {
        let spec = MatmulSpec::linear_wgrad(rows, out_f, in_f);
        Ok(fresh(gs.matmul(&x.storage(), &spec)?, [out_f, in_f]))
    })?;
    let mut v = vec![dx, dw];
    if has_bias {
        v.push(when(tb, || Ok(fresh(gs.sum_rows(out_f)?, [out_f])))?);
    }
    Ok(v)
}
