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

/// The ops the models use, each allocating, saving and differentiating as the real op
/// in `ops/` does. Sizes are in elements unless named `bytes`.
impl Sim {
    fn es(&self) -> usize {
        self.env.act
    }

    /// An untracked integer input (token ids, masks, labels): 4 bytes per element.
    pub fn ints(&mut self, n: usize) -> V {
        self.cur = "inputs";
        self.alloc(4 * n)
    }

    /// `x [rows, in] · Wᵀ + b`: with a bias the GEMM result and the biased copy coexist
    /// for a moment; saves x and W.
    pub fn linear(&mut self, x: V, rows: usize, fin: usize, fout: usize, w: V, b: Option<V>) -> V {
        self.cur = "linear";
        let es = self.es();
        let out = rows * fout * es;
        let fused = b.is_some() && self.env.lt_bias(rows, fin, fout);
        let temp = if b.is_some() && !fused { out } else { 0 };
        let mut ins = vec![x, w];
        let mut gs = vec![G::New(rows * fin * es), G::New(fout * fin * es)];
        let mut scratch = 0;
        if let Some(b) = b {
            ins.push(b);
            gs.push(G::New(fout * es));
            if !fused {
                scratch = self.env.col_partials(rows, fout);
            }
        }
        self.op(&ins, out, temp, &[x, w], &gs, scratch)
    }

    /// `Tensor::act_linear`: `act(x)` is a forward transient (and recomputed as a
    /// backward transient beside the input gradient's first half, `dh`); saves only `x`.
    #[allow(clippy::too_many_arguments)]
    pub fn act_linear(
        &mut self,
        x: V,
        rows: usize,
        fin: usize,
        fout: usize,
        w: V,
        b: Option<V>,
    ) -> V {
        self.cur = "act_linear";
        let es = self.es();
        let out = rows * fout * es;
        let h = rows * fin * es;
        let fused = b.is_some() && self.env.lt_bias(rows, fin, fout);
        let temp = h + if b.is_some() && !fused { out } else { 0 };
        let mut ins = vec![x, w];
        let mut gs = vec![G::New(h), G::New(fout * fin * es)];
        let mut scratch = h;
        if let Some(b) = b {
            ins.push(b);
            gs.push(G::New(fout * es));
            if !fused {
                scratch += self.env.col_partials(rows, fout);
            }
        }
        self.op(&ins, out, temp, &[x, w], &gs, scratch)
    }

    /// The attention op: output and lse (saved, with q, k, v and the output); CUDA adds
    /// the kernels' scratch (fused: dq accumulator, delta, f32 bias and its gradient;
    /// naive: the score matrices).
    pub fn attention(
        &mut self,
        q: V,
        k: V,
        v: V,
        mask: Option<V>,
        bias: Option<V>,
        dims: [usize; 5],
    ) -> V {
        let [b, h, lq, lk, d] = dims;
        let es = self.es();
        let gs = vec![
            G::New(b * lq * h * d * es),
            G::New(b * lk * h * d * es),
            G::New(b * lk * h * d * es),
        ];
        self.attention_node(&[q, k, v], gs, mask, bias, dims, false)
    }

    /// `Tensor::attention_qkv` over one packed `[b, l, 3, h, d]` projection: saves it
    /// once, and its gradient is one packed buffer. The CUDA naive path (no fused
    /// kernel) copies q, k, v out (3 slices, forward and backward) and concatenates dq,
    /// dk, dv.
    pub fn attention_qkv(
        &mut self,
        qkv: V,
        mask: Option<V>,
        bias: Option<V>,
        dims: [usize; 5],
    ) -> V {
        let [b, h, l, _, d] = dims;
        let es = self.es();
        let part = b * l * h * d * es;
        let gs = vec![G::New(3 * part)];
        let copied = self.env.cuda && !self.env.fused_attention(d);
        self.attention_node(&[qkv], gs, mask, bias, dims, copied)
    }

