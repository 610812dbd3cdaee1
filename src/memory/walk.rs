//! The models' training steps replayed on the byte simulator (`sim.rs`), op for op in
//! the order `models/` runs them: DistilBERT / BERT QA (`encoder.rs`, `distilbert.rs`,
//! `bert.rs`) and T5 (`t5.rs`, `t5/layers.rs`). Each function follows its model function
//! line by line, including when a Rust local drops (end of statement for temporaries,
//! end of scope for `let`s, reassignment for `x = f(x)`), because that decides which
//! buffers coexist. A change to a model's forward that adds, saves or keeps a tensor
//! must be mirrored here; `tests/budget.rs` checks the two against the tracker.

use super::sim::{Sim, V};
use crate::models::separate_qkv;

mod t5;
pub use t5::{t5_step, T5Spec};

/// Shapes and switches of an encoder QA model (DistilBERT or BERT).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EncoderSpec {
    pub vocab: usize,
    pub max_pos: usize,
    /// BERT's segment embeddings (0 = none, DistilBERT).
    pub type_vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    /// Dropout after the embeddings and the FFN (training with p > 0).
    pub hidden_dropout: bool,
    /// Dropout after the attention output projection (BERT only).
    pub attn_out_dropout: bool,
    /// DistilBERT's `qa_dropout` before the head.
    pub qa_dropout: bool,
    /// DistilBERT's `sinusoidal_pos_embds`: the position table is fixed (no gradient,
    /// no optimizer state), only its weights are held.
    pub frozen_positions: bool,
}

/// Parameters as simulated leaves, and their element count (static memory).
#[derive(Default)]
pub struct Params {
    /// Trainable elements (weights, gradients, optimizer state) and tensors.
    pub elems: usize,
    pub tensors: usize,
    /// Frozen elements: weights only.
    pub frozen: usize,
}

impl Params {
    fn p(&mut self, sim: &mut Sim, n: usize) -> V {
        self.elems += n;
        self.tensors += 1;
        sim.param()
    }
    /// A frozen parameter (ParamStore::freeze): no gradient flows into it.
    fn frozen(&mut self, sim: &mut Sim, n: usize) -> V {
        self.frozen += n;
        sim.constant()
    }
}

#[derive(Clone, Copy)]
struct Lin {
    w: V,
    b: Option<V>,
}

#[derive(Clone, Copy)]
struct EncLayerP {
    q: Lin,
    k: Lin,
    v: Lin,
    o: Lin,
    n1: (V, V),
    f1: Lin,
    f2: Lin,
    n2: (V, V),
}

impl EncLayerP {
    fn all(&self) -> Vec<V> {
        let mut v = Vec::new();
        for l in [self.q, self.k, self.v, self.o, self.f1, self.f2] {
            v.push(l.w);
            v.extend(l.b);
        }
        v.extend([self.n1.0, self.n1.1, self.n2.0, self.n2.1]);
        v
    }
}

fn lin(ps: &mut Params, sim: &mut Sim, fin: usize, fout: usize, bias: bool) -> Lin {
    Lin {
        w: ps.p(sim, fin * fout),
        b: bias.then(|| ps.p(sim, fout)),
    }
}

/// `nn::packed_qkv`: the three weights (and biases) concatenated, one linear of `rows`
/// from `fin` to 3 × `part`; the concatenations are its locals and end with it (the
/// linear's node keeps the weights backward needs).
fn packed_qkv(
    sim: &mut Sim,
    x: V,
    rows: usize,
    fin: usize,
    part: usize,
    w: [V; 3],
    bias: Option<[V; 3]>,
) -> V {
    let wc = sim.cat(&w, &[part * fin; 3]);
    let bc = bias.map(|b| sim.cat(&b, &[part; 3]));
    let qkv = sim.linear(x, rows, fin, 3 * part, wc, bc);
    sim.release(wc);
    if let Some(bc) = bc {
        sim.release(bc);
    }
    qkv
}

/// `EncoderLayer::forward`.
fn encoder_layer(
    sim: &mut Sim,
    s: &EncoderSpec,
    p: &EncLayerP,
    x: V,
    mask: V,
    b: usize,
    l: usize,
) -> V {
    let (d, r) = (s.hidden, b * l);
    let dims = [b, s.heads, l, l, d / s.heads];
    // Buffers the projection block's locals hold until it ends.
    let mut held = Vec::new();
    let ctx = if separate_qkv() {
        let q = sim.linear(x, r, d, d, p.q.w, p.q.b);
        let k = sim.linear(x, r, d, d, p.k.w, p.k.b);
        let v = sim.linear(x, r, d, d, p.v.w, p.v.b);
        held.extend([q, k, v]);
        sim.attention(q, k, v, Some(mask), None, dims)
    } else {
        let bias = match (p.q.b, p.k.b, p.v.b) {
            (Some(bq), Some(bk), Some(bv)) => Some([bq, bk, bv]),
            _ => None,
        };
        let qkv = packed_qkv(sim, x, r, d, d, [p.q.w, p.k.w, p.v.w], bias);
        held.push(qkv);
        sim.attention_qkv(qkv, Some(mask), None, dims)
    };
    // The projections' locals end with their block (EncoderLayer::forward), which only
    // shows without a tape to keep them (inference).
    for t in held {
        sim.release(t);
    }
    let a = sim.linear(ctx, r, d, d, p.o.w, p.o.b);
    let (n1, n2) = (p.n1, p.n2);
    let h = sim.dropout_add_layer_norm(a, x, r, d, n1.0, n1.1, s.attn_out_dropout);
    // ffn_in's output is a temporary of the act_linear statement.
    let f = sim.linear(h, r, d, s.intermediate, p.f1.w, p.f1.b);
    let f1 = sim.act_linear(f, r, s.intermediate, d, p.f2.w, p.f2.b);
    sim.release(f);
    let out = sim.dropout_add_layer_norm(f1, h, r, d, n2.0, n2.1, s.hidden_dropout);
    for t in [ctx, a, h, f1] {
        sim.release(t);
    }
    out
}

