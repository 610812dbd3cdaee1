//! What the model parity tests (T5, BART / Marian) check the same way against their
//! `<name>_io.safetensors` fixtures: element-wise closeness to the reference's largest
//! magnitude, and logits, loss and every parameter gradient at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fusebox::autograd::backward;
use fusebox::autograd::no_grad;
use fusebox::models::seq2seq::{DecoderCache, Seq2SeqLm};
use fusebox::nn::safetensors_io;
use fusebox::nn::Mode;
use fusebox::optim::{AdamW, AdamWConfig};
use fusebox::{DType, Device, Tensor};

/// The fixtures folder, tests/fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A fixture model and its reference tensors.
pub type Fixture<M> = (M, BTreeMap<String, Tensor>);

/// Fixture model `name` (tests/fixtures/models/NAME, through `load_model`) and its
/// reference tensors (NAME_io.safetensors), in f32 on `dev`; or `None`, with the reason
/// printed, when the files are absent (`tools/fixtures/make_fixtures.py make` writes
/// them).
pub fn load_fixture<M>(
    name: &str,
    dev: Device,
    make: &str,
    load_model: impl FnOnce(&Path, Device, DType) -> fusebox::Result<M>,
) -> Option<Fixture<M>> {
    let dir = fixtures().join("models").join(name);
    let io = fixtures().join(format!("{name}_io.safetensors"));
    if !dir.join("model.safetensors").exists() || !io.exists() {
        eprintln!(
            "skipping {name}: fixtures missing under {} (run tools/fixtures/make_fixtures.py {make})",
            fixtures().display()
        );
        return None;
    }
    let model = load_model(&dir, dev, DType::F32).unwrap();
    let io = safetensors_io::load(&io, DType::F32, dev).unwrap();
    Some((model, io))
}

/// Each of `names` whose fixtures `load` finds, by name, with its model and reference
/// tensors.
pub fn fixture_models<M>(
    names: &'static [&'static str],
    load: fn(&str) -> Option<Fixture<M>>,
) -> impl Iterator<Item = (&'static str, Fixture<M>)> {
    names
        .iter()
        .filter_map(move |&name| Some((name, load(name)?)))
}

/// Eval-mode logits of the fixture's batch (input_ids, attention_mask,
/// decoder_input_ids), recorded on no tape.
pub fn eval_logits(model: &dyn Seq2SeqLm, io: &BTreeMap<String, Tensor>) -> Vec<f32> {
    let _g = no_grad();
    let (ids, mask, dec_in) = (
        &io["input_ids"],
        &io["attention_mask"],
        &io["decoder_input_ids"],
    );
    f32s(&model.forward(ids, Some(mask), dec_in, Mode::Eval).unwrap())
}

/// The model's decoder inputs for the fixture's labels, which must be the fixture's
/// decoder_input_ids (what HF's `hf_fn` gives).
pub fn check_shift_right(
    name: &str,
    model: &dyn Seq2SeqLm,
    io: &BTreeMap<String, Tensor>,
    hf_fn: &str,
) -> Tensor {
    let dec_in = model.shift_right(&io["labels"]).unwrap();
    assert_eq!(
        dec_in.to_vec_i32().unwrap(),
        io["decoder_input_ids"].to_vec_i32().unwrap(),
        "{name}: {hf_fn}"
    );
    dec_in
}