    /// The shared body of both attention ops. `packed_copies`: the CUDA naive path of
    /// the packed op, which copies q, k, v out of the packed input (forward and
    /// backward) and concatenates dq, dk, dv into the packed gradient at the end.
    fn attention_node(
        &mut self,
        qkv: &[V],
        mut gs: Vec<G>,
        mask: Option<V>,
        bias: Option<V>,
        [b, h, lq, lk, d]: [usize; 5],
        packed_copies: bool,
    ) -> V {
        self.cur = "attention";
        let es = self.es();
        let out = b * lq * h * d * es;
        let lse = b * h * lq * self.env.stat;
        let scores = b * h * lq * lk;
        let bias_n = if bias.is_some() { h * lq * lk } else { 0 };
        // Bytes of the q, k, v gradients the node returns (before the bias's is added).
        let g_qkv: usize = gs
            .iter()
            .map(|g| if let G::New(n) = g { *n } else { 0 })
            .sum();
        let (fwd_scratch, bwd_scratch) = if !self.env.cuda {
            (0, 0)
        } else if self.env.fused_attention(d) {
            (4 * bias_n, 8 * bias_n + 4 * b * h * lq + 4 * b * lq * h * d)
        } else {
            // backend/cuda/attention.rs, in order: dq, dk, dv (for the packed op beside
            // the q, k, v copies), the f32 bias gradient, then the scores (f32 s and dP,
            // ds and p in the dtype); the scores go before the f16 cast of the bias
            // gradient and before the packed op concatenates dq, dk, dv. The node's
            // gradients (`news` below) count from the start, so the scratch is the
            // highest of those phases less them.
            let held = if packed_copies { 2 * g_qkv } else { g_qkv };
            let scores_phase = held + 4 * bias_n + scores * (8 + 2 * es);
            let cast_phase = if es == 2 { held + 6 * bias_n } else { 0 };
            let cat_phase = if packed_copies {
                held + g_qkv + es * bias_n
            } else {
                0
            };
            let news = g_qkv + es * bias_n;
            let fwd_copies = if packed_copies { g_qkv } else { 0 };
            (
                scores * (4 + es) + fwd_copies,
                scores_phase
                    .max(cast_phase)
                    .max(cat_phase)
                    .saturating_sub(news),
            )
        };
        self.scratch(out + lse + fwd_scratch);
        let y = self.alloc(out);
        let l = self.alloc(lse);
        let mut ins = qkv.to_vec();
        if let Some(bias) = bias {
            ins.push(bias);
            gs.push(G::New(bias_n * es));
        }
        if self.needs(&ins) {
            let mut saved = qkv.to_vec();
            saved.extend([y, l]);
            saved.extend(mask);
            saved.extend(bias);
            self.record(y, &ins, &saved, &gs, bwd_scratch);
        }
        self.release(l);
        y
    }

    /// LayerNorm: output plus mean and rstd (saved with x).
    pub fn layer_norm(&mut self, x: V, rows: usize, cols: usize, g: V, b: V) -> V {
        self.cur = "layer_norm";
        let es = self.es();
        let st = rows * self.env.stat;
        self.scratch(rows * cols * es + 2 * st);
        let y = self.alloc(rows * cols * es);
        let (mean, rstd) = (self.alloc(st), self.alloc(st));
        if self.needs(&[x, g, b]) {
            let gs = [
                G::New(rows * cols * es),
                G::New(cols * es),
                G::New(cols * es),
            ];
            let scratch = 2 * self.env.col_partials(rows, cols);
            self.record(y, &[x, g, b], &[x, g, mean, rstd], &gs, scratch);
        }
        self.release(mean);
        self.release(rstd);
        y
    }

    /// `LayerNorm(dropout(a) + res)` as one op (Tensor::dropout_add_layer_norm): the sum
    /// s (saved, LayerNorm's input), y and the statistics. On the CPU it runs as
    /// dropout, add, layer_norm, so dropout's output lives until the sum exists.
    #[allow(clippy::too_many_arguments)]
    pub fn dropout_add_layer_norm(
        &mut self,
        a: V,
        res: V,
        rows: usize,
        cols: usize,
        g: V,
        b: V,
        dropout: bool,
    ) -> V {
        self.cur = "dropout_add_layer_norm";
        let es = self.es();
        let (n, st) = (rows * cols * es, rows * self.env.stat);
        if dropout && !self.env.cuda {
            self.scratch(2 * n);
        }
        let s = self.alloc(n);
        let y = self.alloc(n);
        let (mean, rstd) = (self.alloc(st), self.alloc(st));
        if self.needs(&[a, res, g, b]) {
            let da = if dropout { G::New(n) } else { G::Shared(1, n) };
            let gs = [da, G::New(n), G::New(cols * es), G::New(cols * es)];
            let scratch = 2 * self.env.col_partials(rows, cols);
            self.record(y, &[a, res, g, b], &[s, g, mean, rstd], &gs, scratch);
        }
        for t in [s, mean, rstd] {
            self.release(t);
        }
        y
    }

    /// RMSNorm: output plus rstd (saved with x).
    pub fn rms_norm(&mut self, x: V, rows: usize, cols: usize, g: V) -> V {
        self.cur = "rms_norm";
        let es = self.es();
        let st = rows * self.env.stat;
        self.scratch(rows * cols * es + st);
        let y = self.alloc(rows * cols * es);
        let rstd = self.alloc(st);
        if self.needs(&[x, g]) {
            let gs = [G::New(rows * cols * es), G::New(cols * es)];
            let scratch = self.env.col_partials(rows, cols);
            self.record(y, &[x, g], &[x, g, rstd], &gs, scratch);
        }
        self.release(rstd);
        y
    }

    /// GELU / ReLU: saves its input.
    pub fn unary(&mut self, x: V, n: usize) -> V {
        self.cur = "unary";
        let b = n * self.es();
        self.op(&[x], b, 0, &[x], &[G::New(b)], 0)
    }

    /// `act(gate) ⊙ lin`: saves both.
    pub fn gated(&mut self, gate: V, lin: V, n: usize) -> V {
        self.cur = "gated";
        let b = n * self.es();
        self.op(&[gate, lin], b, 0, &[gate, lin], &[G::New(b), G::New(b)], 0)
    }

