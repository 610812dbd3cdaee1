//! A byte-level shadow of the autograd tape, for the VRAM planner.
//!
//! Why a simulation rather than a formula: the peak of a training step is set by the
//! order in which buffers are born and die (a Rust local lives to the end of its scope,
//! a saved tensor to its node's backward, a gradient until it is summed into another),
//! and a closed form drifts from the truth in exactly those corners. So the planner
//! replays the models' code paths here with sizes instead of data: every op allocates
//! what the real op allocates (outputs, saved statistics, transient scratch that goes
//! through a backend allocation), keeps what the real op saves, and its backward
//! allocates the real backward's gradients. The tape rules are the real ones: nodes run
//! in reverse, a node's saved buffers are released when it has run, a gradient is summed
//! in place when its buffer has no other holder and into a new buffer otherwise, and a
//! checkpointed block keeps its inputs and recomputes itself in backward on a tape of
//! its own. On the CPU this reproduces the tracker's count of a step; on CUDA it adds the
//! kernels' scratch buffers (see `Env`).

/// A value: one storage buffer with a reference count (handles, saved copies, gradient
/// map entries), as `Arc<Storage>` counts them.
pub type V = usize;

/// Where the step runs, which decides dtypes of statistics and backend scratch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Env {
    /// Bytes per activation / working-parameter element (4 f32, 2 f16).
    pub act: usize,
    /// Bytes per element of norm statistics, attention and cross-entropy lse (the CPU
    /// keeps them in the activation dtype, the CUDA kernels in f32).
    pub stat: usize,
    /// CUDA backend (adds the kernels' scratch buffers).
    pub cuda: bool,
}

impl Env {
    /// f32 bytes of the per-chunk partial sums a CUDA column reduction over `rows` keeps
    /// for `cols` columns (backend/cuda/reduce.rs `col_chunk`: at most 64 chunks).
    fn col_partials(&self, rows: usize, cols: usize) -> usize {
        if !self.cuda {
            return 0;
        }
        let chunk = rows.div_ceil(64).max(64).min(rows.max(1));
        4 * rows.div_ceil(chunk).max(1) * cols
    }

    /// Does a CUDA linear layer with a bias take the cuBLASLt epilogue path (bias added
    /// by the GEMM, bias gradient from the weight-gradient GEMM: no separate output or
    /// column partials)? Yes unless FUSEBOX_NO_LT=1 or a size outside the path's limits
    /// (backend/cuda/blaslt.rs); a shape cuBLASLt finds no algorithm for on the card
    /// cannot be known here.
    fn lt_bias(&self, rows: usize, fin: usize, fout: usize) -> bool {
        use crate::backend::cuda::blaslt;
        self.cuda && !blaslt::disabled() && blaslt::sizes_ok(&[rows, fout, fin])
    }

    /// Does CUDA attention with head dim `d` take the fused kernels (f16, d 32/64/128,
    /// not FUSEBOX_ATTN=naive)? Otherwise it materialises scores (see
    /// backend/cuda/attention.rs). A kernel build that failed at run time (NVRTC) also
    /// falls back, which no plan can know: the bench prints the kernels' origin.
    fn fused_attention(&self, d: usize) -> bool {
        use crate::backend::cuda::{attention_impl, AttnImpl};
        self.cuda
            && self.act == 2
            && matches!(d, 32 | 64 | 128)
            && attention_impl() != AttnImpl::Naive
    }
}

/// How a backward produces one input's gradient.
#[derive(Clone, Copy, Debug)]
pub enum G {
    /// A new buffer of this many bytes.
    New(usize),
    /// The output gradient itself (add, reshape, bias add).
    Pass,
    /// No gradient (input does not track).
    None,
    /// Another handle on input `.0`'s gradient buffer (a fused add whose two inputs get
    /// the same gradient); `.1` bytes of its own if input `.0` has none.
    Shared(usize, usize),
}

use std::collections::{HashMap, HashSet};

mod ops;

pub type Recompute = Box<dyn Fn(&mut Sim, &[V]) -> V>;

enum Bwd {
    /// Gradients per input, plus scratch bytes alive while they are computed.
    Plain { grads: Vec<G>, scratch: usize },
    /// A checkpointed block: rerun `f` over the inputs, back-propagate through it.
    Checkpoint {
        f: Recompute,
        inputs: Vec<V>,
        params: Vec<V>,
    },
}

struct Node {
    out: V,
    inputs: Vec<Option<V>>,
    saved: Vec<V>,
    bwd: Bwd,
}

/// The simulated allocator + tape.
pub struct Sim {
    pub env: Env,
    bytes: Vec<usize>,
    refs: Vec<u32>,
    tracks: Vec<bool>,
    tape: Vec<Node>,
    grad_enabled: bool,
    live: usize,
    peak: usize,
    /// The op that allocated each buffer, and the op now running.
    origin: Vec<&'static str>,
    cur: &'static str,
    /// Live bytes by origin when the (outermost) backward started.
    at_backward: Option<Vec<(&'static str, usize)>>,
}

impl Sim {
    pub fn new(env: Env) -> Sim {
        Sim {
            env,
            bytes: Vec::new(),
            refs: Vec::new(),
            tracks: Vec::new(),
            tape: Vec::new(),
            grad_enabled: true,
            live: 0,
            peak: 0,
            origin: Vec::new(),
            cur: "inputs",
            at_backward: None,
        }
    }

