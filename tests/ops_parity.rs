//! Single ops through the tape against torch in float64 (tests/fixtures/ops.safetensors):
//! forward output and the gradient of sum(out · dout) for every input.

mod common;

use std::collections::BTreeMap;

use common::{assert_close, get, load};
use fusebox::autograd::backward;
use fusebox::ops::attention::AttnOptions;
use fusebox::ops::softmax::IGNORE_INDEX;
use fusebox::{DType, Tensor};

const TOL: f64 = 1e-10;

fn ops() -> BTreeMap<String, Tensor> {
    load("ops.safetensors", DType::F64)
}

fn var(f: &BTreeMap<String, Tensor>, k: &str) -> Tensor {
    Tensor::var(&get(f, k).deep_clone().unwrap())
}

/// loss = sum(out ⊙ dout).
fn weighted(out: &Tensor, dout: &Tensor) -> Tensor {
    out.mul(dout).unwrap().sum_all().unwrap()
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
    assert_close("layer_norm out", &out, get(&f, "layer_norm.out"), TOL);
    let g = backward(&weighted(&out, get(&f, "layer_norm.dout"))).unwrap();
    assert_close(
        "layer_norm dx",
        g.get(&x).unwrap(),
        get(&f, "layer_norm.dx"),
        TOL,
    );
    assert_close(
        "layer_norm dweight",
        g.get(&w).unwrap(),
        get(&f, "layer_norm.dweight"),
        TOL,
    );
    assert_close(
        "layer_norm dbias",
        g.get(&b).unwrap(),
        get(&f, "layer_norm.dbias"),
        TOL,
    );
}

#[test]
fn t5_layer_norm_matches_torch() {
    let f = ops();
    let (x, w) = (var(&f, "t5_layer_norm.x"), var(&f, "t5_layer_norm.weight"));
    let out = x.rms_norm(&w, 1e-6).unwrap();
    // HF's T5LayerNorm takes the variance in f32 even for f64 input: 1e-7 from f64.
    assert_close("rms_norm out", &out, get(&f, "t5_layer_norm.out"), 1e-6);
    assert_close(
        "rms_norm out vs HF",
        &out,
        get(&f, "t5_layer_norm.out_hf"),
        1e-6,
    );
    let g = backward(&weighted(&out, get(&f, "t5_layer_norm.dout"))).unwrap();
    assert_close(
        "rms_norm dx",
        g.get(&x).unwrap(),
        get(&f, "t5_layer_norm.dx"),
        1e-6,
    );
    assert_close(
        "rms_norm dweight",
        g.get(&w).unwrap(),
        get(&f, "t5_layer_norm.dweight"),
        1e-6,
    );
}

#[test]
fn activations_and_softmax_match_torch() {
    let f = ops();
    for name in ["gelu", "gelu_new", "relu", "softmax"] {
        let x = var(&f, &format!("{name}.x"));
        let out = match name {
            "gelu" => x.gelu(),
            "gelu_new" => x.gelu_new(),
            "relu" => x.relu(),
            _ => x.softmax(),
        }
        .unwrap();
        assert_close(
            &format!("{name} out"),
            &out,
            get(&f, &format!("{name}.out")),
            TOL,
        );
        let g = backward(&weighted(&out, get(&f, &format!("{name}.dout")))).unwrap();
        assert_close(
            &format!("{name} dx"),
            g.get(&x).unwrap(),
            get(&f, &format!("{name}.dx")),
            TOL,
        );
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
    assert_close(
        "ce dlogits",
        g.get(&logits).unwrap(),
        get(&f, "cross_entropy.dlogits"),
        TOL,
    );

    let w = var(&f, "embedding.weight");
    let out = w.embedding(get(&f, "embedding.ids")).unwrap();
    assert_close("embedding out", &out, get(&f, "embedding.out"), TOL);
    let g = backward(&weighted(&out, get(&f, "embedding.dout"))).unwrap();
    assert_close(
        "embedding dweight",
        g.get(&w).unwrap(),
        get(&f, "embedding.dweight"),
        TOL,
    );
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
        assert_close(&format!("{c} out"), &out, get(&f, &format!("{c}.out")), tol);
        let g = backward(&weighted(&out, get(&f, &format!("{c}.dout")))).unwrap();
        assert_close(
            &format!("{c} dq"),
            g.get(&q).unwrap(),
            get(&f, &format!("{c}.dq")),
            tol,
        );
        assert_close(
            &format!("{c} dk"),
            g.get(&k).unwrap(),
            get(&f, &format!("{c}.dk")),
            tol,
        );
        assert_close(
            &format!("{c} dv"),
            g.get(&v).unwrap(),
            get(&f, &format!("{c}.dv")),
            tol,
        );
        if let Some(b) = &bias {
            assert_close(
                &format!("{c} dbias"),
                g.get(b).unwrap(),
                get(&f, &format!("{c}.dbias")),
                tol,
            );
        }
    }
}
