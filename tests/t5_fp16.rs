//! T5 in fp16 does not overflow: the proof the issue asks for, on the CPU's emulation of
//! CUDA's fp16 (f32 math, f16 stores, so 65504 overflows to inf exactly where the GPU
//! would) and, when a GPU is present, on CUDA itself.
//!
//! A tiny random T5 gets its feed-forward `wo` weights multiplied by a power of two so
//! that the feed-forward outputs, and the residual stream they are added to, pass
//! 65504 — what T5 checkpoints (pretrained in bf16) do at full size. All weights are
//! f16-representable, so the f32 model and the f16 models hold the same numbers and the
//! comparison measures the activations' precision only. Then:
//! - the naive fp16 path (`Fp16Safety::Off`: everything f16) gives a NaN/inf loss;
//! - the default fp16 path (f32 residual, `o`/`wo` products stored in f32) gives the f32
//!   loss to 1e-2 relative, with finite gradients close to the f32 ones, and a K/V-cached
//!   decoder that agrees with the full one;
//! - without the scaling (no overflow) both fp16 paths give the f32 loss to 1e-2.

use fusebox::autograd::no_grad;
use fusebox::backend::{BackendStorage, CpuStorage, MatmulSpec};
use fusebox::models::seq2seq::Seq2SeqLm;
use fusebox::models::t5::{Fp16Safety, T5Config, T5ForConditionalGeneration};
use fusebox::nn::Mode;
use fusebox::optim::{AdamW, AdamWConfig, LossScaler};
use fusebox::{DType, Device, Tensor};

mod common;
use common::parity::unscaled_grads;
use common::parity::{assert_rel_l2_1e2, check_cached_decoding, check_fp16_gradients, f32s};
use common::{assert_rel, cuda_device, fp16_training_follows_f32, rel_diff, scaled_step};

/// The overflow case multiplies every `wi` (`wi_0`, `wi_1`) weight by `WI_SCALE` and
/// every `wo` by `WO_SCALE`: powers of two (exact in f16 and f32) that keep each weight
/// and each `wi` activation well inside f16 but put the feed-forward outputs at ~1e4..1e6.
const WI_SCALE: f32 = 32.0;
const WO_SCALE: f32 = 2048.0;

/// A test model's widths: the tiny one, or a full-size model's at one layer.
#[derive(Clone, Copy)]
struct Widths {
    d_model: usize,
    d_ff: usize,
    heads: usize,
    layers: usize,
}

const TINY: Widths = Widths {
    d_model: 16,
    d_ff: 32,
    heads: 4,
    layers: 2,
};

/// T5-large's widths (d_model 1024, 16 heads of 64, relu d_ff 4096) or FLAN-T5-large's
/// (gated-gelu d_ff 2816), one layer each: the widths whose sums overflow, at a size a
/// CPU test can afford.
fn large(gated: bool) -> Widths {
    Widths {
        d_model: 1024,
        d_ff: if gated { 2816 } else { 4096 },
        heads: 16,
        layers: 1,
    }
}

fn config(gated: bool, w: Widths) -> T5Config {
    let (ff, tie) = if gated {
        ("gated-gelu", false)
    } else {
        ("relu", true)
    };
    let Widths {
        d_model,
        d_ff,
        heads,
        layers,
    } = w;
    let d_kv = d_model / heads;
    let json = format!(
        r#"{{"vocab_size": 40, "d_model": {d_model}, "d_kv": {d_kv}, "num_heads": {heads},
            "d_ff": {d_ff}, "num_layers": {layers}, "num_decoder_layers": {layers},
            "relative_attention_num_buckets": 8, "relative_attention_max_distance": 20,
            "dropout_rate": 0.0, "feed_forward_proj": "{ff}", "tie_word_embeddings": {tie}}}"#
    );
    T5Config::from_json_str(&json, "t5_fp16 test config").unwrap()
}

/// A seeded random T5 in `dtype` on `dev` whose weights are f16-representable (the same
/// values whatever the dtype), with the feed-forward scaled when `overflow`.
fn model(
    gated: bool,
    dev: Device,
    dtype: DType,
    overflow: bool,
    safety: Fp16Safety,
) -> T5ForConditionalGeneration {
    let scales = if overflow {
        (WI_SCALE, WO_SCALE)
    } else {
        (1.0, 1.0)
    };
    model_at(TINY, gated, dev, dtype, scales, safety)
}