    /// `autograd::no_grad` for the whole step (inference): nothing is recorded or saved.
    pub fn set_grad_enabled(&mut self, on: bool) {
        self.grad_enabled = on;
    }
    pub fn grad_enabled(&self) -> bool {
        self.grad_enabled
    }

    pub fn live(&self) -> usize {
        self.live
    }
    pub fn peak(&self) -> usize {
        self.peak
    }
    /// Bytes alive when backward started, token inputs aside: what the forward saved.
    pub fn saved_at_end_of_forward(&self) -> usize {
        self.saved_by_op().iter().map(|x| x.1).sum()
    }
    /// The same, by the op that allocated each buffer, largest first.
    pub fn saved_by_op(&self) -> Vec<(&'static str, usize)> {
        self.at_backward.clone().unwrap_or_default()
    }

    fn push(&mut self, bytes: usize, counted: bool, tracks: bool) -> V {
        self.bytes.push(if counted { bytes } else { 0 });
        self.refs.push(1);
        self.tracks.push(tracks);
        self.origin.push(self.cur);
        self.live += if counted { bytes } else { 0 };
        self.peak = self.peak.max(self.live);
        self.bytes.len() - 1
    }

    /// A new buffer of `bytes`, held once by the caller.
    pub fn alloc(&mut self, bytes: usize) -> V {
        self.push(bytes, true, false)
    }

    /// A parameter: tracked, its bytes counted elsewhere (static memory).
    pub fn param(&mut self) -> V {
        self.push(0, false, true)
    }

    /// A frozen parameter: static like `param`, but untracked (no gradient).
    pub fn constant(&mut self) -> V {
        self.push(0, false, false)
    }

    /// Scratch that lives only while an op runs.
    pub fn scratch(&mut self, bytes: usize) {
        self.peak = self.peak.max(self.live + bytes);
    }

    /// Another handle on `v` (a clone, a reshape, a detach).
    pub fn hold(&mut self, v: V) -> V {
        self.refs[v] += 1;
        v
    }

    /// Drop one handle on `v`; the buffer is freed with its last handle.
    pub fn release(&mut self, v: V) {
        // A walk that releases a handle twice is a bug in walk.rs; never wrap around.
        debug_assert!(self.refs[v] > 0, "buffer {v} released once too often");
        if self.refs[v] == 0 {
            return;
        }
        self.refs[v] -= 1;
        if self.refs[v] == 0 {
            self.live -= self.bytes[v];
        }
    }

    pub fn tracks(&self, v: V) -> bool {
        self.tracks[v]
    }

    fn needs(&self, inputs: &[V]) -> bool {
        self.grad_enabled && inputs.iter().any(|&v| self.tracks[v])
    }

    /// An op: `out` bytes of output (plus `temp` scratch alive while it runs). When
    /// recording, `saved` are held by the node and `grads(i)` says how input `i`'s
    /// gradient is made. Returns the output, held once by the caller.
    pub fn op(
        &mut self,
        inputs: &[V],
        out: usize,
        temp: usize,
        saved: &[V],
        grads: &[G],
        bwd_scratch: usize,
    ) -> V {
        self.scratch(out + temp);
        let y = self.alloc(out);
        if self.needs(inputs) {
            self.record(y, inputs, saved, grads, bwd_scratch);
        }
        y
    }

    fn record(&mut self, y: V, inputs: &[V], saved: &[V], grads: &[G], scratch: usize) {
        self.tracks[y] = true;
        for &s in saved {
            self.hold(s);
        }
        let ins = inputs
            .iter()
            .map(|&v| self.tracks[v].then_some(v))
            .collect();
        let grads = inputs
            .iter()
            .zip(grads)
            .map(|(&v, &g)| if self.tracks[v] { g } else { G::None })
            .collect();
        self.tape.push(Node {
            out: y,
            inputs: ins,
            saved: saved.to_vec(),
            bwd: Bwd::Plain { grads, scratch },
        });
    }

    /// Like `op` for a result that shares its input's buffer (reshape): no bytes, the
    /// gradient passes through.
    pub fn alias(&mut self, x: V) -> V {
        self.hold(x)
    }

