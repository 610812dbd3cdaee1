//! The optimizer on the GPU: the multi-tensor AdamW step (backend::adamw_multi, what
//! `AdamW::step` uses on CUDA) against the per-tensor CUDA path and the CPU reference,
//! over a mixed parameter set; and the deferred device errors for bad ids and targets.

use std::time::Instant;

use fusebox::autograd::Grads;
use fusebox::backend::cuda;
use fusebox::backend::{BackendStorage, CpuStorage};
use fusebox::optim::{Adafactor, AdamW, AdamWConfig, StepOutcome};
use fusebox::{DType, Device, Result, Tensor};
use half::f16;

use crate::common::*;

/// (name, [elements], dtype): odd sizes, one exactly one kernel chunk (16384), several
/// spanning many chunks, f16 parameters (f32 master inside AdamW) and f32 ones, names
/// that decay and names that do not (biases, LayerNorm); then 140 small tensors so the
/// step needs three launch tables of 64 (each with its own grid and partials).
fn param_specs() -> Vec<(String, Vec<usize>, DType)> {
    let mut v: Vec<(String, Vec<usize>, DType)> = [
        ("embeddings.word_embeddings.weight", 70_001, DType::F16),
        ("layer.0.attention.q_lin.weight", 16_384, DType::F16),
        ("layer.0.attention.q_lin.bias", 301, DType::F16),
        ("layer.0.output_layer_norm.weight", 1, DType::F16),
        ("qa_outputs.weight", 40_000, DType::F32),
        ("qa_outputs.bias", 2, DType::F32),
        ("layer.1.ffn.lin1.weight", 33_333, DType::F16),
    ]
    .iter()
    .map(|&(n, k, d)| (n.to_string(), vec![k], d))
    .collect();
    for i in 0..140 {
        let dt = if i % 3 == 0 { DType::F32 } else { DType::F16 };
        let name = if i % 2 == 0 {
            format!("extra.{i}.weight")
        } else {
            format!("extra.{i}.bias")
        };
        v.push((name, vec![1 + (i * 37) % 997], dt));
    }
    v
}

pub(crate) fn tensor(v: &[f32], dims: &[usize], dt: DType, dev: Device) -> Tensor {
    ok(match dt {
        DType::F16 => Tensor::from_f16(
            v.iter().map(|&x| f16::from_f32(x)).collect(),
            dims.to_vec(),
            dev,
        ),
        _ => Tensor::from_f32(v.to_vec(), dims.to_vec(), dev),
    })
}

/// Variables `(name, dims, dtype)` of `specs` holding `init`, on `dev`.
pub(crate) fn params(
    specs: &[(String, Vec<usize>, DType)],
    init: &[Vec<f32>],
    dev: Device,
) -> Vec<(String, Tensor)> {
    specs
        .iter()
        .zip(init)
        .map(|((n, d, dt), v)| (n.clone(), Tensor::var(&tensor(v, d, *dt, dev))))
        .collect()
}

pub(crate) fn grads(ps: &[(String, Tensor)], g: &[Vec<f32>], dev: Device) -> Grads {
    let mut out = Grads::default();
    for ((_, p), v) in ps.iter().zip(g) {
        out.insert(p, tensor(v, p.dims(), p.dtype(), dev));
    }
    out
}

/// ‖got − want‖ / max(‖want‖, 0.05·√n): relative, except that a tensor of a few tiny
/// values is not judged by the rounding of a near-zero element. NaN is infinite. For
/// weights (of order 0.5 here); the moments are compared plainly relative.
pub(crate) fn err_floor(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() || got.iter().chain(want).any(|x| x.is_nan()) {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        num += (g as f64 - w as f64).powi(2);
        den += (w as f64).powi(2);
    }
    num.sqrt() / den.sqrt().max(0.05 * (got.len() as f64).sqrt())
}

pub(crate) fn host_vec(t: &Tensor) -> Vec<f32> {
    ok(t.to_vec_f32())
}

pub(crate) fn same_outcome(a: &StepOutcome, b: &StepOutcome, what: &str) {
    assert_eq!(
        a.skipped, b.skipped,
        "{what}: skipped differs: {a:?} vs {b:?}"
    );
    if a.grad_norm.is_finite() || b.grad_norm.is_finite() {
        let rel = (a.grad_norm - b.grad_norm).abs() / b.grad_norm.abs().max(1e-30);
        assert!(rel < 1e-5, "{what}: grad norm {a:?} vs {b:?}");
    }
}

