//! T5's training step on the byte simulator (`t5.rs`, `t5/layers.rs`, `t5/fp16.rs`), op
//! for op, with the same drop-order rules as the encoder walk in `walk.rs`.

use super::{packed_qkv, Params};
use crate::memory::sim::{Sim, V};
use crate::models::separate_qkv;

/// Shapes and switches of a T5 model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct T5Spec {
    pub vocab: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub heads: usize,
    pub d_ff: usize,
    pub enc_layers: usize,
    pub dec_layers: usize,
    pub buckets: usize,
    pub gated: bool,
    pub dropout: bool,
    pub tied: bool,
    /// T5 v1.0's d_model^-0.5 rescale of the decoder output.
    pub scale_out: bool,
    /// In fp16, the residual stream stays f32 (`Fp16Safety::Fp32Residual`, t5/fp16.rs).
    pub f32_residual: bool,
}

impl T5Spec {
    /// Bytes per element of the residual stream for activations of `act` bytes.
    fn res(&self, act: usize) -> usize {
        if self.f32_residual && act == 2 {
            4
        } else {
            act
        }
    }
}

/// `fp16::pre_norm`: the RMSNorm of the residual `h` (`res` bytes per element) in its
/// dtype, emitted in the activation dtype; the plain `rms_norm` when they agree.
fn pre_norm(sim: &mut Sim, h: V, rows: usize, dm: usize, w: V, res: usize) -> V {
    let act = sim.env.act;
    if res == act {
        return sim.rms_norm(h, rows, dm, w);
    }
    let gw = sim.to_dtype(w, dm, act, res);
    sim.set_act(res);
    let y = sim.rms_norm(h, rows, dm, gw);
    sim.set_act(act);
    let n = sim.to_dtype(y, rows * dm, res, act);
    sim.release(y);
    sim.release(gw);
    n
}

#[derive(Clone, Copy)]
struct AttnP {
    q: V,
    k: V,
    v: V,
    o: V,
}

#[derive(Clone, Copy)]
struct BlockP {
    self_attn: AttnP,
    self_norm: V,
    cross: Option<(AttnP, V)>,
    /// wi (or wi_0), wi_1 when gated, wo.
    wi: V,
    wi_1: Option<V>,
    wo: V,
    ff_norm: V,
}

impl BlockP {
    fn all(&self) -> Vec<V> {
        let a = |a: &AttnP| [a.q, a.k, a.v, a.o];
        let mut v: Vec<V> = a(&self.self_attn).to_vec();
        v.push(self.self_norm);
        if let Some((c, n)) = &self.cross {
            v.extend(a(c));
            v.push(*n);
        }
        v.push(self.wi);
        v.extend(self.wi_1);
        v.extend([self.wo, self.ff_norm]);
        v
    }
}

/// What a T5 block reads besides its hidden states.
#[derive(Clone, Copy)]
struct BlockCtx {
    b: usize,
    l: usize,
    mask: Option<V>,
    bias: V,
    /// Encoder states, their mask and length (decoder blocks).
    cross: Option<(V, Option<V>, usize)>,
}

/// `T5Attention::forward` of `x [b, lq]` over `kv [b, lk]`.
#[allow(clippy::too_many_arguments)]
fn t5_attention(
    sim: &mut Sim,
    s: &T5Spec,
    a: &AttnP,
    x: V,
    kv: V,
    mask: Option<V>,
    bias: Option<V>,
    b: usize,
    lq: usize,
    lk: usize,
) -> V {
    let inner = s.heads * s.d_kv;
    let dims = [b, s.heads, lq, lk, s.d_kv];
    let mut held = Vec::new();
    let ctx = if x == kv && !separate_qkv() {
        // T5Attention::self_attention: one GEMM over [Wq; Wk; Wv], packed attention.
        let qkv = packed_qkv(sim, x, b * lq, s.d_model, inner, [a.q, a.k, a.v], None);
        held.push(qkv);
        sim.attention_qkv(qkv, mask, bias, dims)
    } else {
        let k = sim.linear(kv, b * lk, s.d_model, inner, a.k, None);
        let v = sim.linear(kv, b * lk, s.d_model, inner, a.v, None);
        let q = sim.linear(x, b * lq, s.d_model, inner, a.q, None);
        held.extend([q, k, v]);
        sim.attention(q, k, v, mask, bias, dims)
    };
    let res = s.res(sim.env.act);
    let o = sim.linear_into(ctx, b * lq, inner, s.d_model, a.o, res);
    for t in [ctx].into_iter().chain(held) {
        sim.release(t);
    }
    o
}

