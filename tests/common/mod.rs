//! Helpers shared by the integration tests: fixture loading, error measures, seeded
//! inputs for the CPU backend tests and JSON reference readers.
#![allow(dead_code)]

pub mod cli;
pub mod parity;

use std::collections::BTreeMap;
use std::path::PathBuf;

use fusebox::autograd::Grads;
use fusebox::backend::{AttnSpec, BackendStorage, CpuStorage, UnaryOp};
use fusebox::nn::safetensors_io;
use fusebox::optim::{AdamW, AdamWConfig, LossScaler, StepOutcome};
use fusebox::tokenize::seq2seq::Seq2SeqTokenizer;
use fusebox::{DType, Device, Tensor};
use serde_json::Value;

/// The repository root: where the test was built, else the working directory (a test
/// binary copied to another machine and run from the repository root).
pub fn root() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if built.join("tests/fixtures").exists() {
        built
    } else {
        PathBuf::from(".")
    }
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A JSON fixture file.
pub fn json_fixture(name: &str) -> Value {
    let p = fixture(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()))
}

/// `body` written to `name` in this process's scratch directory `fusebox-<tag>-<pid>`.
pub fn tmp_file(tag: &str, name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fusebox-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write");
    p
}

/// Every tensor of a fixture file, floats as `dtype`, on the CPU.
pub fn load(name: &str, dtype: DType) -> BTreeMap<String, Tensor> {
    let p = fixture(name);
    safetensors_io::load(&p, dtype, Device::Cpu).unwrap_or_else(|e| {
        panic!(
            "fixture {} (regenerate with tools/fixtures/make_fixtures.py): {e}",
            p.display()
        )
    })
}

pub fn get<'a>(m: &'a BTreeMap<String, Tensor>, k: &str) -> &'a Tensor {
    m.get(k)
        .unwrap_or_else(|| panic!("fixture tensor {k:?} missing"))
}

/// max |a − b| / max(max |b|, floor).
pub fn rel_to_max(a: &[f64], b: &[f64], floor: f64) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let m = b.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(floor);
    a.iter()
        .zip(b)
        .fold(0.0f64, |e, (x, y)| e.max((x - y).abs()))
        / m
}

/// ‖a − b‖ / ‖b‖ (DESIGN.md's measure for GPU-vs-reference and fp16-vs-f32
/// comparisons). A NaN or infinity in `a` gives NaN or inf, which no `<` bound passes.
pub fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

/// [`rel_l2`] of f32 values, computed in f64.
pub fn rel_l2_f32(a: &[f32], b: &[f32]) -> f64 {
    let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    rel_l2(&wide(a), &wide(b))
}

/// |a − b| / |b|, for one scalar such as a loss.
pub fn rel_diff(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

/// |got − want| / |want| < tol (NaN never passes).
pub fn assert_rel(what: &str, got: f64, want: f64, tol: f64) {
    let rel = rel_diff(got, want);
    assert!(
        rel < tol,
        "{what}: {got} vs {want}, relative difference {rel:e} >= {tol:e}"
    );
}

pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let e = rel_to_max(
        &got.to_vec_f64().unwrap(),
        &want.to_vec_f64().unwrap(),
        1e-12,
    );
    assert!(
        e <= tol,
        "{what}: max error {e:e} relative to max > {tol:e}"
    );
}

/// The first CUDA device, or None (after printing that `test` skips) without one.
pub fn cuda_device(test: &str) -> Option<Device> {
    if fusebox::backend::cuda_available() {
        Some(Device::Cuda(0))
    } else {
        eprintln!("skipping {test}: no CUDA device");
        None
    }
}

/// Trains once in f32 and once in f16 (`train` returns the final loss, or None when the
/// model is absent, which skips the comparison); the fp16 run must end within 1e-2
/// (relative) of the f32 run.
pub fn fp16_training_follows_f32(what: &str, mut train: impl FnMut(DType) -> Option<f64>) {
    let Some(f32_loss) = train(DType::F32) else {
        return;
    };
    let Some(f16_loss) = train(DType::F16) else {
        return;
    };
    assert_rel(
        &format!("{what}: trained fp16 loss vs f32"),
        f16_loss,
        f32_loss,
        1e-2,
    );
}

/// One GradScaler-style fp16 step: backward of `loss · scale`, AdamW at `lr` on the
/// unscaled gradients (clipped to norm 1), then the scale updated; the step's outcome.
pub fn scaled_step(
    opt: &mut AdamW,
    scaler: &mut LossScaler,
    loss: &Tensor,
    lr: f64,
) -> StepOutcome {
    let grads = fusebox::autograd::backward(&loss.scale(scaler.scale).unwrap()).unwrap();
    let out = opt.step(&grads, lr, scaler.inv_scale(), Some(1.0)).unwrap();
    scaler.update(out.skipped);
    out
}