/// What [`Trio`] needs of an optimizer: AdamW's and Adafactor's own methods.
pub(crate) trait Stepped {
    fn step(&mut self, g: &Grads, lr: f64, scale: f64, clip: Option<f64>) -> Result<StepOutcome>;
    fn steps(&self) -> u64;
    fn set_multi_tensor(&mut self, on: bool);
}

macro_rules! stepped {
    ($($opt:ty),*) => {$(
        impl Stepped for $opt {
            fn step(
                &mut self,
                g: &Grads,
                lr: f64,
                scale: f64,
                clip: Option<f64>,
            ) -> Result<StepOutcome> {
                <$opt>::step(self, g, lr, scale, clip)
            }
            fn steps(&self) -> u64 {
                <$opt>::steps(self)
            }
            fn set_multi_tensor(&mut self, on: bool) {
                <$opt>::set_multi_tensor(self, on)
            }
        }
    )*};
}
stepped!(AdamW, Adafactor);

/// One parameter set three times from the same values, each with its own optimizer: the
/// multi-tensor step on the GPU, the per-tensor CUDA path and the CPU reference.
pub(crate) struct Trio<O> {
    pub sets: [Vec<(String, Tensor)>; 3],
    pub multi: O,
    pub per: O,
    pub cpu: O,
}

impl<O: Stepped> Trio<O> {
    /// The sets (`make` on a device) and their optimizers (`new`).
    pub fn new(
        make: impl Fn(Device) -> Vec<(String, Tensor)>,
        new: impl Fn(&[(String, Tensor)]) -> Result<O>,
    ) -> Trio<O> {
        let gpu = Device::Cuda(0);
        let sets = [make(gpu), make(gpu), make(Device::Cpu)];
        let multi = ok(new(&sets[0]));
        let mut per = ok(new(&sets[1]));
        per.set_multi_tensor(false);
        let cpu = ok(new(&sets[2]));
        Trio {
            sets,
            multi,
            per,
            cpu,
        }
    }

    /// One step of all three on the same gradients `g` at `lr`, unscaled by 1/`scale`
    /// and clipped to norm 1: the outcomes (skipped, gradient norm) and step counts agree,
    /// the step skips as `skip` says, and a skipped step leaves every multi-tensor weight
    /// as it was. When the step began.
    pub fn step(
        &mut self,
        what: &str,
        (g, skip): (&[Vec<f32>], bool),
        lr: f64,
        scale: f64,
    ) -> Instant {
        let [pm, pp, pc] = &self.sets;
        let before: Vec<Vec<f32>> = pm.iter().map(|(_, t)| host_vec(t)).collect();
        let gpu = Device::Cuda(0);
        let t = Instant::now();
        let om = ok(self
            .multi
            .step(&grads(pm, g, gpu), lr, 1.0 / scale, Some(1.0)));
        let op = ok(self
            .per
            .step(&grads(pp, g, gpu), lr, 1.0 / scale, Some(1.0)));
        let oc = ok(self
            .cpu
            .step(&grads(pc, g, Device::Cpu), lr, 1.0 / scale, Some(1.0)));
        same_outcome(&om, &op, "multi vs per-tensor");
        same_outcome(&om, &oc, "multi vs cpu");
        assert_eq!(om.skipped, skip, "{what}: {om:?}");
        assert_eq!(self.multi.steps(), self.per.steps(), "{what}: steps");
        assert_eq!(self.multi.steps(), self.cpu.steps(), "{what}: steps");
        if skip {
            for ((name, p), b) in pm.iter().zip(&before) {
                assert!(
                    host_vec(p) == *b,
                    "{what} {name}: a skipped step changed it"
                );
            }
        }
        t
    }
}

/// The side-by-side runs' poisoned steps: step 2 has an inf in tensor `inf_at`, step 3 a
/// NaN in tensor 0 (an f16 one in both tests); true when `step` must skip.
pub(crate) fn poison(g: &mut [Vec<f32>], step: usize, inf_at: usize) -> bool {
    if step == 2 {
        g[inf_at][123] = f32::INFINITY;
    }
    if step == 3 {
        g[0][5] = f32::NAN;
    }
    step == 2 || step == 3
}