/// Dropout drawn from the seed, in training only: `run(mode)` (a loss of the fixture's
/// batch) is the same twice at seed 1, another at seed 2, and not `eval`; the seed-1
/// training loss back-propagates to every trainable parameter. The seed-1 loss.
pub fn check_seeded_dropout(
    what: &str,
    model: &dyn Seq2SeqLm,
    io: &BTreeMap<String, Tensor>,
    eval: f64,
    run: impl Fn(Mode) -> f64,
) -> f64 {
    let (a, b, c) = (
        run(Mode::Train { seed: 1 }),
        run(Mode::Train { seed: 1 }),
        run(Mode::Train { seed: 2 }),
    );
    assert_eq!(a, b, "{what}: same seed, same loss");
    assert_ne!(a, c, "{what}: another seed, another mask");
    assert_ne!(a, eval, "{what}: dropout active in training");
    let (ids, mask, labels) = (&io["input_ids"], &io["attention_mask"], &io["labels"]);
    let (loss, _) = model
        .loss(ids, Some(mask), labels, Mode::Train { seed: 1 })
        .unwrap();
    assert_eq!(
        backward(&loss).unwrap().len(),
        model.trainable().len(),
        "{what}"
    );
    a
}

/// Logits and loss within relative L2 1e-5 of the fixture's, and every gradient of
/// `params` within 1e-4 (where the reference is all zero: each value below 1e-6); the
/// measure of the GPU runs.
pub fn check_logits_loss_grads_l2(
    what: &str,
    (loss, logits): (&Tensor, &Tensor),
    params: &[(String, Tensor)],
    io: &BTreeMap<String, Tensor>,
) {
    let rel_l2 = super::rel_l2_f32;
    let r = rel_l2(&f32s(logits), &f32s(&io["logits"]));
    assert!(r < 1e-5, "{what}: logits rel L2 {r:e}");
    let r = rel_l2(&f32s(loss), &f32s(&io["loss"]));
    assert!(r < 1e-5, "{what}: loss rel {r:e}");
    let grads = backward(loss).unwrap();
    for (pname, p) in params {
        let got = f32s(
            grads
                .get(p)
                .unwrap_or_else(|| panic!("{what}: no grad {pname}")),
        );
        let want = f32s(&io[&format!("grad.{pname}")]);
        let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        if scale == 0.0 {
            assert!(got.iter().all(|x| x.abs() < 1e-6), "{what}: grad {pname}");
        } else {
            let r = rel_l2(&got, &want);
            assert!(r < 1e-4, "{what}: grad {pname} rel L2 {r:e}");
        }
    }
}

/// Backward of `loss · scale` (a loss scale, so that small f16 gradients do not flush to
/// zero): every trainable parameter's gradient, in its own dtype, divided by `scale`
/// again and flattened in name order, as f64.
pub fn unscaled_grads(m: &dyn Seq2SeqLm, loss: &Tensor, scale: f64) -> Vec<f64> {
    let grads = backward(&loss.scale(scale).unwrap()).unwrap();
    let mut g = Vec::new();
    for (name, p) in m.trainable() {
        let gp = grads
            .get(&p)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(gp.dtype(), p.dtype(), "{name}: gradient dtype");
        g.extend(gp.to_vec_f64().unwrap().iter().map(|x| x / scale));
    }
    g
}

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

/// Teacher-forcing `dec_in [B, Lt]` one token at a time through the K/V cache gives
/// `full` (the full decoder's logits `[B, Lt, vocab]`): `check(what, got, want)` on each
/// row at each position.
pub fn check_cached_decoding(
    what: &str,
    model: &dyn Seq2SeqLm,
    [ids, mask, dec_in]: [&Tensor; 3],
    full: &[f32],
    check: impl Fn(&str, &[f32], &[f32]),
) {
    let _g = no_grad();
    let (b, lt, v) = (dec_in.dims()[0], dec_in.dims()[1], model.vocab_size());
    let toks = dec_in.to_vec_i32().unwrap();
    let enc = model.encoder_state(ids, Some(mask)).unwrap();
    let mut cache = DecoderCache::new();
    for t in 0..lt {
        let step: Vec<i32> = (0..b).map(|r| toks[r * lt + t]).collect();
        let out = f32s(&model.decode_step(&step, &enc, &mut cache).unwrap());
        for r in 0..b {
            let want = &full[(r * lt + t) * v..(r * lt + t + 1) * v];
            check(
                &format!("{what}: cached step {t} row {r}"),
                &out[r * v..(r + 1) * v],
                want,
            );
        }
    }
    assert_eq!(cache.len, lt, "{what}: cache length");
}

