//! The planner's copies of the ops the models call: each allocates, saves and
//! differentiates as the real op in `ops/` does (split from the tape simulation in
//! `sim.rs`, which they drive).

use super::{Sim, G, V};

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