#[test]
fn adamw_multi_tensor_matches_per_tensor_and_cpu() {
    let Some(mut rng) = setup("adamw_multi_tensor_matches_per_tensor_and_cpu") else {
        return;
    };
    let specs = param_specs();
    let init: Vec<Vec<f32>> = specs.iter().map(|p| rng.normal(p.1[0], 0.5)).collect();
    let cfg = AdamWConfig {
        lr: 1e-3,
        weight_decay: 0.01,
        ..AdamWConfig::default()
    };
    let mut trio = Trio::new(
        |dev| params(&specs, &init, dev),
        |p| AdamW::new(p, cfg, true),
    );
    // Loss scale 2^10 with a clip of 1.0 (active: the unscaled norm is ~250): step 2 has
    // an inf in an f32 gradient, step 3 a NaN in an f16 one (the embeddings); neither may
    // change anything (weights, moments, step count).
    let scale = 1024.0f64;
    for step in 0..5 {
        let mut g: Vec<Vec<f32>> = specs
            .iter()
            .map(|p| rng.normal(p.1[0], 0.5 * scale as f32))
            .collect();
        let skip = poison(&mut g, step, 4);
        let t = trio.step(&format!("step {step}"), (&g, skip), 1e-3, scale);
        let Trio {
            sets: [pm, pp, pc],
            multi,
            cpu,
            ..
        } = &trio;
        // Worst per-tensor error of each comparison (one GPUCHECK line each, not ~600).
        let mut worst = [0.0f64; 6];
        for (k, (name, p)) in pm.iter().enumerate() {
            let got = host_vec(p);
            let f16 = p.dtype() == DType::F16;
            let (gm, gv) = multi.moments(name).expect("moments");
            let (cm, cv) = cpu.moments(name).expect("moments");
            let errs = [
                (0, err_floor(&got, &host_vec(&pp[k].1))),
                (1, err_floor(&got, &host_vec(&pc[k].1))),
                // Moments plainly relative: m and v are tiny (v ~ 4e-9 here), so the
                // floor that keeps near-zero weights fair would hide any error in them.
                (2, rel_err(&host_vec(gm), &host_vec(cm))),
                (3, rel_err(&host_vec(gv), &host_vec(cv))),
            ];
            for (i, e) in errs {
                // Slots 0/1 split by dtype: f16 working copies may differ by one f16 ulp
                // (~1e-3) where the f32 masters differ in their last bits.
                let slot = if i < 2 && f16 { i + 4 } else { i };
                worst[slot] = worst[slot].max(e);
                let tol = if slot >= 4 { 2e-3 } else { 1e-5 };
                assert!(
                    e <= tol,
                    "step {step} {name} ({}): comparison {i} error {e:.3e} > {tol:.0e}",
                    p.dtype()
                );
            }
        }
        let names = [
            ("adamw_multi_vs_per_tensor_f32", DType::F32, 1e-5),
            ("adamw_multi_vs_cpu_f32", DType::F32, 1e-5),
            ("adamw_multi_m_vs_cpu", DType::F32, 1e-5),
            ("adamw_multi_v_vs_cpu", DType::F32, 1e-5),
            ("adamw_multi_vs_per_tensor_f16", DType::F16, 2e-3),
            ("adamw_multi_vs_cpu_f16", DType::F16, 2e-3),
        ];
        for ((name, dt, tol), e) in names.iter().zip(worst) {
            gpucheck(
                &format!("{name}_step{step}"),
                &[pm.len()],
                *dt,
                e,
                e <= *tol,
                t,
            );
        }
    }
    assert_eq!(trio.multi.steps(), 3, "three applied steps, two skipped");
}

