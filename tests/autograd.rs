//! The tape through composed ops: gradients of a small network (linear → layer_norm →
//! gelu → tied output projection → cross-entropy) against central finite differences in
//! f64; gradient summing for a tied parameter; accumulation across micro-batches (in
//! place, bit for bit a fresh set added); `no_grad`; the tape emptied and saved tensors
//! released by backward.

use fusebox::autograd::{backward, backward_into, clear_tape, no_grad, tape_len, Grads};
use fusebox::backend::tracker;
use fusebox::ops::softmax::IGNORE_INDEX;
use fusebox::rng::Rng;
use fusebox::{Device, Result, Tensor};

/// Tests here share the global memory tracker: run them one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn randn(rng: &mut Rng, shape: &[usize], std: f64) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.normal() * std).collect();
    Tensor::from_f64(v, shape, Device::Cpu).unwrap()
}

struct Net {
    emb: Tensor, // [V, D], tied with the output projection
    w1: Tensor,  // [D, D]
    b1: Tensor,
    g: Tensor,
    beta: Tensor,
}

fn loss_of(net: &Net, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let x = net.emb.embedding(ids)?; // [N, D]
    let h = x.linear(&net.w1, Some(&net.b1))?;
    let h = h.layer_norm(&net.g, &net.beta, 1e-5)?.gelu()?;
    let h = h.add(&x)?; // residual: emb used twice more
    let logits = h.linear(&net.emb, None)?; // tied output projection [N, V]
    logits.cross_entropy(targets, IGNORE_INDEX)
}

/// A net of vocabulary `v` and width `d` with random weights drawn from `seed`.
fn random_net(seed: u64, v: usize, d: usize) -> Net {
    let rng = &mut Rng::new(seed);
    Net {
        emb: Tensor::var(&randn(rng, &[v, d], 0.5)),
        w1: Tensor::var(&randn(rng, &[d, d], 0.5)),
        b1: Tensor::var(&randn(rng, &[d], 0.1)),
        g: Tensor::var(&randn(rng, &[d], 1.0)),
        beta: Tensor::var(&randn(rng, &[d], 0.1)),
    }
}

fn params(net: &Net) -> Vec<&Tensor> {
    vec![&net.emb, &net.w1, &net.b1, &net.g, &net.beta]
}

fn set_param(p: &Tensor, vals: Vec<f64>) {
    let new = Tensor::from_f64(vals, p.dims(), Device::Cpu).unwrap();
    p.storage_mut().copy_from_(&new.storage()).unwrap();
}

#[test]
fn composed_network_matches_finite_differences() {
    let _s = serial();
    let net = random_net(7, 11, 6);
    let ids = Tensor::from_i32(vec![1, 4, 4, 9, 0, 10, 3], [7], Device::Cpu).unwrap();
    let targets = Tensor::from_i32(
        vec![2, IGNORE_INDEX, 5, 5, 0, IGNORE_INDEX, 7],
        [7],
        Device::Cpu,
    )
    .unwrap();

    let loss = loss_of(&net, &ids, &targets).unwrap();
    let grads = backward(&loss).unwrap();
    assert_eq!(tape_len(), 0, "backward must consume the tape");

    let eps = 1e-6;
    for (pi, p) in params(&net).into_iter().enumerate() {
        let g = grads
            .get(p)
            .unwrap_or_else(|| panic!("param {pi} got no gradient"))
            .to_vec_f64()
            .unwrap();
        let base = p.to_vec_f64().unwrap();
        let mut max_err = 0.0f64;
        let mut max_g = 0.0f64;
        for i in 0..base.len() {
            let mut plus = base.clone();
            plus[i] += eps;
            set_param(p, plus);
            let lp = {
                let _ng = no_grad();
                loss_of(&net, &ids, &targets).unwrap().to_scalar().unwrap()
            };
            let mut minus = base.clone();
            minus[i] -= eps;
            set_param(p, minus);
            let lm = {
                let _ng = no_grad();
                loss_of(&net, &ids, &targets).unwrap().to_scalar().unwrap()
            };
            set_param(p, base.clone());
            let num = (lp - lm) / (2.0 * eps);
            max_err = max_err.max((num - g[i]).abs());
            max_g = max_g.max(num.abs());
        }
        assert!(
            max_err <= 1e-6 * max_g.max(1.0),
            "param {pi}: max |numeric - analytic| = {max_err:e} (max grad {max_g:e})"
        );
    }
}