/// [`model`] at widths `w`, its `wi` and `wo` weights multiplied by `(wi, wo)`.
fn model_at(
    w: Widths,
    gated: bool,
    dev: Device,
    dtype: DType,
    (wi, wo): (f32, f32),
    safety: Fp16Safety,
) -> T5ForConditionalGeneration {
    let cfg = config(gated, w);
    let mut m = T5ForConditionalGeneration::new_random(cfg, dev, dtype, 11).unwrap();
    m.fp16_safety = safety;
    let _g = no_grad();
    for (name, p) in m.trainable() {
        let s = match name.rsplit('.').nth(1) {
            Some("wo") => wo,
            Some("wi" | "wi_0" | "wi_1") => wi,
            _ => 1.0,
        };
        let v: Vec<f32> = p
            .to_vec_f32()
            .unwrap()
            .into_iter()
            .map(|x| half::f16::from_f32(x).to_f32() * s)
            .collect();
        assert!(
            v.iter().all(|x| x.abs() < 6e4),
            "{name}: a weight outside f16's range would void the test"
        );
        let t = Tensor::from_f32(v, p.dims(), dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        p.storage_mut().copy_from_(&t.storage()).unwrap();
    }
    m
}

struct Batch {
    ids: Tensor,
    mask: Tensor,
    labels: Tensor,
}

fn batch(dev: Device) -> Batch {
    let ids: Vec<i32> = (0..14).map(|i| 2 + (i * 7 + 3) % 37).collect();
    let mask = vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0];
    let labels = vec![5, 9, 13, 1, -100, 22, 3, 30, 17, 1];
    Batch {
        ids: Tensor::from_i32(ids, [2, 7], dev).unwrap(),
        mask: Tensor::from_i32(mask, [2, 7], dev).unwrap(),
        labels: Tensor::from_i32(labels, [2, 5], dev).unwrap(),
    }
}

/// Loss scale for backward, as GradScaler would apply: keeps small f16 gradients from
/// flushing to zero. Gradients are divided by it again before comparison.
const LOSS_SCALE: f64 = 1024.0;

/// (loss, every parameter gradient flattened in name order, unscaled, as f64).
fn loss_and_grads(m: &T5ForConditionalGeneration, b: &Batch) -> (f64, Vec<f64>) {
    let (loss, _) = m
        .loss(&b.ids, Some(&b.mask), &b.labels, Mode::Eval)
        .unwrap();
    assert_eq!(loss.dtype(), DType::F32, "the loss is f32 for f16 logits");
    let l = loss.to_scalar().unwrap();
    let g = unscaled_grads(m, &loss, LOSS_SCALE);
    (l, g)
}

fn loss_only(m: &T5ForConditionalGeneration, b: &Batch) -> f64 {
    let _g = no_grad();
    let (loss, _) = m
        .loss(&b.ids, Some(&b.mask), &b.labels, Mode::Eval)
        .unwrap();
    loss.to_scalar().unwrap()
}

/// max |FF(x)| of encoder block 0's feed-forward in the f32 model, for `x` the
/// RMS-normalised embeddings of the batch: evidence that the scaled weights put the
/// feed-forward output itself (not only some later sum) past f16's 65504.
fn ff_peak(m: &T5ForConditionalGeneration, b: &Batch) -> f64 {
    let (h_peak, y_peak) = ff_peaks(m, b);
    assert!(
        h_peak < 3e4,
        "the wi activations ({h_peak}) must stay inside f16"
    );
    y_peak
}

/// (max |wi activation|, max |FF(x)|) of encoder block 0's feed-forward, as [`ff_peak`].
fn ff_peaks(m: &T5ForConditionalGeneration, b: &Batch) -> (f64, f64) {
    let _g = no_grad();
    let p: std::collections::BTreeMap<String, Tensor> = m.trainable().into_iter().collect();
    let pre = "encoder.block.0.layer.1";
    let x = p["shared.weight"]
        .embedding(&b.ids)
        .unwrap()
        .rms_norm(&p[&format!("{pre}.layer_norm.weight")], 1e-6)
        .unwrap();
    let w = |n: &str| &p[&format!("{pre}.DenseReluDense.{n}.weight")];
    let h = if p.contains_key(&format!("{pre}.DenseReluDense.wi.weight")) {
        x.linear(w("wi"), None).unwrap().relu().unwrap()
    } else {
        let gate = x.linear(w("wi_0"), None).unwrap();
        let lin = x.linear(w("wi_1"), None).unwrap();
        gate.gated(&lin, fusebox::backend::UnaryOp::GeluNew)
            .unwrap()
    };
    let peak = |v: Vec<f64>| v.iter().fold(0.0f64, |a, x| a.max(x.abs()));
    let y = h.linear(w("wo"), None).unwrap().to_vec_f64().unwrap();
    (peak(h.to_vec_f64().unwrap()), peak(y))
}