#[test]
fn bad_ids_are_reported_with_op_and_range() {
    let Some(mut rng) = setup("bad_ids_are_reported_with_op_and_range") else {
        return;
    };
    let (rows, cols) = (50usize, 33usize);
    let (ct, gt) = pair(&rng.normal(rows * cols, 1.0), DType::F16);
    let bad = CpuStorage::from_i32(vec![3, 50, 7]);
    // CPU: an immediate error.
    assert!(ct.index_select(&bad, cols).is_err());
    // CUDA: the launch is queued without a sync; the next read names op, id and range.
    let t = Instant::now();
    let out = ok(gt.index_select(&up(&bad), cols));
    let err = err_text(out.to_vec_f32());
    let needles = ["index_select", "50", "[0, 50)"];
    check_error(
        "deferred_error_index_select",
        &[3, cols],
        DType::F16,
        &err,
        &needles,
        t,
    );
    // The record is cleared: the same buffers work again, and a clean read passes.
    let good = up(&CpuStorage::from_i32(vec![3, 49, 0]));
    ok(ok(gt.index_select(&good, cols)).to_vec_f32());
    // index_add (embedding backward) with a negative id.
    let dy = up(&host(&rng.normal(3 * cols, 1.0), DType::F32));
    let neg = up(&CpuStorage::from_i32(vec![1, -2, 0]));
    let t = Instant::now();
    let err = err_text(
        dy.index_add(&neg, rows, cols, None)
            .and_then(|o| o.to_vec_f32()),
    );
    let needles = ["index_add", "-2", "[0, 50)"];
    check_error(
        "deferred_error_index_add",
        &[3, cols],
        DType::F32,
        &err,
        &needles,
        t,
    );
    // cross_entropy: a target past the vocabulary that is not ignore_index, reported by
    // the explicit check (what a caller uses when it reads nothing back).
    let logits = up(&host(&rng.normal(4 * 9, 1.0), DType::F16));
    let targets = up(&CpuStorage::from_i32(vec![0, -100, 9, 2]));
    let t = Instant::now();
    let _queued = ok(logits.cross_entropy(&targets, 9, -100));
    let err = err_text(cuda::check_errors(Device::Cuda(0)));
    let needles = ["cross_entropy", "target 9", "[0, 9)"];
    check_error(
        "deferred_error_cross_entropy",
        &[4, 9],
        DType::F16,
        &err,
        &needles,
        t,
    );
    // CPU cross_entropy errors at once, as before.
    let cl = CpuStorage::from_f32(rng.normal(4 * 9, 1.0));
    assert!(cl
        .cross_entropy(&CpuStorage::from_i32(vec![0, -100, 9, 2]), 9, -100)
        .is_err());
    // Nothing pending: the check passes.
    ok(cuda::check_errors(Device::Cuda(0)));
}

/// A bad id queued in the same step as the multi-tensor AdamW: the host hears of it only
/// at the step's one read, after the update kernels, so the update itself must have
/// skipped (the finalize kernel reads the error record): the step fails naming the op,
/// the weights, moments and step count are as before, and the next step runs.
#[test]
fn a_bad_id_in_the_step_leaves_the_weights_untouched() {
    let Some(mut rng) = setup("a_bad_id_in_the_step_leaves_the_weights_untouched") else {
        return;
    };
    let gpu = Device::Cuda(0);
    let specs: Vec<(String, Vec<usize>, DType)> = param_specs().into_iter().take(7).collect();
    let init: Vec<Vec<f32>> = specs.iter().map(|p| rng.normal(p.1[0], 0.5)).collect();
    let ps = params(&specs, &init, gpu);
    let mut opt = ok(AdamW::new(&ps, AdamWConfig::default(), true));
    let g: Vec<Vec<f32>> = specs.iter().map(|p| rng.normal(p.1[0], 0.5)).collect();
    let before: Vec<Vec<f32>> = ps.iter().map(|(_, t)| host_vec(t)).collect();
    let (_, table) = pair(&rng.normal(50 * 8, 1.0), DType::F16);
    let t = Instant::now();
    // Queued, not read: the error stays on the device until the optimizer's read.
    let _rows = ok(table.index_select(&up(&CpuStorage::from_i32(vec![1, 50])), 8));
    let r = opt.step(&grads(&ps, &g, gpu), 1e-3, 1.0, Some(1.0));
    let err = err_text(r);
    let unchanged = ps.iter().zip(&before).all(|((_, p), b)| host_vec(p) == *b);
    let pass = err.contains("index_select") && unchanged && opt.steps() == 0;
    gpucheck(
        "adamw_multi_skips_on_error_record",
        &[specs.len()],
        DType::F16,
        0.0,
        pass,
        t,
    );
    assert!(
        pass,
        "error {err:?}, weights unchanged {unchanged}, steps {}",
        opt.steps()
    );
    let out = ok(opt.step(&grads(&ps, &g, gpu), 1e-3, 1.0, Some(1.0)));
    assert!(!out.skipped && opt.steps() == 1, "{out:?}");
    assert!(host_vec(&ps[0].1) != before[0], "the next step updates");
}