#[test]
fn tied_parameter_gradients_are_summed() {
    let _s = serial();
    // y = sum(w·x) + sum(w·w): dy/dw = x + 2w — w is used three times.
    let w = Tensor::var(&Tensor::from_f64(vec![1.0, -2.0, 3.0], [3], Device::Cpu).unwrap());
    let x = Tensor::from_f64(vec![0.5, 0.25, -1.0], [3], Device::Cpu).unwrap();
    let y = w
        .mul(&x)
        .unwrap()
        .sum_all()
        .unwrap()
        .add(&w.mul(&w).unwrap().sum_all().unwrap())
        .unwrap();
    let g = backward(&y).unwrap();
    assert_eq!(
        g.get(&w).unwrap().to_vec_f64().unwrap(),
        vec![2.5, -3.75, 5.0]
    );
    assert!(
        g.get(&x).is_none(),
        "an input without requires_grad gets no gradient"
    );
}

#[test]
fn accumulation_over_micro_batches_equals_one_big_batch() {
    let _s = serial();
    let mut rng = Rng::new(3);
    let w = Tensor::var(&randn(&mut rng, &[4, 5], 1.0));
    let x = randn(&mut rng, &[6, 5], 1.0);
    let t = Tensor::from_i32(vec![0, 1, 2, 3, 1, 0], [6], Device::Cpu).unwrap();
    // Whole batch: mean over 6 rows.
    let full = backward(
        &x.linear(&w, None)
            .unwrap()
            .cross_entropy(&t, IGNORE_INDEX)
            .unwrap(),
    )
    .unwrap();
    // Two micro-batches of 3, each loss scaled by 1/2 (as a trainer does), summed into
    // one gradient set.
    let half = |start: usize| {
        x.narrow(0, start, 3)
            .unwrap()
            .linear(&w, None)
            .unwrap()
            .cross_entropy(&t.narrow(0, start, 3).unwrap(), IGNORE_INDEX)
            .unwrap()
            .scale(0.5)
            .unwrap()
    };
    let mut acc = Grads::default();
    backward_into(&half(0), &mut acc).unwrap();
    backward_into(&half(3), &mut acc).unwrap();
    let a = acc.get(&w).unwrap().to_vec_f64().unwrap();
    let f = full.get(&w).unwrap().to_vec_f64().unwrap();
    for (a, f) in a.iter().zip(&f) {
        assert!((a - f).abs() < 1e-12, "{a} vs {f}");
    }
}