    /// Dropout saves nothing (the mask is a hash of the seed); p = 0 is the input itself.
    pub fn dropout(&mut self, x: V, n: usize, on: bool) -> V {
        self.cur = "dropout";
        if !on {
            return self.hold(x);
        }
        let b = n * self.es();
        self.op(&[x], b, 0, &[], &[G::New(b)], 0)
    }

    /// `a + b`: both inputs get the output gradient itself.
    pub fn add(&mut self, a: V, b: V, n: usize) -> V {
        self.cur = "add";
        let bytes = n * self.es();
        self.op(&[a, b], bytes, 0, &[], &[G::Pass, G::Pass], 0)
    }

    /// Switch the activation element size (T5's f32 residual stream around f16
    /// sublayers); returns the previous one.
    pub fn set_act(&mut self, es: usize) -> usize {
        std::mem::replace(&mut self.env.act, es)
    }

    /// `to_dtype` of `n` elements from `from` to `to` bytes each: saves nothing, casts
    /// the gradient back.
    pub fn to_dtype(&mut self, x: V, n: usize, from: usize, to: usize) -> V {
        self.cur = "to_dtype";
        self.op(&[x], n * to, 0, &[], &[G::New(n * from)], 0)
    }

    /// `linear_into` (t5/fp16.rs): `x · Wᵀ` in the activation dtype with the product
    /// stored with `out_es` bytes per element; backward casts the gradient to the
    /// activation dtype (held while it runs) for the two GEMMs.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_into(
        &mut self,
        x: V,
        rows: usize,
        fin: usize,
        fout: usize,
        w: V,
        out_es: usize,
    ) -> V {
        self.cur = "linear";
        let es = self.es();
        if out_es == es {
            return self.linear(x, rows, fin, fout, w, None);
        }
        let gs = [G::New(rows * fin * es), G::New(fout * fin * es)];
        self.op(
            &[x, w],
            rows * fout * out_es,
            0,
            &[x, w],
            &gs,
            rows * fout * es,
        )
    }

    /// `x * s` (affine): saves nothing.
    pub fn scale(&mut self, x: V, n: usize) -> V {
        self.cur = "scale";
        let b = n * self.es();
        self.op(&[x], b, 0, &[], &[G::New(b)], 0)
    }

    /// A copying permute; its backward permutes back.
    pub fn permute(&mut self, x: V, n: usize) -> V {
        self.cur = "permute";
        let b = n * self.es();
        self.op(&[x], b, 0, &[], &[G::New(b)], 0)
    }

    /// `narrow` copies `part` of `full` elements; backward pads with zero blocks and
    /// concatenates them into a full-size gradient.
    pub fn narrow(&mut self, x: V, full: usize, part: usize) -> V {
        self.cur = "narrow";
        let es = self.es();
        let scratch = (full - part) * es;
        self.op(&[x], part * es, 0, &[], &[G::New(full * es)], scratch)
    }

    /// `cat` of parts of `sizes` elements; backward narrows the gradient per part.
    pub fn cat(&mut self, parts: &[V], sizes: &[usize]) -> V {
        self.cur = "cat";
        let es = self.es();
        let total: usize = sizes.iter().sum();
        let gs: Vec<G> = sizes.iter().map(|n| G::New(n * es)).collect();
        self.op(parts, total * es, 0, &[], &gs, 0)
    }

    /// Embedding lookup of `n` ids into a `[rows, cols]` table; backward scatters into a
    /// table-sized gradient (on CUDA through an f32 accumulator).
    pub fn embedding(&mut self, table: V, ids: V, n: usize, rows: usize, cols: usize) -> V {
        self.cur = "embedding";
        let es = self.es();
        let scratch = if self.env.cuda && es != 4 {
            rows * cols * 4
        } else {
            0
        };
        let gs = [G::New(rows * cols * es), G::None];
        self.op(&[table, ids], n * cols * es, 0, &[ids], &gs, scratch)
    }

    /// Mean cross-entropy of `[rows, cols]` logits: a one-element loss and the per-row
    /// lse (saved with the logits); backward is one logits-sized gradient.
    /// `clamp_i32` of `n` I32 values: a new buffer (QA positions clamped on the device).
    pub fn clamp_i32(&mut self, n: usize) -> V {
        self.cur = "clamp_i32";
        self.alloc(4 * n)
    }

    pub fn cross_entropy(&mut self, x: V, t: V, rows: usize, cols: usize) -> V {
        self.cur = "cross_entropy";
        let es = self.es();
        let st = self.env.stat;
        // CUDA: f32 loss, and a count, per-row losses and an error flag while it runs;
        // its backward zeroes a per-row buffer.
        let (loss_b, temp, bwd) = if self.env.cuda {
            (4, 8 + 4 * rows, 4 * rows)
        } else {
            (es, 0, 0)
        };
        self.scratch(loss_b + rows * st + temp);
        let y = self.alloc(loss_b);
        let lse = self.alloc(rows * st);
        if self.needs(&[x]) {
            let gs = [G::New(rows * cols * es), G::None];
            self.record(y, &[x, t], &[x, t, lse], &gs, bwd);
        }
        self.release(lse);
        y
    }
}
