//! Differentiable ops on `Tensor`: each runs the backend forward, and records a backward
//! closure on the tape when an input tracks gradients. Backend-agnostic: the same code
//! drives the CPU reference and the CUDA kernels.

pub mod attention;
pub mod elementwise;
pub mod embedding;
pub mod layout;
pub mod matmul;
pub mod norm;
pub mod softmax;

use crate::backend::Storage;
use crate::shape::Shape;

/// The activations the ops take (`unary`, `gated`, `act_linear`): the backend's enum,
/// named here so that the layers above ops (nn, models, tasks) never import the backend.
pub use crate::backend::UnaryOp;
use crate::tensor::Tensor;

/// A fresh untracked result tensor; `autograd::record` marks it tracked when needed.
pub(crate) fn fresh(s: Storage, shape: impl Into<Shape>) -> Tensor {
    Tensor::wrap(s, shape.into(), false)
}

/// Record a one-input op whose gradient has the upstream gradient's shape: `dx` maps
/// g's storage to the input's gradient (closing over what it saved). Returns `out`,
/// tracked when `x` is.
pub(crate) fn record_pointwise(
    name: &'static str,
    x: &Tensor,
    out: Tensor,
    dx: impl FnOnce(&Storage) -> crate::Result<Storage> + 'static,
) -> Tensor {
    crate::autograd::record(
        name,
        &[x],
        out,
        Box::new(move |g| {
            let d = dx(&g.storage())?;
            Ok(vec![Some(fresh(d, g.shape().clone()))])
        }),
    )
}

/// Record a two-input op whose backward reads both inputs: `grads(g, a, b, tracks)`
/// gives their gradients (`None` for one that does not track), `a` and `b` detached.
/// Returns `out`, tracked when an input is; nothing is saved when neither is.
pub(crate) fn record_two(
    name: &'static str,
    (a, b): (&Tensor, &Tensor),
    out: Tensor,
    grads: impl FnOnce(&Tensor, &Tensor, &Tensor, [bool; 2]) -> crate::Result<[Option<Tensor>; 2]>
        + 'static,
) -> Tensor {
    if !crate::autograd::needs_grad(&[a, b]) {
        return out;
    }
    let tracks = [a.tracks(), b.tracks()];
    let (sa, sb) = (a.detach(), b.detach());
    crate::autograd::record(
        name,
        &[a, b],
        out,
        Box::new(move |g| Ok(grads(g, &sa, &sb, tracks)?.into())),
    )
}

/// Will `t` get a gradient from an op recorded now (it tracks, and recording is on)?
/// For the profiler's backward costs.
pub(crate) fn tracking(t: &Tensor) -> bool {
    t.tracks() && crate::autograd::grad_enabled()
}

/// `Some(g)` when the input tracks gradients.
pub(crate) fn when<T>(
    cond: bool,
    f: impl FnOnce() -> crate::Result<T>,
) -> crate::Result<Option<T>> {
    if cond {
        f().map(Some)
    } else {
        Ok(None)
    }
}
