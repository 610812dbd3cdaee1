//! The tape: ops record a backward closure when an input tracks gradients; `backward`
//! replays them in reverse and returns the gradients of the leaves.
//!
//! The tape is thread-local, so models need no tape argument and `no_grad` is a guard.
//! Each node's closure owns the tensors it saved and is consumed when it runs, so saved
//! activations are released as backward passes them (peak memory falls during backward,
//! as in PyTorch). Nodes whose output received no gradient are dropped unrun.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::tensor::{Tensor, TensorId};

/// Computes the gradients of an op's inputs from the gradient of its output. One entry per
/// input, `None` where the input does not track gradients.
pub type BackwardFn = Box<dyn FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>>>;

struct Node {
    name: &'static str,
    device: crate::shape::Device,
    out: TensorId,
    inputs: Vec<Option<TensorId>>,
    backward: BackwardFn,
}

thread_local! {
    static TAPE: RefCell<Vec<Node>> = const { RefCell::new(Vec::new()) };
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Is recording on for this thread?
pub fn grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// While alive, ops record nothing (inference, evaluation).
pub struct NoGradGuard {
    prev: bool,
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.prev));
    }
}

/// Turn recording off until the guard drops.
pub fn no_grad() -> NoGradGuard {
    let prev = GRAD_ENABLED.with(|g| g.replace(false));
    NoGradGuard { prev }
}

/// Should an op with these inputs record itself?
pub fn needs_grad(inputs: &[&Tensor]) -> bool {
    grad_enabled() && inputs.iter().any(|t| t.tracks())
}

/// Record an op. `out` must be the freshly produced (untracked) result; the returned
/// tensor is the same value marked as tracked, with the node keyed by its id.
pub fn record(name: &'static str, inputs: &[&Tensor], out: Tensor, backward: BackwardFn) -> Tensor {
    if !needs_grad(inputs) {
        return out;
    }
    let tracked = out.share(out.shape().clone(), true);
    let node = Node {
        name,
        device: tracked.device(),
        out: tracked.id(),
        inputs: inputs
            .iter()
            .map(|t| if t.tracks() { Some(t.id()) } else { None })
            .collect(),
        backward,
    };
    TAPE.with(|t| t.borrow_mut().push(node));
    tracked
}

/// Number of nodes on this thread's tape (for tests and leak checks).
pub fn tape_len() -> usize {
    TAPE.with(|t| t.borrow().len())
}

/// Drop every recorded node (e.g. after a forward whose loss is not needed).
pub fn clear_tape() {
    let nodes = TAPE.with(|t| std::mem::take(&mut *t.borrow_mut()));
    drop(nodes);
}

/// Gradients of leaves, keyed by tensor identity.
#[derive(Default)]
pub struct Grads {
    map: HashMap<TensorId, Tensor>,
}

impl Grads {
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.map.get(&t.id())
    }
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.map.remove(&t.id())
    }
    pub fn insert(&mut self, t: &Tensor, g: Tensor) {
        self.map.insert(t.id(), g);
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&TensorId, &Tensor)> {
        self.map.iter()
    }

    /// Add `other` into `self` (gradient accumulation across micro-batches). Gradients
    /// are summed in place in the first micro-batch's buffers.
    pub fn accumulate(&mut self, other: Grads) -> Result<()> {
        for (id, g) in other.map {
            match self.map.remove(&id) {
                Some(mine) => {
                    self.map.insert(id, add_grads(mine, &g)?);
                }
                None => {
                    self.map.insert(id, g);
                }
            }
        }
        Ok(())
    }
}

/// Back-propagate from a scalar `loss`: replays the tape in reverse, consuming it, and
/// returns the gradients of every tracked leaf reached (summed where a leaf is used more
/// than once, e.g. T5's tied embedding).
pub fn backward(loss: &Tensor) -> Result<Grads> {
    if loss.elem_count() != 1 {
        return Err(Error::Shape {
            op: "backward",
            expected: "a one-element loss".into(),
            got: loss.shape().clone(),
        });
    }
    if !loss.tracks() {
        clear_tape();
        return Err(Error::msg(
            "backward: the loss does not depend on any tensor that tracks gradients",
        ));
    }
    let nodes = TAPE.with(|t| std::mem::take(&mut *t.borrow_mut()));
    let mut grads: HashMap<TensorId, Tensor> = HashMap::new();
    grads.insert(
        loss.id(),
        loss.full_on_same(loss.shape().clone(), loss.dtype(), 1.0)?,
    );
    let mut produced = std::collections::HashSet::new();
    for node in nodes.iter() {
        produced.insert(node.out);
    }
    for node in nodes.into_iter().rev() {
        let Some(g) = grads.remove(&node.out) else {
            continue;
        };
        let in_grads = {
            let _span = crate::profile::Span::backward(node.name, node.device);
            (node.backward)(&g)?
        };
        drop(g);
        if in_grads.len() != node.inputs.len() {
            return Err(Error::msg(format!(
                "backward: an op returned {} gradients for {} inputs",
                in_grads.len(),
                node.inputs.len()
            )));
        }
        for (id, ig) in node.inputs.into_iter().zip(in_grads) {
            let (Some(id), Some(ig)) = (id, ig) else {
                continue;
            };
            match grads.remove(&id) {
                Some(acc) => {
                    grads.insert(id, add_grads(acc, &ig)?);
                }
                None => {
                    grads.insert(id, ig);
                }
            }
        }
    }
    // Whatever remains that no node produced is a leaf gradient.
    grads.retain(|id, _| !produced.contains(id));
    Ok(Grads { map: grads })
}

/// `acc + g`, in place when `acc` owns its buffer alone (the usual case), else into a
/// new buffer: an op may hand the same gradient to two inputs (e.g. `a + b`), and an
/// in-place sum would then change both.
fn add_grads(acc: Tensor, g: &Tensor) -> Result<Tensor> {
    if acc.is_exclusive() {
        {
            let src = g.storage();
            acc.storage_mut().axpy_(&src, 1.0)?;
        }
        Ok(acc)
    } else {
        let s = acc
            .storage()
            .binary(&g.storage(), crate::backend::BinaryOp::Add)?;
        Ok(Tensor::wrap(s, acc.shape().clone(), false))
    }
}