/// Accumulating in place (each leaf's gradient added into the held set once it is
/// final) gives bit for bit what adding a fresh full set gives, for a parameter used
/// three times (the tied embedding, whose gradient is in flight through the whole
/// backward) too, and the second micro-batch's peak no longer holds two full sets.
#[test]
fn accumulation_in_place_equals_adding_a_fresh_set_and_holds_one() {
    let _s = serial();
    let net = random_net(9, 40, 24);
    let batch = |k: i32| {
        let ids = Tensor::from_i32((0..9).map(|i| (i * 7 + k) % 40).collect(), [9], Device::Cpu);
        let tg = Tensor::from_i32((0..9).map(|i| (i * 5 + k) % 40).collect(), [9], Device::Cpu);
        (ids.unwrap(), tg.unwrap())
    };
    let loss = |k: i32| {
        let (ids, tg) = batch(k);
        loss_of(&net, &ids, &tg).unwrap().scale(0.5).unwrap()
    };
    // The second micro-batch's backward peak above what is held before it.
    let second = |in_place: bool| {
        let mut acc = backward(&loss(1)).unwrap();
        let l = loss(2);
        tracker::reset_peak(Device::Cpu);
        let base = tracker::live_bytes(Device::Cpu);
        if in_place {
            backward_into(&l, &mut acc).unwrap();
        } else {
            acc.accumulate(backward(&l).unwrap()).unwrap();
        }
        (acc, tracker::peak_bytes(Device::Cpu) - base)
    };
    let (fresh, peak_fresh) = second(false);
    let (inplace, peak_inplace) = second(true);
    assert_eq!(fresh.len(), 5);
    assert_eq!(inplace.len(), 5);
    for p in params(&net) {
        let (a, b) = (fresh.get(p).unwrap(), inplace.get(p).unwrap());
        assert_eq!(a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    }
    // A fresh set holds every gradient twice at the end of backward; in place, only the
    // one in flight (tests/budget.rs measures the saving on real models).
    assert!(
        peak_inplace < peak_fresh,
        "in place {peak_inplace} vs fresh {peak_fresh}"
    );
}

#[test]
fn no_grad_records_nothing_and_backward_releases_saved_tensors() {
    let _s = serial();
    clear_tape();
    let mut rng = Rng::new(5);
    let w = Tensor::var(&randn(&mut rng, &[64, 64], 1.0));
    let x = randn(&mut rng, &[32, 64], 1.0);
    {
        let _g = no_grad();
        let y = x.linear(&w, None).unwrap().gelu().unwrap();
        assert!(!y.tracks());
        assert_eq!(tape_len(), 0);
    }
    let before = tracker::live_bytes(Device::Cpu);
    let y = x
        .linear(&w, None)
        .unwrap()
        .gelu()
        .unwrap()
        .gelu()
        .unwrap()
        .sum_all()
        .unwrap();
    assert!(tape_len() >= 4);
    let held = tracker::live_bytes(Device::Cpu);
    assert!(held > before, "forward must hold saved activations");
    let g = backward(&y).unwrap();
    drop(y);
    assert_eq!(tape_len(), 0);
    // What is left is the gradient of w (64·64 f64) and nothing from the forward.
    let after = tracker::live_bytes(Device::Cpu);
    let grad_bytes = g.get(&w).unwrap().elem_count() * 8;
    assert!(
        after <= before + grad_bytes + 1024,
        "saved tensors leaked: before {before}, after {after}, grad {grad_bytes}"
    );
}

/// Of `y = forward()` under the loss Σ y·up: the value, the gradients of `wrt`, and the
/// bytes that stayed allocated from before the forward to after it (`y` and what the
/// forward saved for backward).
#[allow(clippy::type_complexity)]
fn value_grads_held(
    forward: impl FnOnce() -> Result<Tensor>,
    up: &Tensor,
    wrt: &[&Tensor],
) -> Result<(Vec<f32>, Vec<Vec<f32>>, usize)> {
    let live = tracker::live_bytes(Device::Cpu);
    let y = forward()?;
    let held = tracker::live_bytes(Device::Cpu) - live;
    let loss = y.mul(up)?.sum_all()?;
    let g = backward(&loss)?;
    let grads = wrt
        .iter()
        .map(|t| g.get(t).expect("gradient").to_vec_f32())
        .collect::<Result<Vec<_>>>()?;
    Ok((y.to_vec_f32()?, grads, held))
}

/// `act_linear` (the FFN's act(lin1)·lin2 keeping only lin1's output) gives exactly the
/// value and gradients of `unary` then `linear`, for every activation, and holds less
/// between forward and backward: the activated tensor is recomputed, not saved.
#[test]
fn act_linear_equals_unary_then_linear_and_saves_less() -> Result<()> {
    use fusebox::backend::UnaryOp;
    let _s = serial();
    let mut rng = Rng::new(11);
    let (rows, fin, fout) = (7, 24, 5);
    let x = Tensor::var(&randn(&mut rng, &[rows, fin], 1.0).to_dtype(fusebox::DType::F32)?);
    let w = Tensor::var(&randn(&mut rng, &[fout, fin], 0.3).to_dtype(fusebox::DType::F32)?);
    let b = Tensor::var(&randn(&mut rng, &[fout], 0.1).to_dtype(fusebox::DType::F32)?);
    let up = randn(&mut rng, &[rows, fout], 1.0).to_dtype(fusebox::DType::F32)?;
    for act in [UnaryOp::Gelu, UnaryOp::GeluNew, UnaryOp::Relu] {
        let wrt = [&x, &w, &b];
        let (y0, g0, held0) = value_grads_held(|| x.unary(act)?.linear(&w, Some(&b)), &up, &wrt)?;
        let (y1, g1, held1) = value_grads_held(|| x.act_linear(act, &w, Some(&b)), &up, &wrt)?;
        assert_eq!(y0, y1, "{act:?}: value");
        assert_eq!(g0, g1, "{act:?}: gradients of x, w, b");
        // Plain: act(x) is kept for lin2's backward; fused: only y.
        assert_eq!(
            held0 - held1,
            rows * fin * 4,
            "{act:?}: bytes held after forward"
        );
        assert_eq!(tape_len(), 0);
    }
    Ok(())
}

/// `dropout_add_layer_norm` (the encoder's residual block as one op) gives exactly the
/// value and gradients of `dropout`, `add` and `layer_norm` in sequence, with and without
/// dropout, and holds the same bytes between forward and backward (the sum).
#[test]
fn dropout_add_layer_norm_equals_the_three_ops() -> Result<()> {
    let _s = serial();
    let mut rng = Rng::new(12);
    let (rows, cols) = (6, 20);
    let f32_var = |rng: &mut Rng, dims: &[usize], s: f64| -> Result<Tensor> {
        Ok(Tensor::var(
            &randn(rng, dims, s).to_dtype(fusebox::DType::F32)?,
        ))
    };
    let a = f32_var(&mut rng, &[rows, cols], 2.0)?;
    let res = f32_var(&mut rng, &[rows, cols], 1.0)?;
    let g = f32_var(&mut rng, &[cols], 1.0)?;
    let b = f32_var(&mut rng, &[cols], 0.5)?;
    let up = randn(&mut rng, &[rows, cols], 1.0).to_dtype(fusebox::DType::F32)?;
    for p in [0.0f32, 0.25] {
        let wrt = [&a, &res, &g, &b];
        let unfused = || a.dropout(p, 99)?.add(&res)?.layer_norm(&g, &b, 1e-12);
        let fused = || a.dropout_add_layer_norm(&res, p, 99, &g, &b, 1e-12);
        let (y0, g0, held0) = value_grads_held(unfused, &up, &wrt)?;
        let (y1, g1, held1) = value_grads_held(fused, &up, &wrt)?;
        assert_eq!(y0, y1, "p={p}: value");
        assert_eq!(g0, g1, "p={p}: gradients of a, residual, gamma, beta");
        assert_eq!(held0, held1, "p={p}: bytes held after forward");
        if p > 0.0 {
            // Dropout really acted: some of a's gradient is zero, the residual's is not.
            assert!(g1[0].contains(&0.0) && g1[1].iter().all(|&v| v != 0.0));
        } else {
            assert_eq!(
                g1[0], g1[1],
                "without dropout a and the residual get one gradient"
            );
        }
        assert_eq!(tape_len(), 0);
    }
    // Bad p and a residual of another shape are errors, not panics.
    assert!(a
        .dropout_add_layer_norm(&res, 1.0, 0, &g, &b, 1e-12)
        .is_err());
    assert!(a.dropout_add_layer_norm(&g, 0.1, 0, &g, &b, 1e-12).is_err());
    Ok(())
}
