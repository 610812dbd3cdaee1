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
    /// The backward's FLOPs and bytes (profiling only).
    cost: Option<crate::profile::Work>,
    /// Timed as one span; a checkpoint's node is not: the ops it reruns are timed each.
    timed: bool,
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

/// While alive, ops record again (the recompute inside a checkpointed backward, which
/// may run under an outer `no_grad`).
pub fn enable_grad() -> NoGradGuard {
    let prev = GRAD_ENABLED.with(|g| g.replace(true));
    NoGradGuard { prev }
}

/// Should an op with these inputs record itself?
pub fn needs_grad(inputs: &[&Tensor]) -> bool {
    grad_enabled() && inputs.iter().any(|t| t.tracks())
}

/// Record an op. `out` must be the freshly produced (untracked) result; the returned
/// tensor is the same value marked as tracked, with the node keyed by its id.
pub fn record(name: &'static str, inputs: &[&Tensor], out: Tensor, backward: BackwardFn) -> Tensor {
    record_node(name, inputs, out, backward, true)
}

fn record_node(
    name: &'static str,
    inputs: &[&Tensor],
    out: Tensor,
    backward: BackwardFn,
    timed: bool,
) -> Tensor {
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
        cost: crate::profile::node_cost(name),
        timed,
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

    /// Add `other` into `self`, a whole set at once (what [`backward_into`] does leaf by
    /// leaf as backward finalizes each gradient, without holding two sets).
    pub fn accumulate(&mut self, other: Grads) -> Result<()> {
        for (id, g) in other.map {
            self.add(id, g)?;
        }
        Ok(())
    }

    /// Sum one finished leaf gradient into the set: in place in the held buffer, the
    /// fresh one freed on return; moved in where the set holds none for the leaf.
    fn add(&mut self, id: TensorId, g: Tensor) -> Result<()> {
        let sum = match self.map.remove(&id) {
            Some(mine) => add_grads(mine, &g)?,
            None => g,
        };
        self.map.insert(id, sum);
        Ok(())
    }
}

/// Back-propagate from a scalar `loss`: replays the tape in reverse, consuming it, and
/// returns the gradients of every tracked leaf reached (summed where a leaf is used more
/// than once, e.g. T5's tied embedding).
pub fn backward(loss: &Tensor) -> Result<Grads> {
    let mut grads = Grads::default();
    backward_into(loss, &mut grads)?;
    Ok(grads)
}

/// [`backward`] summing into `grads` (gradient accumulation across micro-batches): each
/// leaf's gradient is added into the one `grads` holds as soon as backward has its last
/// contribution, and the fresh buffer is freed at once, so the peak holds one full
/// gradient set plus only the leaf gradients still in flight (a tied embedding's, from
/// its first use in backward to its last). Each leaf's contributions are summed first,
/// then added, so the result is bit for bit `accumulate` of a fresh set.
pub fn backward_into(loss: &Tensor, grads: &mut Grads) -> Result<()> {
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
    let seed = loss.full_on_same(loss.shape().clone(), loss.dtype(), 1.0)?;
    backward_from(loss, seed, grads)
}