/// `T5Block::forward`: sublayers in the activation dtype, the residual stream in
/// `res` bytes per element.
fn t5_block(sim: &mut Sim, s: &T5Spec, p: &BlockP, h: V, c: &BlockCtx) -> V {
    let (r, dm) = (c.b * c.l, s.d_model);
    let n = r * dm;
    let act = sim.env.act;
    let res = s.res(act);
    let nx = pre_norm(sim, h, r, dm, p.self_norm, res);
    let a = t5_attention(
        sim,
        s,
        &p.self_attn,
        nx,
        nx,
        c.mask,
        Some(c.bias),
        c.b,
        c.l,
        c.l,
    );
    sim.set_act(res);
    let da = sim.dropout(a, n, s.dropout);
    let mut h1 = sim.add(h, da, n);
    sim.set_act(act);
    sim.release(da);
    if let (Some((attn, norm)), Some((enc, emask, ls))) = (&p.cross, c.cross) {
        let n2 = pre_norm(sim, h1, r, dm, *norm, res);
        let a2 = t5_attention(sim, s, attn, n2, enc, emask, None, c.b, c.l, ls);
        sim.set_act(res);
        let d2 = sim.dropout(a2, n, s.dropout);
        let h2 = sim.add(h1, d2, n);
        sim.set_act(act);
        sim.release(d2);
        sim.release(h1);
        h1 = h2;
        sim.release(a2);
        sim.release(n2);
    }
    // ff_residual: DenseReluDense over the normed states, `wo` into the residual dtype,
    // dropped out, added.
    let fx = pre_norm(sim, h1, r, dm, p.ff_norm, res);
    let act_out = match p.wi_1 {
        None => {
            let t = sim.linear(fx, r, dm, s.d_ff, p.wi, None);
            let a = sim.unary(t, r * s.d_ff);
            sim.release(t);
            a
        }
        Some(wi_1) => {
            let gate = sim.linear(fx, r, dm, s.d_ff, p.wi, None);
            let lin = sim.linear(fx, r, dm, s.d_ff, wi_1, None);
            let g = sim.gated(gate, lin, r * s.d_ff);
            sim.release(lin);
            sim.release(gate);
            g
        }
    };
    let dd = sim.dropout(act_out, r * s.d_ff, s.dropout);
    let y = sim.linear_into(dd, r, s.d_ff, dm, p.wo, res);
    sim.release(dd);
    sim.release(act_out);
    sim.release(fx);
    sim.set_act(res);
    let dy = sim.dropout(y, n, s.dropout);
    let out = sim.add(h1, dy, n);
    sim.set_act(act);
    sim.release(dy);
    sim.release(y);
    sim.release(h1);
    // The self-attention's normed input and output are locals of T5Block::forward: they
    // end with it (which shows in inference, where no tape holds them).
    sim.release(a);
    sim.release(nx);
    out
}

/// `T5Stack::forward` of embedded `x [b, l]`.
#[allow(clippy::too_many_arguments)]
fn t5_stack(
    sim: &mut Sim,
    s: &T5Spec,
    blocks: &[BlockP],
    rel: V,
    norm: V,
    x: V,
    b: usize,
    l: usize,
    mask: Option<V>,
    cross: Option<(V, Option<V>, usize)>,
    ckpt: bool,
) -> V {
    let dm = s.d_model;
    let bucket_ids = sim.ints(l * l);
    let e = sim.embedding(rel, bucket_ids, l * l, s.buckets, s.heads);
    let bias = sim.permute(e, s.heads * l * l);
    sim.release(e);
    sim.release(bucket_ids);
    let act = sim.env.act;
    let res = s.res(act);
    sim.set_act(res);
    let mut h = sim.dropout(x, b * l * dm, s.dropout);
    sim.set_act(act);
    for p in blocks {
        let c = BlockCtx {
            b,
            l,
            mask,
            bias,
            cross,
        };
        let next = if ckpt {
            let mut inputs = vec![h, bias];
            inputs.extend(mask);
            if let Some((enc, emask, _)) = cross {
                inputs.push(enc);
                inputs.extend(emask);
            }
            let (spec, p2) = (*s, *p);
            let has_mask = mask.is_some();
            let f = move |sim: &mut Sim, t: &[V]| {
                let mut rest = t[2..].iter().copied();
                let mask = if has_mask { rest.next() } else { None };
                let cross = c.cross.and_then(|(_, em, ls)| {
                    let enc = rest.next()?;
                    let m = if em.is_some() { rest.next() } else { None };
                    Some((enc, m, ls))
                });
                let c2 = BlockCtx {
                    b,
                    l,
                    mask,
                    bias: t[1],
                    cross,
                };
                t5_block(sim, &spec, &p2, t[0], &c2)
            };
            sim.checkpoint(&inputs, &p.all(), Box::new(f))
        } else {
            t5_block(sim, s, p, h, &c)
        };
        sim.release(h);
        h = next;
    }
    let y = pre_norm(sim, h, b * l, dm, norm, res);
    let out = sim.dropout(y, b * l * dm, s.dropout);
    sim.release(y);
    sim.release(h);
    sim.release(bias);
    out
}