/// One AdamW step as the fixtures' torch.optim.AdamW took it (lr 1e-3, weight decay 0.01,
/// no parameter groups), fed the stored `grad.<name>` tensors of `io`; it must not skip.
pub fn adamw_step_on_stored_grads(
    what: &str,
    params: &[(String, Tensor)],
    io: &BTreeMap<String, Tensor>,
) {
    let mut grads = Grads::default();
    for (pname, p) in params {
        grads.insert(p, io[&format!("grad.{pname}")].clone());
    }
    let cfg = AdamWConfig {
        lr: 1e-3,
        weight_decay: 0.01,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(params, cfg, false).expect("adamw");
    let out = opt.step(&grads, 1e-3, 1.0, None).expect("step");
    assert!(!out.skipped, "{what}: step skipped");
}

/// The shared real-data assets: env FUSEBOX_ASSETS, else ../shared/assets beside the
/// crate, else ./shared/assets (the GPU machine's copy). None, with the reason printed,
/// when absent: tests that need them skip, so a fresh clone without them is green. With
/// FUSEBOX_REQUIRE_ASSETS=1 (CI, which has them) absent assets fail the test instead.
pub fn assets() -> Option<PathBuf> {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/assets");
    let p = match std::env::var("FUSEBOX_ASSETS") {
        Ok(p) => PathBuf::from(p),
        Err(_) if built.exists() => built,
        Err(_) => PathBuf::from("shared/assets"),
    };
    if p.exists() {
        Some(p)
    } else {
        skip_or_fail(&format!(
            "assets not found at {} (set FUSEBOX_ASSETS)",
            p.display()
        ));
        None
    }
}

/// One file of the assets (`rel` below the assets folder), as [`assets`] finds them: None
/// with the reason printed when it is absent, a panic when FUSEBOX_REQUIRE_ASSETS=1.
pub fn asset(rel: &str) -> Option<PathBuf> {
    let p = assets()?.join(rel);
    if p.exists() {
        Some(p)
    } else {
        skip_or_fail(&format!("{} not found (set FUSEBOX_ASSETS)", p.display()));
        None
    }
}

/// Are the assets required (FUSEBOX_REQUIRE_ASSETS=1)?
pub fn assets_required() -> bool {
    std::env::var("FUSEBOX_REQUIRE_ASSETS").is_ok_and(|v| v == "1")
}

fn skip_or_fail(why: &str) {
    if assets_required() {
        panic!("{why}, and FUSEBOX_REQUIRE_ASSETS=1");
    }
    eprintln!("skipping: {why}");
}

/// xorshift64*: small, deterministic, good enough for test inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

/// F64 CPU storage holding `v`.
pub fn f64s(v: &[f64]) -> CpuStorage {
    CpuStorage::from_f64(v.to_vec())
}

pub fn ids(v: &[i32]) -> CpuStorage {
    CpuStorage::from_i32(v.to_vec())
}

pub fn vals(s: &CpuStorage) -> Vec<f64> {
    s.to_vec_f64().expect("f64 values")
}

/// Every activation of [`UnaryOp`].
pub const UNARY_OPS: [UnaryOp; 8] = [
    UnaryOp::Relu,
    UnaryOp::Gelu,
    UnaryOp::GeluNew,
    UnaryOp::Silu,
    UnaryOp::Tanh,
    UnaryOp::Neg,
    UnaryOp::Exp,
    UnaryOp::Sqr,
];

/// Attention of these sizes with scale 1, not causal, no dropout (seed 0); set the other
/// fields with struct update syntax.
pub fn attn(b: usize, h: usize, lq: usize, lk: usize, d: usize) -> AttnSpec {
    AttnSpec {
        b,
        h,
        lq,
        lk,
        d,
        scale: 1.0,
        causal: false,
        dropout: 0.0,
        seed: 0,
    }
}

/// Element counts of attention `s`'s queries (and output) and of its keys (and values).
pub fn attn_sizes(s: &AttnSpec) -> (usize, usize) {
    (s.b * s.lq * s.h * s.d, s.b * s.lk * s.h * s.d)
}

/// Random queries, keys and values (uniform in [-1, 1), drawn in that order) for
/// attention `s`.
pub fn attn_inputs(rng: &mut Rng, s: &AttnSpec) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (nq, nk) = attn_sizes(s);
    (rng.vec(nq, 1.0), rng.vec(nk, 1.0), rng.vec(nk, 1.0))
}

/// Part `j` (0 q, 1 k, 2 v) of a packed `[rows, 3, hd]` QKV buffer, as `[rows, hd]`.
pub fn qkv_part(x: &[f64], rows: usize, hd: usize, j: usize) -> Vec<f64> {
    (0..rows)
        .flat_map(|r| x[r * 3 * hd + j * hd..r * 3 * hd + (j + 1) * hd].to_vec())
        .collect()
}

/// The packed `[rows, 3, hd]` buffer of three `[rows, hd]` parts: [`qkv_part`] undone.
pub fn qkv_pack(parts: [&[f64]; 3], rows: usize, hd: usize) -> Vec<f64> {
    (0..rows)
        .flat_map(|r| {
            parts
                .iter()
                .flat_map(|t| t[r * hd..(r + 1) * hd].to_vec())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `saved` (a tokenizer saved and loaded again) encodes `source` as a source text and
/// `target` as a target text exactly as `orig` does.
pub fn same_encoding(
    saved: &Seq2SeqTokenizer,
    orig: &Seq2SeqTokenizer,
    source: &str,
    target: &str,
) {
    assert_eq!(
        saved.encode_source(source, None).unwrap(),
        orig.encode_source(source, None).unwrap()
    );
    assert_eq!(
        saved.encode_target(target, None).unwrap(),
        orig.encode_target(target, None).unwrap()
    );
}

/// A JSON array of unsigned integers, each of which must fit `T`.
pub fn json_uints<T: TryFrom<u64>>(v: &Value) -> Vec<T> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| {
            let n = x.as_u64().expect("uint");
            T::try_from(n).unwrap_or_else(|_| panic!("{n} out of range"))
        })
        .collect()
}

/// A JSON array of numbers, as f32.
pub fn json_f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}