/// The whole proof on one device: returns the safe fp16 loss of the overflow case.
fn overflow_case(dev: Device, gated: bool) -> f64 {
    overflow_case_at(dev, gated, TINY, (WI_SCALE, WO_SCALE))
}

/// [`overflow_case`] at widths `w` with the feed-forward scaled by `scales`.
fn overflow_case_at(dev: Device, gated: bool, w: Widths, scales: (f32, f32)) -> f64 {
    let what = format!(
        "{} T5 (d_model {}, d_ff {}) on {dev:?}",
        if gated { "gated-gelu" } else { "relu" },
        w.d_model,
        w.d_ff
    );
    let b = batch(dev);
    let at = |dtype, safety| model_at(w, gated, dev, dtype, scales, safety);
    let reference = at(DType::F32, Fp16Safety::default());
    let peak = ff_peak(&reference, &b);
    assert!(
        peak > 65504.0,
        "{what}: feed-forward peak {peak} does not overflow f16"
    );
    let (l32, g32) = loss_and_grads(&reference, &b);
    assert!(l32.is_finite(), "{what}: f32 reference loss {l32}");

    let naive = at(DType::F16, Fp16Safety::Off);
    let ln = loss_only(&naive, &b);
    assert!(
        !ln.is_finite(),
        "{what}: the naive fp16 path should overflow, got loss {ln}"
    );

    let safe = at(DType::F16, Fp16Safety::Fp32Residual);
    let (l16, g16) = loss_and_grads(&safe, &b);
    let rel = rel_diff(l16, l32);
    println!(
        "{what}: feed-forward peak {peak:.0}; loss f32 {l32}, naive fp16 {ln}, \
         safe fp16 {l16} (rel {rel:e})"
    );
    assert!(
        l16.is_finite() && rel < 1e-2,
        "{what}: safe fp16 loss {l16} vs f32 {l32}"
    );
    let rg = check_fp16_gradients(&what, &g16, &g32);
    println!("{what}: gradients rel L2 {rg:e}");

    // Generation's cached decoder runs the same guarded blocks.
    let _g = no_grad();
    let dec_in = safe.shift_right(&b.labels).unwrap();
    let full = f32s(
        &safe
            .forward(&b.ids, Some(&b.mask), &dec_in, Mode::Eval)
            .unwrap(),
    );
    let inputs = [&b.ids, &b.mask, &dec_in];
    check_cached_decoding(&what, &safe, inputs, &full, assert_rel_l2_1e2);
    l16
}

/// Without the `wo` scaling nothing overflows: both fp16 paths match f32.
fn plain_case(dev: Device, gated: bool) {
    let b = batch(dev);
    let l32 = loss_only(
        &model(gated, dev, DType::F32, false, Fp16Safety::default()),
        &b,
    );
    for safety in [Fp16Safety::Fp32Residual, Fp16Safety::Off] {
        let l16 = loss_only(&model(gated, dev, DType::F16, false, safety), &b);
        let what = format!("gated {gated} on {dev:?}, {safety:?}: fp16 loss vs f32");
        assert_rel(&what, l16, l32, 1e-2);
    }
}

#[test]
fn safe_fp16_survives_what_overflows_naive_fp16_cpu() {
    for gated in [false, true] {
        overflow_case(Device::Cpu, gated);
    }
}

/// The same proof at T5-large's and FLAN-T5-large's widths. The scales are powers of
/// two chosen from the f32 model's own activations: the `wi` activations near 8e3
/// (inside f16), the feed-forward output between 2e5 and 4e5 (past 65504).
#[test]
fn safe_fp16_survives_what_overflows_naive_fp16_at_large_widths_cpu() {
    let (dev, b) = (Device::Cpu, batch(Device::Cpu));
    let pow2 = |x: f64| 2f32.powi(x.log2().floor() as i32);
    for gated in [false, true] {
        let w = large(gated);
        let f32_at = |scales| model_at(w, gated, dev, DType::F32, scales, Fp16Safety::default());
        let (h, _) = ff_peaks(&f32_at((1.0, 1.0)), &b);
        // The gated product grows with the square of the wi scale.
        let wi = pow2(if gated { (8e3 / h).sqrt() } else { 8e3 / h });
        let (_, y) = ff_peaks(&f32_at((wi, 1.0)), &b);
        overflow_case_at(dev, gated, w, (wi, pow2(4e5 / y)));
    }
}