    /// `autograd::checkpoint`: run `f` without recording, keep the inputs, record one
    /// node (inputs + `params`) that reruns `f` in backward.
    pub fn checkpoint(&mut self, inputs: &[V], params: &[V], f: Recompute) -> V {
        if !self.grad_enabled {
            return f(self, inputs);
        }
        self.grad_enabled = false;
        let y = f(self, inputs);
        self.grad_enabled = true;
        self.tracks[y] = true;
        for &s in inputs {
            self.hold(s);
        }
        let all: Vec<V> = inputs.iter().chain(params).copied().collect();
        let ins = all.iter().map(|&v| self.tracks[v].then_some(v)).collect();
        self.tape.push(Node {
            out: y,
            inputs: ins,
            saved: inputs.to_vec(),
            bwd: Bwd::Checkpoint {
                f,
                inputs: inputs.to_vec(),
                params: params.to_vec(),
            },
        });
        y
    }

    /// `autograd::backward` from `root` (a one-element loss; its seed gradient is
    /// allocated here). Returns the leaf gradients `(leaf, gradient)`, held by the caller.
    pub fn backward(&mut self, root: V, root_bytes: usize) -> Vec<(V, V)> {
        let mut by: Vec<(&'static str, usize)> = Vec::new();
        for i in 0..self.bytes.len() {
            if self.refs[i] > 0 && self.bytes[i] > 0 && self.origin[i] != "inputs" {
                match by.iter_mut().find(|(o, _)| *o == self.origin[i]) {
                    Some(e) => e.1 += self.bytes[i],
                    None => by.push((self.origin[i], self.bytes[i])),
                }
            }
        }
        by.sort_by_key(|b| std::cmp::Reverse(b.1));
        self.at_backward = Some(by);
        self.cur = "gradients";
        let seed = self.alloc(root_bytes);
        self.backward_from(root, seed)
    }

    fn backward_from(&mut self, root: V, seed: V) -> Vec<(V, V)> {
        let nodes = std::mem::take(&mut self.tape);
        let mut grads: HashMap<V, V> = HashMap::new();
        grads.insert(root, seed);
        let produced: HashSet<V> = nodes.iter().map(|n| n.out).collect();
        for node in nodes.into_iter().rev() {
            let Some(g) = grads.remove(&node.out) else {
                for s in node.saved {
                    self.release(s);
                }
                continue;
            };
            let in_grads: Vec<Option<V>> = match &node.bwd {
                Bwd::Plain { grads: gs, scratch } => {
                    let news: usize = gs
                        .iter()
                        .map(|x| if let G::New(b) = x { *b } else { 0 })
                        .sum();
                    self.scratch(news + scratch);
                    let mut out: Vec<Option<V>> = gs
                        .iter()
                        .map(|x| match x {
                            G::New(b) => Some(self.alloc(*b)),
                            G::Pass => Some(self.hold(g)),
                            G::None | G::Shared(..) => None,
                        })
                        .collect();
                    for (i, x) in gs.iter().enumerate() {
                        if let G::Shared(j, b) = *x {
                            out[i] = Some(match out.get(j).copied().flatten() {
                                Some(v) => self.hold(v),
                                None => self.alloc(b),
                            });
                        }
                    }
                    out
                }
                Bwd::Checkpoint { f, inputs, params } => self.recompute(f, inputs, params, g),
            };
            for s in node.saved {
                self.release(s);
            }
            self.release(g);
            for (id, ig) in node.inputs.into_iter().zip(in_grads) {
                let Some(ig) = ig else { continue };
                let Some(id) = id else {
                    self.release(ig);
                    continue;
                };
                match grads.remove(&id) {
                    // Summed in place: the accumulator has no other holder.
                    Some(acc) if self.refs[acc] == 1 => {
                        self.release(ig);
                        grads.insert(id, acc);
                    }
                    Some(acc) => {
                        let sum = self.alloc(self.bytes[acc].max(self.bytes[ig]));
                        self.release(acc);
                        self.release(ig);
                        grads.insert(id, sum);
                    }
                    None => {
                        grads.insert(id, ig);
                    }
                }
            }
        }
        let mut leaves = Vec::new();
        for (id, g) in grads {
            if produced.contains(&id) {
                self.release(g);
            } else {
                leaves.push((id, g));
            }
        }
        leaves
    }

    /// The backward of a checkpoint node: the recompute recorded on a tape of its own
    /// (its inputs are new identities on the same buffers, as `Tensor::var` makes; the
    /// separate gradient map lets them keep their ids here), back-propagated from `g`.
    fn recompute(&mut self, f: &Recompute, inputs: &[V], params: &[V], g: V) -> Vec<Option<V>> {
        let outer = std::mem::take(&mut self.tape);
        let vars: Vec<V> = inputs.iter().map(|&x| self.hold(x)).collect();
        let y = f(self, &vars);
        let seed = self.hold(g);
        let mut leaves = self.backward_from(y, seed);
        self.release(y);
        let mut res = Vec::with_capacity(inputs.len() + params.len());
        for &x in inputs.iter().chain(params) {
            let pos = leaves.iter().position(|(id, _)| *id == x);
            res.push(pos.map(|i| leaves.swap_remove(i).1));
        }
        for v in vars {
            self.release(v);
        }
        for (_, g) in leaves {
            self.release(g);
        }
        self.tape = outer;
        res
    }
}
