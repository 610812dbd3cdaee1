//! What the model parity tests (T5, BART / Marian) check the same way against their
//! `<name>_io.safetensors` fixtures: element-wise closeness to the reference's largest
//! magnitude, and logits, loss and every parameter gradient at once.

use std::collections::BTreeMap;

use fusebox::autograd::backward;
use fusebox::models::seq2seq::{DecoderCache, Seq2SeqLm};
use fusebox::Tensor;

pub fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

/// A `[rows, width]` id tensor as rows.
pub fn rows(t: &Tensor) -> Vec<Vec<i32>> {
    let w = t.dims()[1];
    t.to_vec_i32()
        .unwrap()
        .chunks(w)
        .map(|c| c.to_vec())
        .collect()
}

/// max |a − b| must be ≤ rel · max |b|, or ≤ `abs` where the reference is (structurally)
/// zero: e.g. every BART `k_proj.bias` gradient is ~1e-17 in f64 (a constant added to all
/// keys does not change a softmax) and ~1e-8 in f32.
pub fn assert_close(what: &str, a: &[f32], b: &[f32], rel: f64, abs: f64) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs() as f64));
    let tol = if scale < 1e-7 { abs } else { rel * scale };
    let (mut worst, mut at) = (0.0f64, 0);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (*x as f64 - *y as f64).abs();
        if d.is_nan() || d > worst {
            worst = if d.is_nan() { f64::INFINITY } else { d };
            at = i;
        }
    }
    assert!(
        worst <= tol,
        "{what}: max diff {worst:e} at {at} (ours {}, ref {}) > tol {tol:e} (max |ref| {scale:e})",
        a[at],
        b[at]
    );
}

/// The relative tolerance of a tensor of `n` elements: 1e-5, 1e-4 for the smallest.
pub fn tol_for(n: usize) -> f64 {
    if n < 64 {
        1e-4
    } else {
        1e-5
    }
}

/// `logits` and `loss` against the fixture's `logits` / `loss` (1e-5), then the
/// gradients of `loss` for `params` (named as `named_parameters()`, in its order)
/// against its `grad.<name>` tensors.
pub fn check_logits_loss_grads(
    name: &str,
    loss: &Tensor,
    logits: &Tensor,
    params: &[(String, Tensor)],
    io: &BTreeMap<String, Tensor>,
) {
    assert_eq!(logits.dims(), io["logits"].dims(), "{name}: logits shape");
    let logits_name = format!("{name}: logits");
    assert_close(&logits_name, &f32s(logits), &f32s(&io["logits"]), 1e-5, 0.0);
    let loss_name = format!("{name}: loss");
    assert_close(&loss_name, &f32s(loss), &f32s(&io["loss"]), 1e-5, 0.0);
    let grads = backward(loss).unwrap();
    let ours: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    let theirs: Vec<&str> = io.keys().filter_map(|k| k.strip_prefix("grad.")).collect();
    assert_eq!(
        ours, theirs,
        "{name}: parameter names (ours vs named_parameters)"
    );
    for (pname, p) in params {
        let g = grads
            .get(p)
            .unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
        let r = &io[&format!("grad.{pname}")];
        assert_eq!(g.dims(), r.dims(), "{name}: grad shape of {pname}");
        let what = format!("{name}: grad {pname}");
        assert_close(&what, &f32s(g), &f32s(r), tol_for(r.elem_count()), 1e-7);
    }
}

/// One AdamW step fed the fixture's stored gradients (`adamw_step_on_stored_grads`), then
/// every parameter against its `param_after.<name>`.
pub fn check_adamw_step(name: &str, params: &[(String, Tensor)], io: &BTreeMap<String, Tensor>) {
    super::adamw_step_on_stored_grads(name, params, io);
    for (pname, p) in params {
        let want = f32s(&io[&format!("param_after.{pname}")]);
        assert_close(
            &format!("{name}: param after step {pname}"),
            &f32s(p),
            &want,
            1e-6,
            1e-7,
        );
    }
}

/// Teacher-forcing the fixture's `decoder_input_ids` one token at a time through the K/V
/// cache gives `full` (the full decoder's logits `[B, Lt, vocab]`) at every position.
pub fn check_cached_decoding(
    name: &str,
    model: &dyn Seq2SeqLm,
    full: &[f32],
    io: &BTreeMap<String, Tensor>,
) {
    let dec_in = &io["decoder_input_ids"];
    let (b, lt, v) = (dec_in.dims()[0], dec_in.dims()[1], model.vocab_size());
    let toks = dec_in.to_vec_i32().unwrap();
    let enc = model
        .encoder_state(&io["input_ids"], Some(&io["attention_mask"]))
        .unwrap();
    let mut cache = DecoderCache::new();
    for t in 0..lt {
        let step: Vec<i32> = (0..b).map(|r| toks[r * lt + t]).collect();
        let out = f32s(&model.decode_step(&step, &enc, &mut cache).unwrap());
        for r in 0..b {
            let want = &full[(r * lt + t) * v..(r * lt + t + 1) * v];
            let what = format!("{name}: cached step {t} row {r}");
            assert_close(&what, &out[r * v..(r + 1) * v], want, 1e-5, 0.0);
        }
    }
    assert_eq!(cache.len, lt, "{name}: cache length");
}
