//! Elementwise ops: add/sub/mul, affine, activations, gated activation, dropout, bias add,
//! sums. Matches kernels/elementwise.cu and backend/*/elementwise.rs.

use crate::autograd::{needs_grad, record};
use crate::backend::{BinaryOp, UnaryOp};
use crate::error::{Error, Result};
use crate::ops::{fresh, record_pointwise, record_two, tracking, when};
use crate::profile::cost;
use crate::tensor::Tensor;

fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::Shape {
            op,
            expected: format!("{} (the first operand's shape)", a.shape()),
            got: b.shape().clone(),
        });
    }
    Ok(())
}

impl Tensor {
    fn binary_op(&self, rhs: &Tensor, op: BinaryOp, name: &'static str) -> Result<Tensor> {
        let _span = crate::profile::Span::new(name, self.device()).cost(|| {
            cost::binary(
                op,
                self.elem_count(),
                self.dtype(),
                [tracking(self), tracking(rhs)],
            )
        });
        same_shape(name, self, rhs)?;
        let out = fresh(
            self.storage().binary(&rhs.storage(), op)?,
            self.shape().clone(),
        );
        if !needs_grad(&[self, rhs]) {
            return Ok(out);
        }
        let (ta, tb) = (self.tracks(), rhs.tracks());
        let saved = match op {
            BinaryOp::Mul | BinaryOp::Div => Some((self.detach(), rhs.detach())),
            _ => None,
        };
        Ok(record(
            name,
            &[self, rhs],
            out,
            Box::new(move |g| {
                let shape = g.shape().clone();
                let gs = g.storage();
                let (da, db) = match op {
                    BinaryOp::Add => (when(ta, || Ok(g.clone()))?, when(tb, || Ok(g.clone()))?),
                    BinaryOp::Sub => (
                        when(ta, || Ok(g.clone()))?,
                        when(tb, || Ok(fresh(gs.affine(-1.0, 0.0)?, shape.clone())))?,
                    ),
                    BinaryOp::Mul => {
                        let (a, b) = saved.as_ref().expect("saved for mul");
                        (
                            when(ta, || {
                                Ok(fresh(
                                    gs.binary(&b.storage(), BinaryOp::Mul)?,
                                    shape.clone(),
                                ))
                            })?,
                            when(tb, || {
                                Ok(fresh(
                                    gs.binary(&a.storage(), BinaryOp::Mul)?,
                                    shape.clone(),
                                ))
                            })?,
                        )
                    }
                    BinaryOp::Div => {
                        let (a, b) = saved.as_ref().expect("saved for div");
                        let bs = b.storage();
                        let da = when(ta, || {
                            Ok(fresh(gs.binary(&bs, BinaryOp::Div)?, shape.clone()))
                        })?;
                        let db = when(tb, || {
                            // d(a/b)/db = -a/b²
                            let q = a.storage().binary(&bs, BinaryOp::Div)?;
                            let q = q.binary(&bs, BinaryOp::Div)?;
                            Ok(fresh(
                                gs.binary(&q, BinaryOp::Mul)?.affine(-1.0, 0.0)?,
                                shape.clone(),
                            ))
                        })?;
                        (da, db)
                    }
                };
                Ok(vec![da, db])
            }),
        ))
    }