fn t5_blocks(ps: &mut Params, sim: &mut Sim, s: &T5Spec, n: usize, decoder: bool) -> Vec<BlockP> {
    let inner = s.heads * s.d_kv;
    let dm = s.d_model;
    let attn = |ps: &mut Params, sim: &mut Sim| AttnP {
        q: ps.p(sim, inner * dm),
        k: ps.p(sim, inner * dm),
        v: ps.p(sim, inner * dm),
        o: ps.p(sim, inner * dm),
    };
    (0..n)
        .map(|_| {
            let self_attn = attn(ps, sim);
            let self_norm = ps.p(sim, dm);
            let cross = decoder.then(|| {
                let a = attn(ps, sim);
                (a, ps.p(sim, dm))
            });
            let wi = ps.p(sim, dm * s.d_ff);
            let wi_1 = s.gated.then(|| ps.p(sim, dm * s.d_ff));
            BlockP {
                self_attn,
                self_norm,
                cross,
                wi,
                wi_1,
                wo: ps.p(sim, dm * s.d_ff),
                ff_norm: ps.p(sim, dm),
            }
        })
        .collect()
}

/// One training micro-step of T5 (`loss`: shift right, encode, decode, LM head,
/// cross-entropy; then backward) at batch `b`, source `ls`, target `lt`.
pub fn t5_step(
    sim: &mut Sim,
    s: &T5Spec,
    b: usize,
    ls: usize,
    lt: usize,
    checkpointing: bool,
) -> Params {
    let mut ps = Params::default();
    let dm = s.d_model;
    let shared = ps.p(sim, s.vocab * dm);
    let enc_blocks = t5_blocks(&mut ps, sim, s, s.enc_layers, false);
    let enc_rel = ps.p(sim, s.buckets * s.heads);
    let enc_norm = ps.p(sim, dm);
    let dec_blocks = t5_blocks(&mut ps, sim, s, s.dec_layers, true);
    let dec_rel = ps.p(sim, s.buckets * s.heads);
    let dec_norm = ps.p(sim, dm);
    let lm_head = if s.tied {
        shared
    } else {
        ps.p(sim, s.vocab * dm)
    };

    let ids = sim.ints(b * ls);
    let mask = sim.ints(b * ls);
    let labels = sim.ints(b * lt);
    let dec_in = sim.ints(b * lt);
    // encode: embedding, then the residual stream's dtype (`T5::residual`)
    let act = sim.env.act;
    let res = s.res(act);
    // An embedding lookup cast to the residual stream's dtype when that differs.
    let embed = |sim: &mut Sim, ids, rows: usize| {
        let e = sim.embedding(shared, ids, rows, s.vocab, dm);
        if res == act {
            return e;
        }
        let x = sim.to_dtype(e, rows * dm, act, res);
        sim.release(e);
        x
    };
    let x = embed(sim, ids, b * ls);
    let enc = t5_stack(
        sim,
        s,
        &enc_blocks,
        enc_rel,
        enc_norm,
        x,
        b,
        ls,
        Some(mask),
        None,
        checkpointing,
    );
    sim.release(x);
    // decode + lm_logits
    let y = embed(sim, dec_in, b * lt);
    let h = t5_stack(
        sim,
        s,
        &dec_blocks,
        dec_rel,
        dec_norm,
        y,
        b,
        lt,
        None,
        Some((enc, Some(mask), ls)),
        checkpointing,
    );
    let hs = if s.scale_out {
        sim.scale(h, b * lt * dm)
    } else {
        sim.hold(h)
    };
    let logits = sim.linear(hs, b * lt, dm, s.vocab, lm_head, None);
    sim.release(hs);
    sim.release(h);
    sim.release(y);
    sim.release(enc);
    let loss = sim.cross_entropy(logits, labels, b * lt, s.vocab);
    sim.release(logits);
    sim.release(dec_in);
    if !sim.grad_enabled() {
        // Inference (`loss` under no_grad, as `bench --mode infer` runs it): no backward.
        for t in [loss, ids, mask, labels] {
            sim.release(t);
        }
        return ps;
    }
    let scaled = sim.scale(loss, 1);
    let loss_bytes = if sim.env.cuda { 4 } else { sim.env.act };
    let grads = sim.backward(scaled, loss_bytes);
    let _ = grads;
    for t in [scaled, loss, ids, mask, labels] {
        sim.release(t);
    }
    ps
}