/// One training micro-step of a QA encoder (forward, loss, backward) at batch `b` ×
/// length `l`. Returns the parameter count; the simulator holds the dynamic peak.
pub fn qa_step(sim: &mut Sim, s: &EncoderSpec, b: usize, l: usize, checkpointing: bool) -> Params {
    let mut ps = Params::default();
    let d = s.hidden;
    let word = ps.p(sim, s.vocab * d);
    let pos_t = if s.frozen_positions {
        ps.frozen(sim, s.max_pos * d)
    } else {
        ps.p(sim, s.max_pos * d)
    };
    let tt_t = (s.type_vocab > 0).then(|| ps.p(sim, s.type_vocab * d));
    let emb_n = (ps.p(sim, d), ps.p(sim, d));
    let layers: Vec<EncLayerP> = (0..s.layers)
        .map(|_| EncLayerP {
            q: lin(&mut ps, sim, d, d, true),
            k: lin(&mut ps, sim, d, d, true),
            v: lin(&mut ps, sim, d, d, true),
            o: lin(&mut ps, sim, d, d, true),
            n1: (ps.p(sim, d), ps.p(sim, d)),
            f1: lin(&mut ps, sim, d, s.intermediate, true),
            f2: lin(&mut ps, sim, s.intermediate, d, true),
            n2: (ps.p(sim, d), ps.p(sim, d)),
        })
        .collect();
    let head = lin(&mut ps, sim, d, 2, true);

    let (r, n) = (b * l, b * l * d);
    // The batch (QaBatch: ids, mask, token types for BERT, positions).
    let ids = sim.ints(r);
    let mask = sim.ints(r);
    let tt_ids = tt_t.map(|_| sim.ints(r));
    let (sp, ep) = (sim.ints(b), sim.ints(b));

    // encode(): position ids, the word embedding (padding_idx: its backward skips the pad
    // row, no table copies), + positions (+ token types), LN, dropout.
    let pos = sim.ints(r);
    let we = sim.embedding(word, ids, r, s.vocab, d);
    let pe = sim.embedding(pos_t, pos, r, s.max_pos, d);
    let mut x0 = sim.add(we, pe, n);
    sim.release(we);
    sim.release(pe);
    if let (Some(tt), Some(tt_ids)) = (tt_t, tt_ids) {
        let te = sim.embedding(tt, tt_ids, r, s.type_vocab, d);
        let x1 = sim.add(x0, te, n);
        sim.release(te);
        sim.release(x0);
        x0 = x1;
    }
    let y = sim.layer_norm(x0, r, d, emb_n.0, emb_n.1);
    let mut x = sim.dropout(y, n, s.hidden_dropout);
    sim.release(y);
    for lp in &layers {
        let next = if checkpointing {
            let (spec, lp2) = (*s, *lp);
            sim.checkpoint(
                &[x, mask],
                &lp.all(),
                Box::new(move |sim, t| encoder_layer(sim, &spec, &lp2, t[0], t[1], b, l)),
            )
        } else {
            encoder_layer(sim, s, lp, x, mask, b, l)
        };
        sim.release(x);
        x = next;
    }
    sim.release(x0);
    sim.release(pos);

    // QA head: (DistilBERT's qa_dropout), linear to 2, narrow start / end.
    let h = if tt_t.is_none() {
        sim.dropout(x, n, s.qa_dropout)
    } else {
        sim.hold(x)
    };
    let logits = sim.linear(h, r, d, 2, head.w, head.b);
    let start = sim.narrow(logits, 2 * r, r);
    let end = sim.narrow(logits, 2 * r, r);
    sim.release(logits);
    sim.release(h);
    sim.release(x);
    if !sim.grad_enabled() {
        // Inference (`forward` under no_grad): the logits are the result, no loss.
        for t in [start, end, ids, mask, sp, ep].into_iter().chain(tt_ids) {
            sim.release(t);
        }
        return ps;
    }

    // qa_loss: each position vector clamped to [0, S] on the device (a temporary the
    // cross-entropy keeps as its targets), two cross-entropies, (ls + le) / 2; the loop
    // scales it.
    let spc = sim.clamp_i32(b);
    let ls = sim.cross_entropy(start, spc, b, l);
    sim.release(spc);
    let epc = sim.clamp_i32(b);
    let le = sim.cross_entropy(end, epc, b, l);
    sim.release(epc);
    let sum = sim.add(ls, le, 1);
    let loss = sim.scale(sum, 1);
    for t in [ls, le, sum, start, end] {
        sim.release(t);
    }
    let scaled = sim.scale(loss, 1);
    let loss_bytes = if sim.env.cuda { 4 } else { sim.env.act };
    let grads = sim.backward(scaled, loss_bytes);
    let _ = grads;
    for t in [scaled, loss, ids, mask, sp, ep] {
        sim.release(t);
    }
    if let Some(t) = tt_ids {
        sim.release(t);
    }
    ps
}
