//! Single ops through the tape against torch in float64 (tests/fixtures/ops.safetensors):
//! forward output and the gradient of sum(out · dout) for every input.

mod common;

use std::collections::BTreeMap;

use common::{assert_close, get, load};
use fusebox::autograd::{backward, Grads};
use fusebox::ops::attention::AttnOptions;
use fusebox::ops::softmax::IGNORE_INDEX;
use fusebox::{DType, Tensor};

const TOL: f64 = 1e-10;

type Fixture = BTreeMap<String, Tensor>;

fn ops() -> Fixture {
    load("ops.safetensors", DType::F64)
}

fn var(f: &Fixture, k: &str) -> Tensor {
    Tensor::var(&get(f, k).deep_clone().unwrap())
}

/// loss = sum(out ⊙ dout).
fn weighted(out: &Tensor, dout: &Tensor) -> Tensor {
    out.mul(dout).unwrap().sum_all().unwrap()
}

/// `out` against the fixture's `{key}.out`, then the gradient of sum(out ⊙ `{key}.dout`)
/// for each named input against `{key}.d<name>`; `what` prefixes the messages.
fn check_op(
    f: &Fixture,
    what: &str,
    key: &str,
    out: &Tensor,
    inputs: &[(&str, &Tensor)],
    tol: f64,
) {
    let at = |k: &str| get(f, &format!("{key}.{k}"));
    assert_close(&format!("{what} out"), out, at("out"), tol);
    let g = backward(&weighted(out, at("dout"))).unwrap();
    check_grads(f, &g, what, key, inputs, tol);
}

/// Each named input's gradient in `g` against the fixture's `{key}.d<name>`.
fn check_grads(
    f: &Fixture,
    g: &Grads,
    what: &str,
    key: &str,
    inputs: &[(&str, &Tensor)],
    tol: f64,
) {
    for (name, x) in inputs {
        let want = get(f, &format!("{key}.d{name}"));
        assert_close(&format!("{what} d{name}"), g.get(x).unwrap(), want, tol);
    }
}

#[test]
fn layer_norm_matches_torch() {
    let f = ops();
    let (x, w, b) = (
        var(&f, "layer_norm.x"),
        var(&f, "layer_norm.weight"),
        var(&f, "layer_norm.bias"),
    );
    let out = x.layer_norm(&w, &b, 1e-12).unwrap();
    let inputs = [("x", &x), ("weight", &w), ("bias", &b)];
    check_op(&f, "layer_norm", "layer_norm", &out, &inputs, TOL);
}

#[test]
fn t5_layer_norm_matches_torch() {
    let f = ops();
    let (x, w) = (var(&f, "t5_layer_norm.x"), var(&f, "t5_layer_norm.weight"));
    let out = x.rms_norm(&w, 1e-6).unwrap();
    // HF's T5LayerNorm takes the variance in f32 even for f64 input: 1e-7 from f64.
    assert_close(
        "rms_norm out vs HF",
        &out,
        get(&f, "t5_layer_norm.out_hf"),
        1e-6,
    );
    let inputs = [("x", &x), ("weight", &w)];
    check_op(&f, "rms_norm", "t5_layer_norm", &out, &inputs, 1e-6);
}

#[test]
fn activations_and_softmax_match_torch() {
    let f = ops();
    for name in ["gelu", "gelu_new", "relu", "silu", "softmax"] {
        let x = var(&f, &format!("{name}.x"));
        let out = match name {
            "gelu" => x.gelu(),
            "gelu_new" => x.gelu_new(),
            "relu" => x.relu(),
            "silu" => x.silu(),
            _ => x.softmax(),
        }
        .unwrap();
        check_op(&f, name, name, &out, &[("x", &x)], TOL);
    }
}

#[test]
fn cross_entropy_and_embedding_match_torch() {
    let f = ops();
    let logits = var(&f, "cross_entropy.logits");
    let loss = logits
        .cross_entropy(get(&f, "cross_entropy.labels"), IGNORE_INDEX)
        .unwrap();
    assert_close(
        "ce out",
        &loss,
        &get(&f, "cross_entropy.out").reshape([1]).unwrap(),
        TOL,
    );
    let g = backward(&loss).unwrap();
    check_grads(&f, &g, "ce", "cross_entropy", &[("logits", &logits)], TOL);

    let w = var(&f, "embedding.weight");
    let out = w.embedding(get(&f, "embedding.ids")).unwrap();
    check_op(&f, "embedding", "embedding", &out, &[("weight", &w)], TOL);
}

#[test]
fn attention_cases_match_torch() {
    let f = ops();
    // (case, scale, causal, has bias) as recorded in the fixture's metadata.
    let cases = [
        ("attn_scaled_mask", 1.0 / 5f32.sqrt(), false, false),
        ("attn_bias_causal", 1.0, true, true),
        ("attn_bias_mask", 1.0, false, true),
        ("attn_cross", 1.0, false, false),
    ];
    for (c, scale, causal, has_bias) in cases {
        let (q, k, v) = (
            var(&f, &format!("{c}.q")),
            var(&f, &format!("{c}.k")),
            var(&f, &format!("{c}.v")),
        );
        let bias = has_bias.then(|| var(&f, &format!("{c}.bias")));
        let out = q
            .attention(
                &k,
                &v,
                AttnOptions {
                    scale,
                    causal,
                    key_mask: Some(get(&f, &format!("{c}.mask"))),
                    bias: bias.as_ref(),
                    ..Default::default()
                },
            )
            .unwrap();
        // The scale travels as f32: 1e-7 relative for the scaled case.
        let tol = if scale != 1.0 { 1e-6 } else { TOL };
        let mut inputs = vec![("q", &q), ("k", &k), ("v", &v)];
        inputs.extend(bias.as_ref().map(|b| ("bias", b)));
        check_op(&f, c, c, &out, &inputs, tol);
    }
}