#[test]
fn fp16_matches_f32_without_overflow_cpu() {
    for gated in [false, true] {
        plain_case(Device::Cpu, gated);
    }
}

/// Mixed-precision training of the overflowing model, as the training loop runs it: f16
/// working weights, f32 AdamW masters, GradScaler-style dynamic loss scaling, dropout
/// on. The loss must stay finite and fall as it does in f32, to the same value (1e-2).
fn train_case(dev: Device) {
    let b = batch(dev);
    fp16_training_follows_f32("T5", |dtype| {
        let m = model(false, dev, dtype, true, Fp16Safety::default());
        let before = loss_only(&m, &b);
        let mut opt = AdamW::new(&m.trainable(), AdamWConfig::default(), true).unwrap();
        let mut scaler = LossScaler::default();
        let mut applied = 0;
        for step in 0..12 {
            let (loss, _) = m
                .loss(&b.ids, Some(&b.mask), &b.labels, Mode::Train { seed: step })
                .unwrap();
            assert!(
                loss.to_scalar().unwrap().is_finite(),
                "{dtype:?} step {step}"
            );
            let out = scaled_step(&mut opt, &mut scaler, &loss, 3e-3);
            applied += usize::from(!out.skipped);
        }
        let after = loss_only(&m, &b);
        println!("{dtype:?} on {dev:?}: loss {before} -> {after} ({applied} steps applied)");
        assert!(
            applied >= 6,
            "{dtype:?}: only {applied} of 12 steps applied"
        );
        assert!(
            after.is_finite() && after < before - 0.1,
            "{dtype:?}: loss {before} -> {after}"
        );
        Some(after)
    });
}

#[test]
fn safe_fp16_trains_with_loss_scaling_cpu() {
    train_case(Device::Cpu);
}

/// `Fp16Safety` is inert for f32 weights: the same loss bits either way.
#[test]
fn safety_setting_leaves_f32_alone() {
    let b = batch(Device::Cpu);
    let on = loss_only(
        &model(
            true,
            Device::Cpu,
            DType::F32,
            true,
            Fp16Safety::Fp32Residual,
        ),
        &b,
    );
    let off = loss_only(
        &model(true, Device::Cpu, DType::F32, true, Fp16Safety::Off),
        &b,
    );
    assert_eq!(on.to_bits(), off.to_bits());
}

/// The same proof on a CUDA device (skips without one), plus: the CUDA fp16 loss agrees
/// with the CPU emulation's, and the f32-output GEMM matches the CPU's.
#[test]
fn safe_fp16_survives_what_overflows_naive_fp16_gpu() {
    let Some(dev) = cuda_device("the GPU fp16 T5 test") else {
        return;
    };
    for gated in [false, true] {
        let gpu = overflow_case(dev, gated);
        let cpu = overflow_case(Device::Cpu, gated);
        let what = format!("gated {gated}: CUDA fp16 loss vs CPU emulation");
        assert_rel(&what, gpu, cpu, 1e-2);
        plain_case(dev, gated);
    }
    train_case(dev);

    // f16 operands, f32 product: 4 · 200 · 100 = 80000 is exact in f32, inf in f16.
    let spec = MatmulSpec::plain(3, 4, 2);
    let a = CpuStorage::from_f32(vec![200.0; 12])
        .cast(DType::F16)
        .unwrap();
    let b = CpuStorage::from_f32(vec![
        100.0, -100.0, 100.0, -100.0, 100.0, -100.0, 100.0, -100.0,
    ])
    .cast(DType::F16)
    .unwrap();
    let want = a
        .matmul_out(&b, &spec, DType::F32)
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let da = Tensor::from_cpu(a, [12], dev).unwrap();
    let db = Tensor::from_cpu(b, [8], dev).unwrap();
    let got = da
        .storage()
        .matmul_out(&db.storage(), &spec, DType::F32)
        .unwrap();
    assert_eq!(got.dtype(), DType::F32);
    assert_eq!(got.to_vec_f32().unwrap(), want);
    assert_eq!(&want[..2], &[80000.0, -80000.0]);
}