    /// `self * mul + add`.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        let _span = crate::profile::Span::new("affine", self.device())
            .cost(|| cost::affine(self.elem_count(), self.dtype()));
        let out = fresh(self.storage().affine(mul, add)?, self.shape().clone());
        Ok(record_pointwise("affine", self, out, move |g| {
            g.affine(mul, 0.0)
        }))
    }

    pub fn scale(&self, s: f64) -> Result<Tensor> {
        let _span = crate::profile::Span::new("scale", self.device())
            .cost(|| cost::affine(self.elem_count(), self.dtype()));
        self.affine(s, 0.0)
    }

    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        let _span = crate::profile::Span::new("unary", self.device())
            .cost(|| cost::unary(op, self.elem_count(), self.dtype()));
        // x for the backward (dropped at once when nothing tracks).
        let x = self.detach();
        let out = fresh(x.storage().unary(op)?, self.shape().clone());
        Ok(record_pointwise("unary", self, out, move |g| {
            x.storage().unary_backward(g, op)
        }))
    }

    /// `act(self) ⊙ lin` — T5 v1.1's gated feed-forward, fused.
    pub fn gated(&self, lin: &Tensor, act: UnaryOp) -> Result<Tensor> {
        let _span = crate::profile::Span::new("gated", self.device())
            .cost(|| cost::gated(act, self.elem_count(), self.dtype()));
        same_shape("gated", self, lin)?;
        let out = fresh(
            self.storage().gated(&lin.storage(), act)?,
            self.shape().clone(),
        );
        Ok(record_two(
            "gated",
            (self, lin),
            out,
            move |g, gate, l, t| {
                let (dg, dl) = gate
                    .storage()
                    .gated_backward(&l.storage(), &g.storage(), act)?;
                let shape = g.shape();
                Ok([
                    t[0].then(|| fresh(dg, shape.clone())),
                    t[1].then(|| fresh(dl, shape.clone())),
                ])
            },
        ))
    }

    /// Inverted dropout with a seeded, index-hashed mask; identity when `p == 0`.
    pub fn dropout(&self, p: f32, seed: u64) -> Result<Tensor> {
        let _span = crate::profile::Span::new("dropout", self.device())
            .cost(|| cost::dropout(self.elem_count(), p, self.dtype()));
        if p <= 0.0 {
            return Ok(self.clone());
        }
        if p >= 1.0 {
            return Err(Error::msg(format!("dropout: p must be in [0, 1), got {p}")));
        }
        let out = fresh(self.storage().dropout(p, seed)?, self.shape().clone());
        Ok(record_pointwise("dropout", self, out, move |g| {
            g.dropout(p, seed)
        }))
    }

    /// An I32 tensor with every value clamped to [lo, hi] (no gradient: integers).
    pub fn clamp_i32(&self, lo: i32, hi: i32) -> Result<Tensor> {
        let _span = crate::profile::Span::new("clamp_i32", self.device())
            .cost(|| cost::clamp_i32(self.elem_count()));
        Ok(fresh(
            self.storage().clamp_i32(lo, hi)?,
            self.shape().clone(),
        ))
    }

    /// `self[.., c] + bias[c]`.
    pub fn add_bias(&self, bias: &Tensor) -> Result<Tensor> {
        let _span = crate::profile::Span::new("add_bias", self.device()).cost(|| {
            let (rows, cols) = (self.shape().rows(), self.shape().last());
            cost::add_bias(rows, cols, self.dtype(), tracking(bias))
        });
        let cols = self.shape().last();
        bias.expect_shape("add_bias", &[cols])?;
        let out = fresh(
            self.storage().add_bias(&bias.storage(), cols)?,
            self.shape().clone(),
        );
        let (tx, tb) = (self.tracks(), bias.tracks());
        Ok(record(
            "add_bias",
            &[self, bias],
            out,
            Box::new(move |g| {
                let db = when(tb, || Ok(fresh(g.storage().sum_rows(cols)?, [cols])))?;
                Ok(vec![when(tx, || Ok(g.clone()))?, db])
            }),
        ))
    }

    /// Sum of all elements, shape `[1]`.
    pub fn sum_all(&self) -> Result<Tensor> {
        let _span = crate::profile::Span::new("sum_all", self.device())
            .cost(|| cost::sum_all(self.elem_count(), self.dtype()));
        let out = fresh(self.storage().sum_all()?, [1]);
        let (shape, dtype) = (self.shape().clone(), self.dtype());
        Ok(record(
            "sum_all",
            &[self],
            out,
            Box::new(move |g| {
                let gv = g.to_scalar()?;
                Ok(vec![Some(g.full_on_same(shape, dtype, gv)?)])
            }),
        ))
    }

    /// Mean of all elements, shape `[1]`.
    pub fn mean_all(&self) -> Result<Tensor> {
        let _span = crate::profile::Span::new("mean_all", self.device())
            .cost(|| cost::sum_all(self.elem_count(), self.dtype()));
        let n = self.elem_count().max(1) as f64;
        self.sum_all()?.affine(1.0 / n, 0.0)
    }
}

impl Tensor {
    /// Cast to `dtype`; the gradient is cast back to the input's dtype.
    pub fn to_dtype(&self, dtype: crate::shape::DType) -> Result<Tensor> {
        let _span = crate::profile::Span::new("to_dtype", self.device())
            .cost(|| cost::cast(self.elem_count(), self.dtype(), dtype));
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let out = fresh(self.storage().cast(dtype)?, self.shape().clone());
        let src = self.dtype();
        Ok(record_pointwise("to_dtype", self, out, move |g| {
            g.cast(src)
        }))
    }
}

/// The elementwise arithmetic, each `binary_op` with its op (profiled under its name).
macro_rules! arithmetic {
    ($($name:ident => $op:ident;)*) => {
        impl Tensor {
            $(
                pub fn $name(&self, rhs: &Tensor) -> Result<Tensor> {
                    self.binary_op(rhs, BinaryOp::$op, stringify!($name))
                }
            )*
        }
    };
}

arithmetic! {
    add => Add;
    sub => Sub;
    mul => Mul;
    div => Div;
}

/// The named activations, each `unary` with its op (profiled under its own name).
macro_rules! activations {
    ($($(#[$doc:meta])* $name:ident => $op:ident;)*) => {
        impl Tensor {
            $(
                $(#[$doc])*
                pub fn $name(&self) -> Result<Tensor> {
                    let _span = crate::profile::Span::new(stringify!($name), self.device())
                        .cost(|| cost::unary(UnaryOp::$op, self.elem_count(), self.dtype()));
                    self.unary(UnaryOp::$op)
                }
            )*
        }
    };
}

activations! {
    relu => Relu;
    /// Exact (erf) GELU, as BERT and DistilBERT use.
    gelu => Gelu;
    /// Tanh-approximated GELU (HF `gelu_new`).
    gelu_new => GeluNew;
    /// SiLU, `x · sigmoid(x)` (HF `silu` / `swish`, Marian's activation).
    silu => Silu;
}