/// Replay the whole tape in reverse from `root` with gradient `seed` (same shape), and
/// sum the gradients of the tracked leaves reached into `into`, each once it is final.
fn backward_from(root: &Tensor, seed: Tensor, into: &mut Grads) -> Result<()> {
    let nodes = TAPE.with(|t| std::mem::take(&mut *t.borrow_mut()));
    let mut grads: HashMap<TensorId, Tensor> = HashMap::new();
    grads.insert(root.id(), seed);
    let mut produced = std::collections::HashSet::new();
    // Uses of each tensor as some node's input that backward has yet to pass: a leaf's
    // gradient is final when none is left.
    let mut uses: HashMap<TensorId, usize> = HashMap::new();
    for node in nodes.iter() {
        produced.insert(node.out);
        for id in node.inputs.iter().flatten() {
            *uses.entry(*id).or_default() += 1;
        }
    }
    for node in nodes.into_iter().rev() {
        let g = grads.remove(&node.out);
        let in_grads = match g {
            Some(g) => {
                let in_grads = {
                    let _span = node
                        .timed
                        .then(|| crate::profile::Span::backward(node.name, node.device, node.cost));
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
                in_grads
            }
            // No gradient reached this node: it contributes none.
            None => vec![None; node.inputs.len()],
        };
        for (id, ig) in node.inputs.into_iter().zip(in_grads) {
            let Some(id) = id else { continue };
            if let Some(ig) = ig {
                let sum = match grads.remove(&id) {
                    Some(acc) => add_grads(acc, &ig)?,
                    None => ig,
                };
                grads.insert(id, sum);
            }
            let left = uses.get_mut(&id).map(|n| {
                *n -= 1;
                *n
            });
            if left == Some(0) && !produced.contains(&id) {
                if let Some(g) = grads.remove(&id) {
                    into.add(id, g)?;
                }
            }
        }
    }
    // A leaf no node reads (the root itself, when the loss is a leaf).
    for (id, g) in grads {
        if !produced.contains(&id) {
            into.add(id, g)?;
        }
    }
    Ok(())
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

/// Puts a set-aside tape back when dropped, so a failed recompute cannot leave the
/// outer tape missing.
struct TapeRestore(Option<Vec<Node>>);

impl Drop for TapeRestore {
    fn drop(&mut self) {
        if let Some(nodes) = self.0.take() {
            TAPE.with(|t| {
                let mut tape = t.borrow_mut();
                let inner = std::mem::replace(&mut *tape, nodes);
                drop(tape);
                drop(inner);
            });
        }
    }
}

/// Activation checkpointing (Chen et al. 2016, arXiv:1604.06174; torch.utils.checkpoint
/// with `use_reentrant=False` semantics): run `f` over `inputs` without recording, keep
/// only the inputs, and record one node whose backward reruns `f` with recording on over
/// detached copies of the inputs and back-propagates the output gradient through that
/// fresh graph. Memory between forward and backward is the inputs instead of every
/// activation inside `f`, for one extra forward of `f` in backward.
///
/// `params` are the tracked tensors `f` reads besides its inputs (the layer's weights):
/// they are the node's extra inputs, so their gradients from the recompute flow into
/// the outer backward like any op's input gradients. A tracked tensor that `f` reads but
/// that is listed in neither is an error at backward time, not a silently lost gradient.
/// `f` must be deterministic (dropout here is a hash of its seed, so it recomputes the
/// same masks).
pub fn checkpoint<F>(
    name: &'static str,
    inputs: &[&Tensor],
    params: &[Tensor],
    f: F,
) -> Result<Tensor>
where
    F: Fn(&[Tensor]) -> Result<Tensor> + 'static,
{
    let owned: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
    let mut all: Vec<&Tensor> = inputs.to_vec();
    all.extend(params.iter());
    if !needs_grad(&all) {
        return f(&owned);
    }
    let out = {
        let _g = no_grad();
        f(&owned)?
    };
    drop(owned);
    let saved: Vec<(Tensor, bool)> = inputs.iter().map(|t| (t.detach(), t.tracks())).collect();
    let params_saved: Vec<Tensor> = params.to_vec();
    let backward: BackwardFn = Box::new(move |g| {
        // The outer backward has taken its nodes off the tape already; set aside anything
        // else so the inner backward replays exactly the recompute.
        let outer = TAPE.with(|t| std::mem::take(&mut *t.borrow_mut()));
        let _restore = TapeRestore(Some(outer));
        let _grad = enable_grad();
        let vars: Vec<Tensor> = saved
            .iter()
            .map(|(t, tracks)| if *tracks { Tensor::var(t) } else { t.clone() })
            .collect();
        let y = {
            let _recompute = crate::profile::recompute();
            f(&vars)?
        };
        let n_in = vars.len() + params_saved.len();
        if !y.tracks() {
            return Ok(vec![None; n_in]);
        }
        if y.shape() != g.shape() {
            return Err(Error::Shape {
                op: "checkpoint (recomputed output)",
                expected: format!("{}", g.shape()),
                got: y.shape().clone(),
            });
        }
        let mut inner = Grads::default();
        backward_from(&y, g.clone(), &mut inner)?;
        drop(y);
        let mut res = Vec::with_capacity(n_in);
        for (v, (_, tracks)) in vars.iter().zip(&saved) {
            res.push(if *tracks { inner.remove(v) } else { None });
        }
        for p in &params_saved {
            res.push(if p.tracks() { inner.remove(p) } else { None });
        }
        if !inner.is_empty() {
            return Err(Error::msg(format!(
                "checkpoint ({name}): the recomputed function read {} tracked tensor(s) \
                 passed neither as inputs nor as parameters; their gradients would be lost",
                inner.len()
            )));
        }
        Ok(res)
    });
    Ok(record_node(name, &all, out, backward, false))
}