/// [`check_cached_decoding`] on the fixture's batch, each row to 1e-5 of its largest
/// logit.
pub fn check_cached_decoding_on_fixture(
    name: &str,
    model: &dyn Seq2SeqLm,
    full: &[f32],
    io: &BTreeMap<String, Tensor>,
) {
    let batch = [
        &io["input_ids"],
        &io["attention_mask"],
        &io["decoder_input_ids"],
    ];
    check_cached_decoding(name, model, batch, full, |what, got, want| {
        assert_close(what, got, want, 1e-5, 0.0)
    });
}

/// A training batch for a fresh model of a 50-token vocabulary whose special ids are
/// below `first` (`[ids, mask, labels]`: 2 rows of 40 and 20 tokens, row 1's last 10
/// inputs padded, its last 3 labels -100).
pub fn training_batch(first: i32) -> [Tensor; 3] {
    let (b, ls, lt, span) = (2, 40, 20, 50 - first as usize);
    let ids: Vec<i32> = (0..b * ls).map(|i| first + (i * 7 % span) as i32).collect();
    let mut mask = vec![1i32; b * ls];
    mask[ls + 30..].iter_mut().for_each(|m| *m = 0);
    let mut labels: Vec<i32> = (0..b * lt).map(|i| first + (i * 5 % span) as i32).collect();
    labels[2 * lt - 3..].iter_mut().for_each(|l| *l = -100);
    [
        Tensor::from_i32(ids, [b, ls], Device::Cpu).unwrap(),
        Tensor::from_i32(mask, [b, ls], Device::Cpu).unwrap(),
        Tensor::from_i32(labels, [b, lt], Device::Cpu).unwrap(),
    ]
}

/// The eval-mode loss of `batch`.
pub fn eval_loss(model: &dyn Seq2SeqLm, [ids, mask, labels]: &[Tensor; 3]) -> f64 {
    let _g = no_grad();
    let (loss, _) = model.loss(ids, Some(mask), labels, Mode::Eval).unwrap();
    loss.to_scalar().unwrap()
}

/// Eight AdamW steps (lr 1e-2, clipped at 1) with dropout on `batch` lower its eval loss
/// by more than 0.1; returns the loss after them.
pub fn check_trains(what: &str, model: &dyn Seq2SeqLm, batch: &[Tensor; 3]) -> f64 {
    let before = eval_loss(model, batch);
    let [ids, mask, labels] = batch;
    let mut opt = AdamW::new(&model.trainable(), AdamWConfig::default(), true).unwrap();
    for step in 0..8 {
        let (loss, _) = model
            .loss(ids, Some(mask), labels, Mode::Train { seed: step })
            .unwrap();
        let grads = backward(&loss).unwrap();
        assert!(!opt.step(&grads, 1e-2, 1.0, Some(1.0)).unwrap().skipped);
    }
    let after = eval_loss(model, batch);
    assert!(after < before - 0.1, "{what}: loss {before} -> {after}");
    after
}

/// `got` within relative L2 1e-2 of `want` (fp16 against f32).
pub fn assert_rel_l2_1e2(what: &str, got: &[f32], want: &[f32]) {
    let e = super::rel_l2_f32(got, want);
    assert!(e < 1e-2, "{what}: rel L2 {e:e}");
}

/// fp16 gradients (unscaled, flattened) are finite and within relative L2 5e-2 of the
/// f32 ones; returns that distance.
pub fn check_fp16_gradients(what: &str, g16: &[f64], g32: &[f64]) -> f64 {
    assert!(
        g16.iter().all(|x| x.is_finite()),
        "{what}: non-finite fp16 gradient"
    );
    let rg = super::rel_l2(g16, g32);
    assert!(rg < 5e-2, "{what}: fp16 gradients rel L2 {rg:e} from f32");
    rg
}
